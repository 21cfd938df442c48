// Shared macros: one source of per-element math for the CPU and the CUDA kernels.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define AFFEXT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define AFFEXT_HOST_DEVICE inline
#endif
