// CUDA random walk: the launch layer around random_walk.h's math.
// Taps (B, 2K+1, H, W) are built once. Live channels (all-zero ones stay zero) are gathered
// into (L, H, W). When two planes of a map fit in shared memory, one block per live channel
// runs every step in a single launch, with a block barrier between steps (channels are
// independent, so no grid-wide sync is needed). Larger maps take one launch per step over
// global ping-pong buffers.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "random_walk/random_walk.h"

namespace affext {
namespace {

template <typename scalar_t>
__global__ void taps_kernel(const scalar_t* __restrict__ aff, scalar_t* __restrict__ taps,
                            int64_t B, int H, int W, Offsets o, int region, scalar_t beta) {
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int J = 2 * o.count + 1;
  for (int64_t i = grid_first(); i < B * HW; i += grid_stride()) {
    const int64_t b = i / HW, p = i % HW;
    const int y = static_cast<int>(p / W), x = static_cast<int>(p % W);
    scalar_t* t = taps + b * J * HW + p;
    const scalar_t d =
        walk_taps<scalar_t, scalar_t>(aff + b * o.count * HW, y, x, H, W, o, region, beta, t, HW);
    for (int j = 0; j < J; ++j) t[j * HW] /= d;
  }
}

// One step for pixel p of one plane: sum_j tap[j, p] * v[p + s_j], taps outside the map skipped.
template <typename scalar_t>
__device__ __forceinline__ scalar_t stencil(const scalar_t* __restrict__ taps, const scalar_t* v,
                                            int y, int x, int H, int W, const Offsets& o) {
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t p = static_cast<int64_t>(y) * W + x;
  const int J = 2 * o.count + 1;
  scalar_t acc = 0;
  for (int j = 0; j < J; ++j) {
    const int qy = y + tap_dy(o, j), qx = x + tap_dx(o, j);
    if (qy < 0 || qy >= H || qx < 0 || qx >= W) continue;
    acc += taps[j * HW + p] * v[static_cast<int64_t>(qy) * W + qx];
  }
  return acc;
}

template <typename scalar_t>
__global__ void walk_shared_kernel(const scalar_t* __restrict__ taps,
                                   const int64_t* __restrict__ slot_image,
                                   scalar_t* __restrict__ planes, int H, int W, int64_t iterations,
                                   Offsets o) {
  extern __shared__ unsigned char smem_raw[];
  scalar_t* buf = reinterpret_cast<scalar_t*>(smem_raw);
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int J = 2 * o.count + 1;
  const int64_t l = blockIdx.x;
  const scalar_t* t = taps + slot_image[l] * J * HW;
  scalar_t* plane = planes + l * HW;
  for (int64_t p = threadIdx.x; p < HW; p += blockDim.x) buf[p] = plane[p];
  __syncthreads();
  for (int64_t it = 0; it < iterations; ++it) {
    const scalar_t* cur = buf + (it % 2) * HW;
    scalar_t* nxt = buf + ((it + 1) % 2) * HW;
    for (int64_t p = threadIdx.x; p < HW; p += blockDim.x)
      nxt[p] = stencil(t, cur, static_cast<int>(p / W), static_cast<int>(p % W), H, W, o);
    __syncthreads();
  }
  const scalar_t* last = buf + (iterations % 2) * HW;
  for (int64_t p = threadIdx.x; p < HW; p += blockDim.x) plane[p] = last[p];
}

template <typename scalar_t>
__global__ void walk_step_kernel(const scalar_t* __restrict__ taps,
                                 const int64_t* __restrict__ slot_image,
                                 const scalar_t* __restrict__ cur, scalar_t* __restrict__ nxt,
                                 int64_t L, int H, int W, Offsets o) {
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int J = 2 * o.count + 1;
  for (int64_t i = grid_first(); i < L * HW; i += grid_stride()) {
    const int64_t l = i / HW, p = i % HW;
    nxt[i] = stencil(taps + slot_image[l] * J * HW, cur + l * HW, static_cast<int>(p / W),
                     static_cast<int>(p % W), H, W, o);
  }
}

int max_shared_bytes(int device) {
  int bytes = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return bytes;
}

}  // namespace

at::Tensor random_walk_cuda(const at::Tensor& cam_in, const at::Tensor& aff_in, double beta,
                            int64_t iterations, int64_t radius, int64_t region) {
  check_random_walk_args(cam_in, aff_in, beta, iterations, radius, region);
  const Offsets o = offsets_for(radius);
  c10::cuda::CUDAGuard guard(cam_in.device());
  auto dtype = at::promote_types(cam_in.scalar_type(), aff_in.scalar_type());
  if (dtype != at::kDouble) dtype = at::kFloat;  // half/bf16 walk in float32
  const at::Tensor cam = cam_in.detach().to(dtype).contiguous();
  const at::Tensor aff = aff_in.detach().to(dtype).contiguous();
  const int64_t B = cam.size(0), C = cam.size(1), H = cam.size(2), W = cam.size(3);
  const int64_t HW = H * W;
  at::Tensor result = at::zeros_like(cam);
  if (cam.numel() == 0) return result.to(cam_in.scalar_type());
  // A channel that is zero everywhere stays zero: walk only the others.
  const at::Tensor live = (cam != 0).flatten(2).any(2).flatten().nonzero().flatten();
  const int64_t L = live.size(0);
  if (L == 0) return result;
  const at::Tensor slot_image = at::floor_divide(live, C).contiguous();
  at::Tensor planes = cam.view({B * C, H, W}).index_select(0, live).contiguous();
  const int J = 2 * o.count + 1;
  at::Tensor taps = at::empty({B, J, H, W}, cam.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(dtype, "random_walk_cuda", [&] {
    taps_kernel<scalar_t><<<blocks_for(B * HW), kThreads, 0, stream>>>(
        aff.data_ptr<scalar_t>(), taps.data_ptr<scalar_t>(), B, static_cast<int>(H),
        static_cast<int>(W), o, static_cast<int>(region), static_cast<scalar_t>(beta));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const size_t smem = 2 * HW * sizeof(scalar_t);
    if (smem <= static_cast<size_t>(max_shared_bytes(cam.get_device()))) {
      auto kernel = walk_shared_kernel<scalar_t>;
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
      kernel<<<static_cast<unsigned int>(L), 1024, smem, stream>>>(
          taps.data_ptr<scalar_t>(), slot_image.data_ptr<int64_t>(), planes.data_ptr<scalar_t>(),
          static_cast<int>(H), static_cast<int>(W), iterations, o);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      at::Tensor other = at::empty_like(planes);
      scalar_t* bufs[2] = {planes.data_ptr<scalar_t>(), other.data_ptr<scalar_t>()};
      for (int64_t it = 0; it < iterations; ++it) {
        walk_step_kernel<scalar_t><<<blocks_for(L * HW), kThreads, 0, stream>>>(
            taps.data_ptr<scalar_t>(), slot_image.data_ptr<int64_t>(), bufs[it % 2],
            bufs[(it + 1) % 2], L, static_cast<int>(H), static_cast<int>(W), o);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (iterations % 2 == 1) planes = other;
    }
  });
  result.view({B * C, H, W}).index_copy_(0, live, planes);
  return result;
}

TORCH_LIBRARY_IMPL(affext, CUDA, m) { m.impl("random_walk", &random_walk_cuda); }

}  // namespace affext
