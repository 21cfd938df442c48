// CUDA kernels of the pairwise affinity: the launch layer around affinity.h's math.
// Forward: one thread per (b, k, pixel), reading feat coalesced along the pixels.
// Backward: a weight per pair, then one thread per (b, c, pixel) gathering from its 2K pairs
// in a fixed order (deterministic, no atomics).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "affinity/affinity.h"
#include "common/checks.h"
#include "common/cuda_utils.cuh"

namespace affext {
namespace {

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ feat, scalar_t* __restrict__ aff,
                               int64_t B, int64_t C, int H, int W, Offsets o) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t total = B * o.count * HW;
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);
  for (int64_t i = grid_first(); i < total; i += grid_stride()) {
    const auto [b, k, p, y, x] = pair_index(i, HW, W, o.count);
    const int qy = y + o.dy[k], qx = x + o.dx[k];
    if (qy >= H || qx < 0 || qx >= W) {
      aff[i] = scalar_t(0);
      continue;
    }
    const int64_t q = static_cast<int64_t>(qy) * W + qx;
    const scalar_t* f = feat + b * C * HW;
    acc_t l1 = 0;
    for (int64_t c = 0; c < C; ++c, f += HW)
      l1 += abs_acc(static_cast<acc_t>(f[p]) - static_cast<acc_t>(f[q]));
    aff[i] = static_cast<scalar_t>(affinity_from_l1(l1, inv_c));
  }
}

template <typename scalar_t>
__global__ void weight_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ aff,
                              at::opmath_type<scalar_t>* __restrict__ weight, int64_t n,
                              int64_t C) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);
  for (int64_t i = grid_first(); i < n; i += grid_stride())
    weight[i] = pair_weight<acc_t>(static_cast<acc_t>(grad[i]), static_cast<acc_t>(aff[i]), inv_c);
}

template <typename scalar_t>
__global__ void backward_kernel(const at::opmath_type<scalar_t>* __restrict__ weight,
                                const scalar_t* __restrict__ feat, scalar_t* __restrict__ grad_feat,
                                int64_t B, int64_t C, int H, int W, Offsets o) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t total = B * C * HW;
  for (int64_t i = grid_first(); i < total; i += grid_stride()) {
    const int64_t p = i % HW;
    const int64_t b = i / (C * HW);
    const int y = static_cast<int>(p / W), x = static_cast<int>(p % W);
    const scalar_t* fc = feat + (i - p);
    const acc_t fp = static_cast<acc_t>(fc[p]);
    const acc_t* wb = weight + b * o.count * HW;
    acc_t g = 0;
    for (int k = 0; k < o.count; ++k) {
      const int dy = o.dy[k], dx = o.dx[k];
      int qy = y + dy, qx = x + dx;
      if (qy < H && qx >= 0 && qx < W) {  // first pixel of (p, p + o_k)
        const int64_t q = static_cast<int64_t>(qy) * W + qx;
        g -= wb[k * HW + p] * sign_of_difference(fp, static_cast<acc_t>(fc[q]));
      }
      qy = y - dy;
      qx = x - dx;
      if (qy >= 0 && qx >= 0 && qx < W) {  // second pixel of (p - o_k, p)
        const int64_t q = static_cast<int64_t>(qy) * W + qx;
        g -= wb[k * HW + q] * sign_of_difference(fp, static_cast<acc_t>(fc[q]));
      }
    }
    grad_feat[i] = static_cast<scalar_t>(g);
  }
}

}  // namespace

at::Tensor pairwise_affinity_cuda(const at::Tensor& feat_in, int64_t radius) {
  check_affinity_args(feat_in, radius);
  const Offsets o = offsets_for(radius);
  c10::cuda::CUDAGuard guard(feat_in.device());
  const at::Tensor feat = feat_in.contiguous();
  const int64_t B = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  at::Tensor aff = at::empty({B, o.count, H, W}, feat.options());
  if (aff.numel() == 0) return aff;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, feat.scalar_type(), "pairwise_affinity_cuda", [&] {
        forward_kernel<scalar_t><<<blocks_for(aff.numel()), kThreads, 0, stream>>>(
            feat.data_ptr<scalar_t>(), aff.data_ptr<scalar_t>(), B, C, static_cast<int>(H),
            static_cast<int>(W), o);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return aff;
}

at::Tensor pairwise_affinity_backward_cuda(const at::Tensor& grad_in, const at::Tensor& feat_in,
                                           const at::Tensor& aff_in, int64_t radius) {
  c10::cuda::CUDAGuard guard(feat_in.device());
  const BackwardArgs args = prepare_backward_args(grad_in, feat_in, aff_in, radius);
  const Offsets& o = args.offsets;
  const at::Tensor &grad = args.grad, &feat = args.feat, &aff = args.aff;
  const int64_t B = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  at::Tensor grad_feat = at::empty_like(feat);
  if (grad_feat.numel() == 0) return grad_feat;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, feat.scalar_type(), "pairwise_affinity_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        at::Tensor weight =
            at::empty(aff.sizes(), feat.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        weight_kernel<scalar_t><<<blocks_for(aff.numel()), kThreads, 0, stream>>>(
            grad.data_ptr<scalar_t>(), aff.data_ptr<scalar_t>(), weight.data_ptr<acc_t>(),
            aff.numel(), C);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        backward_kernel<scalar_t><<<blocks_for(grad_feat.numel()), kThreads, 0, stream>>>(
            weight.data_ptr<acc_t>(), feat.data_ptr<scalar_t>(), grad_feat.data_ptr<scalar_t>(), B,
            C, static_cast<int>(H), static_cast<int>(W), o);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_feat;
}

TORCH_LIBRARY_IMPL(affext, CUDA, m) {
  m.impl("pairwise_affinity", &pairwise_affinity_cuda);
  m.impl("pairwise_affinity_backward", &pairwise_affinity_backward_cuda);
}

}  // namespace affext
