// CUDA kernels of PAR: the launch layer around par.h's math.
//
// - par_weights: one thread per pixel (grid-stride); the K logits are accumulated in the
//   output itself ((B, K, H, W), pixel fastest: coalesced), then turned into the softmax.
// - par_refine / par_refine_backward: a kernel marks each (image, channel) live or zero
//   everywhere (one block per plane, __syncthreads_or: no atomics), then one launch per step,
//   one thread per (pixel, channel), ping-pong buffers in float32 (float64); a zero channel's
//   blocks return at once in every step and write its zeros in the last one only.
// - Each output value is summed by one thread in par.h's fixed order: deterministic. No
//   host synchronisation and no allocation outside torch's stream-ordered allocator: the calls
//   can be captured in a CUDA graph.
// Compiled, not yet run on a GPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "par/par.h"

namespace affext {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void par_weights_kernel(const scalar_t* __restrict__ imgs, acc_t* __restrict__ out,
                                   int64_t B, int C, int H, int W, ParStencil st, acc_t w1) {
  const int K = st.count;
  const int64_t HW = static_cast<int64_t>(H) * W;
  for (int64_t i = grid_first(); i < B * HW; i += grid_stride()) {
    const int64_t b = i / HW, p = i % HW;
    const int y = static_cast<int>(p / W), x = static_cast<int>(p % W);
    acc_t* o = out + b * K * HW + p;
    for (int c = 0; c < C; ++c) {
      const scalar_t* plane = imgs + (b * C + c) * HW;
      const acc_t centre = static_cast<acc_t>(plane[p]);
      acc_t mean = 0;
      for (int k = 0; k < K; ++k)
        mean += static_cast<acc_t>(
            plane[int64_t(par_clamp(y + st.dy[k], H)) * W + par_clamp(x + st.dx[k], W)]);
      mean /= static_cast<acc_t>(K);
      acc_t ssq = 0;
      for (int k = 0; k < K; ++k) {
        const acc_t d =
            static_cast<acc_t>(
                plane[int64_t(par_clamp(y + st.dy[k], H)) * W + par_clamp(x + st.dx[k], W)]) -
            mean;
        ssq += d * d;
      }
      const acc_t inv = par_inv_scale(par_std(ssq, K), w1);
      for (int k = 0; k < K; ++k) {
        const acc_t v = static_cast<acc_t>(
            plane[int64_t(par_clamp(y + st.dy[k], H)) * W + par_clamp(x + st.dx[k], W)]);
        const acc_t t = par_logit_term(v, centre, inv);
        o[k * HW] = c == 0 ? t : o[k * HW] + t;
      }
    }
    acc_t top = -INFINITY;
    for (int k = 0; k < K; ++k) {
      const acc_t l = o[k * HW] / static_cast<acc_t>(C);
      o[k * HW] = l;
      top = l > top ? l : top;
    }
    acc_t sum = 0;
    for (int k = 0; k < K; ++k) {
      const acc_t e = par_exp(o[k * HW] - top);
      o[k * HW] = e;
      sum += e;
    }
    for (int k = 0; k < K; ++k)
      o[k * HW] = par_weight(o[k * HW], sum, static_cast<acc_t>(st.pos[k]));
  }
}

// live[bc] = 1 where plane bc of masks holds a non-zero value.
template <typename scalar_t>
__global__ void par_live_kernel(const scalar_t* __restrict__ masks, uint8_t* __restrict__ live,
                                int64_t HW) {
  const int64_t bc = blockIdx.x;
  const scalar_t* plane = masks + bc * HW;
  int any = 0;
  for (int64_t i = threadIdx.x; i < HW && !any; i += blockDim.x)
    any = static_cast<at::opmath_type<scalar_t>>(plane[i]) != 0;
  any = __syncthreads_or(any);
  if (threadIdx.x == 0) live[bc] = static_cast<uint8_t>(any);
}

// One step (or adjoint step) of every live plane: dst = step(src). Zero planes: nothing, or
// zeros where write_zeros (the last step, into the result).
template <bool kAdjoint, typename src_t, typename dst_t, typename acc_t>
__global__ void par_step_kernel(const src_t* __restrict__ src, dst_t* __restrict__ dst,
                                const acc_t* __restrict__ weights, const uint8_t* __restrict__ live,
                                int64_t BC, int C, int H, int W, ParStencil st, bool write_zeros) {
  const int K = st.count;
  const int64_t HW = static_cast<int64_t>(H) * W;
  for (int64_t bc = blockIdx.y; bc < BC; bc += gridDim.y) {
    const bool alive = live[bc] != 0;
    if (!alive && !write_zeros) continue;
    const int64_t b = bc / C;
    const src_t* in = src + bc * HW;
    const acc_t* wb = weights + b * K * HW;
    for (int64_t p = grid_first(); p < HW; p += grid_stride()) {
      acc_t s = 0;
      if (alive) {
        const int y = static_cast<int>(p / W), x = static_cast<int>(p % W);
        for (int k = 0; k < K; ++k) {
          if (!kAdjoint) {
            const int64_t q = int64_t(par_clamp(y + st.dy[k], H)) * W + par_clamp(x + st.dx[k], W);
            s = par_step_term(s, __ldg(wb + k * HW + p), static_cast<acc_t>(in[q]));
          } else {
            int y0, y1, x0, x1;
            par_preimage(y, st.dy[k], H, y0, y1);
            par_preimage(x, st.dx[k], W, x0, x1);
            for (int py = y0; py <= y1; ++py)
              for (int px = x0; px <= x1; ++px) {
                const int64_t q = int64_t(py) * W + px;
                s = par_step_term(s, __ldg(wb + k * HW + q), static_cast<acc_t>(in[q]));
              }
          }
        }
      }
      dst[bc * HW + p] = static_cast<dst_t>(s);
    }
  }
}

template <bool kAdjoint>
at::Tensor refine_cuda(const char* name, const at::Tensor& masks_in, const at::Tensor& weights_in,
                       at::IntArrayRef dilations, int64_t num_iter) {
  check_par_refine_args(name, masks_in, weights_in, dilations, num_iter);
  const ParStencil st = make_par_stencil(dilations, 1.0, 0.0);
  c10::cuda::CUDAGuard guard(masks_in.device());
  const at::Tensor masks = masks_in.contiguous();
  const at::Tensor weights = weights_in.contiguous();
  const int64_t B = masks.size(0), C = masks.size(1);
  const int H = static_cast<int>(masks.size(2)), W = static_cast<int>(masks.size(3));
  const int64_t HW = int64_t(H) * W, BC = B * C;
  at::Tensor result = at::empty(masks.sizes(), masks.options());
  if (result.numel() == 0) return result;
  TORCH_CHECK_VALUE(BC <= INT32_MAX, name,
                    " has too many planes for the CUDA kernels: ", masks.sizes());
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor live = at::empty({BC}, masks.options().dtype(at::kByte));
  const dim3 grid(blocks_for(HW) > 1024 ? 1024 : blocks_for(HW),
                  static_cast<unsigned int>(std::min<int64_t>(BC, 65535)));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, masks.scalar_type(), "par_refine_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        par_live_kernel<scalar_t><<<static_cast<unsigned int>(BC), kThreads, 0, stream>>>(
            masks.data_ptr<scalar_t>(), live.data_ptr<uint8_t>(), HW);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        const acc_t* w = weights.data_ptr<acc_t>();
        const uint8_t* lv = live.data_ptr<uint8_t>();
        const scalar_t* first = masks.data_ptr<scalar_t>();
        scalar_t* out = result.data_ptr<scalar_t>();
        if (num_iter == 1) {
          par_step_kernel<kAdjoint, scalar_t, scalar_t, acc_t>
              <<<grid, kThreads, 0, stream>>>(first, out, w, lv, BC, C, H, W, st, true);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          return;
        }
        at::Tensor bufs = at::empty({2, BC, HW}, masks.options().dtype(weights.scalar_type()));
        acc_t* buf[2] = {bufs.data_ptr<acc_t>(), bufs.data_ptr<acc_t>() + BC * HW};
        par_step_kernel<kAdjoint, scalar_t, acc_t, acc_t>
            <<<grid, kThreads, 0, stream>>>(first, buf[0], w, lv, BC, C, H, W, st, false);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        for (int64_t it = 1; it + 1 < num_iter; ++it) {
          par_step_kernel<kAdjoint, acc_t, acc_t, acc_t><<<grid, kThreads, 0, stream>>>(
              buf[(it - 1) % 2], buf[it % 2], w, lv, BC, C, H, W, st, false);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        par_step_kernel<kAdjoint, acc_t, scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
            buf[(num_iter - 2) % 2], out, w, lv, BC, C, H, W, st, true);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return result;
}

