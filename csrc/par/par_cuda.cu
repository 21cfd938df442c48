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
#include "common/stable.h"

#include <cuda_runtime.h>

#include <algorithm>

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
    any = static_cast<opmath_t<scalar_t>>(plane[i]) != 0;
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
Tensor refine_cuda(const char* name, const Tensor& masks_in, const Tensor& weights_in,
                   IntList dilations, int64_t num_iter) {
  check_par_refine_args(name, masks_in, weights_in, dilations, num_iter);
  const ParStencil st = make_par_stencil(dilations, 1.0, 0.0);
  const torch::stable::accelerator::DeviceGuard guard(masks_in.get_device_index());
  const Tensor masks = torch::stable::contiguous(masks_in);
  const Tensor weights = torch::stable::contiguous(weights_in);
  const int64_t B = masks.size(0), C = masks.size(1);
  const int H = static_cast<int>(masks.size(2)), W = static_cast<int>(masks.size(3));
  const int64_t HW = int64_t(H) * W, BC = B * C;
  Tensor result = torch::stable::empty_like(masks);  // masks is contiguous
  if (result.numel() == 0) return result;
  AFFEXT_CHECK(BC <= INT32_MAX, name,
               " has too many planes for the CUDA kernels: ", sizes_of(masks));
  const cudaStream_t stream = current_stream();
  Tensor live = torch::stable::new_empty(masks, {BC}, ScalarType::Byte);
  const dim3 grid(blocks_for(HW) > 1024 ? 1024 : blocks_for(HW),
                  static_cast<unsigned int>(std::min<int64_t>(BC, 65535)));
  THO_DISPATCH_V2(
      masks.scalar_type(), "par_refine_cuda", AT_WRAP(([&] {
        using acc_t = opmath_t<scalar_t>;
        par_live_kernel<scalar_t><<<static_cast<unsigned int>(BC), kThreads, 0, stream>>>(
            masks.const_data_ptr<scalar_t>(), live.mutable_data_ptr<uint8_t>(), HW);
        check_launch();
        const acc_t* w = weights.const_data_ptr<acc_t>();
        const uint8_t* lv = live.const_data_ptr<uint8_t>();
        const scalar_t* first = masks.const_data_ptr<scalar_t>();
        scalar_t* out = result.mutable_data_ptr<scalar_t>();
        if (num_iter == 1) {
          par_step_kernel<kAdjoint, scalar_t, scalar_t, acc_t>
              <<<grid, kThreads, 0, stream>>>(first, out, w, lv, BC, C, H, W, st, true);
          check_launch();
          return;
        }
        Tensor bufs = torch::stable::new_empty(masks, {2, BC, HW}, weights.scalar_type());
        acc_t* buf[2] = {bufs.mutable_data_ptr<acc_t>(), bufs.mutable_data_ptr<acc_t>() + BC * HW};
        par_step_kernel<kAdjoint, scalar_t, acc_t, acc_t>
            <<<grid, kThreads, 0, stream>>>(first, buf[0], w, lv, BC, C, H, W, st, false);
        check_launch();
        for (int64_t it = 1; it + 1 < num_iter; ++it) {
          par_step_kernel<kAdjoint, acc_t, acc_t, acc_t><<<grid, kThreads, 0, stream>>>(
              buf[(it - 1) % 2], buf[it % 2], w, lv, BC, C, H, W, st, false);
          check_launch();
        }
        par_step_kernel<kAdjoint, acc_t, scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
            buf[(num_iter - 2) % 2], out, w, lv, BC, C, H, W, st, true);
        check_launch();
      })),  // parenthesised: the launches' <<<...>>> commas
      AT_FLOATING_TYPES, ScalarType::Half, ScalarType::BFloat16);
  return result;
}

Tensor par_weights_cuda(const Tensor& imgs_in, IntList dilations, double w1, double w2) {
  check_par_imgs(imgs_in);
  const ParStencil st = make_par_stencil(dilations, w1, w2);
  const torch::stable::accelerator::DeviceGuard guard(imgs_in.get_device_index());
  const Tensor imgs = torch::stable::contiguous(imgs_in);
  const int64_t B = imgs.size(0), C = imgs.size(1);
  const int H = static_cast<int>(imgs.size(2)), W = static_cast<int>(imgs.size(3));
  const ScalarType acc = par_acc_dtype(imgs.scalar_type());
  Tensor out = torch::stable::new_empty(imgs, {B, st.count, H, W}, acc);
  if (out.numel() == 0) return out;
  AFFEXT_CHECK(C <= INT32_MAX, "imgs has too many channels: ", sizes_of(imgs));
  const cudaStream_t stream = current_stream();
  THO_DISPATCH_V2(imgs.scalar_type(), "par_weights_cuda", AT_WRAP(([&] {
                    using acc_t = opmath_t<scalar_t>;
                    par_weights_kernel<scalar_t, acc_t>
                        <<<blocks_for(B * int64_t(H) * W), kThreads, 0, stream>>>(
                            imgs.const_data_ptr<scalar_t>(), out.mutable_data_ptr<acc_t>(), B,
                            static_cast<int>(C), H, W, st, static_cast<acc_t>(w1));
                    check_launch();
                  })),  // parenthesised: the launch's <<<...>>> commas
                  AT_FLOATING_TYPES, ScalarType::Half, ScalarType::BFloat16);
  return out;
}

Tensor par_refine_cuda(const Tensor& masks, const Tensor& weights, IntList dilations,
                       int64_t num_iter) {
  return refine_cuda<false>("masks", masks, weights, dilations, num_iter);
}

Tensor par_refine_backward_cuda(const Tensor& grad, const Tensor& weights, IntList dilations,
                                int64_t num_iter) {
  return refine_cuda<true>("grad", grad, weights, dilations, num_iter);
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(affext, CUDA, m) {
  m.impl("par_weights", TORCH_BOX(&par_weights_cuda));
  m.impl("par_refine", TORCH_BOX(&par_refine_cuda));
  m.impl("par_refine_backward", TORCH_BOX(&par_refine_backward_cuda));
}

}  // namespace affext
