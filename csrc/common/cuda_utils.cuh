// Launch helpers shared by the CUDA kernels.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace affext {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items (kernels loop, so a cap is safe).
inline unsigned int blocks_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535LL * 32)));
}

// A grid-stride loop: for (int64_t i = grid_first(); i < n; i += grid_stride()).
__device__ __forceinline__ int64_t grid_first() {
  return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Element i of a (B, K, H, W) pair tensor: image b, offset k, pixel p = y * W + x.
struct PairIndex {
  int64_t b;
  int k;
  int64_t p;
  int y, x;
};
__device__ __forceinline__ PairIndex pair_index(int64_t i, int64_t HW, int W, int K) {
  const int64_t p = i % HW;
  const int64_t bk = i / HW;
  return {bk / K, static_cast<int>(bk % K), p, static_cast<int>(p / W), static_cast<int>(p % W)};
}

}  // namespace affext