at::Tensor par_weights_cuda(const at::Tensor& imgs_in, at::IntArrayRef dilations, double w1,
                            double w2) {
  check_par_imgs(imgs_in);
  const ParStencil st = make_par_stencil(dilations, w1, w2);
  c10::cuda::CUDAGuard guard(imgs_in.device());
  const at::Tensor imgs = imgs_in.contiguous();
  const int64_t B = imgs.size(0), C = imgs.size(1);
  const int H = static_cast<int>(imgs.size(2)), W = static_cast<int>(imgs.size(3));
  const auto acc = par_acc_dtype(imgs.scalar_type());
  at::Tensor out = at::empty({B, st.count, H, W}, imgs.options().dtype(acc));
  if (out.numel() == 0) return out;
  TORCH_CHECK_VALUE(C <= INT32_MAX, "imgs has too many channels: ", imgs.sizes());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, imgs.scalar_type(), "par_weights_cuda",
                                  [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    par_weights_kernel<scalar_t, acc_t>
                                        <<<blocks_for(B * int64_t(H) * W), kThreads, 0, stream>>>(
                                            imgs.data_ptr<scalar_t>(), out.data_ptr<acc_t>(), B,
                                            static_cast<int>(C), H, W, st, static_cast<acc_t>(w1));
                                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                                  });
  return out;
}

at::Tensor par_refine_cuda(const at::Tensor& masks, const at::Tensor& weights,
                           at::IntArrayRef dilations, int64_t num_iter) {
  return refine_cuda<false>("masks", masks, weights, dilations, num_iter);
}

at::Tensor par_refine_backward_cuda(const at::Tensor& grad, const at::Tensor& weights,
                                    at::IntArrayRef dilations, int64_t num_iter) {
  return refine_cuda<true>("grad", grad, weights, dilations, num_iter);
}

}  // namespace

TORCH_LIBRARY_IMPL(affext, CUDA, m) {
  m.impl("par_weights", &par_weights_cuda);
  m.impl("par_refine", &par_refine_cuda);
  m.impl("par_refine_backward", &par_refine_backward_cuda);
}

}  // namespace affext
