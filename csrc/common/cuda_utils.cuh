// Launch helpers shared by the CUDA kernels.
#pragma once

#include <cuda_runtime.h>

// Included after common/stable.h: the device guard and the current stream of
// torch::stable::accelerator (opmath_t and the half types: stable.h).
#include <torch/csrc/stable/accelerator.h>
#include <torch/headeronly/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace affext {

// The current CUDA stream of torch on the current device (a DeviceGuard selects it).
inline cudaStream_t current_stream() {
  const auto device = torch::stable::accelerator::getCurrentDeviceIndex();
  return static_cast<cudaStream_t>(
      torch::stable::accelerator::getCurrentStream(device).nativeHandle());
}

// Raises the error of a CUDA runtime call, if any.
inline void check_cuda(cudaError_t err) {
  STD_TORCH_CHECK(err == cudaSuccess, "CUDA error: ", cudaGetErrorString(err));
}

// Raises the error of the last kernel launch, if any.
inline void check_launch() {
  const cudaError_t err = cudaGetLastError();
  STD_TORCH_CHECK(err == cudaSuccess, "CUDA kernel launch failed: ", cudaGetErrorString(err));
}

// n / d and n % d for a fixed unsigned d, without a hardware division: the multiply-high and
// shift of the round-up method (Granlund and Montgomery, "Division by invariant integers
// using multiplication"), exact for 1 <= d <= 2^31 and n < 2^31 (the index ranges it serves).
struct DivMod {
  unsigned int div, mod;
};
class UIntDivider {
 public:
  UIntDivider() = default;
  explicit UIntDivider(unsigned int d) : divisor_(d) {
    while (shift_ < 32 && (1ULL << shift_) < d) ++shift_;
    const uint64_t one = 1;
    multiplier_ = static_cast<unsigned int>(((one << 32) * ((one << shift_) - d)) / d + 1);
  }
  __host__ __device__ __forceinline__ unsigned int div(unsigned int n) const {
#ifdef __CUDA_ARCH__
    const unsigned int hi = __umulhi(n, multiplier_);
#else
    const unsigned int hi =
        static_cast<unsigned int>((static_cast<uint64_t>(n) * multiplier_) >> 32);
#endif
    return static_cast<unsigned int>((static_cast<uint64_t>(hi) + n) >> shift_);
  }
  __host__ __device__ __forceinline__ unsigned int mod(unsigned int n) const {
    return n - div(n) * divisor_;
  }
  __host__ __device__ __forceinline__ DivMod divmod(unsigned int n) const {
    const unsigned int q = div(n);
    return {q, n - q * divisor_};
  }

 private:
  unsigned int divisor_ = 1;
  unsigned int multiplier_ = 1;
  unsigned int shift_ = 0;
};

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
