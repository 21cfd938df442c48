// CPU kernels of PAR (par.h). Work is split by (image, row) with parallel_for; within a
// row the innermost loops run along x over contiguous memory (a neighbour's row is a shifted
// copy of a source row, replicated at its ends), so the compiler vectorises them. Each pixel
// sums its terms in par.h's fixed order whatever the split: the same bits at any thread count.
#include "common/stable.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "common/parallel.h"
#include "par/par.h"

namespace affext {

namespace {

// Columns [0, x0) of a row's neighbours at column offset dx read the row's first pixel,
// [x0, x1) read x + dx, [x1, W) the last pixel (replicate padding).
struct ColumnSplit {
  int x0, x1;
};
inline ColumnSplit split_columns(int W, int dx) {
  const int x0 = std::min(W, std::max(0, -dx));
  const int x1 = std::max(x0, std::min(W, W - dx));
  return {x0, x1};
}

// dst[x] = src[clamp(x + dx)] for x in [0, W).
template <typename scalar_t, typename acc_t>
void gather_row(const scalar_t* src, int W, int dx, acc_t* dst) {
  const ColumnSplit s = split_columns(W, dx);
  const acc_t first = static_cast<acc_t>(src[0]), last = static_cast<acc_t>(src[W - 1]);
  for (int x = 0; x < s.x0; ++x) dst[x] = first;
  for (int x = s.x0; x < s.x1; ++x) dst[x] = static_cast<acc_t>(src[x + dx]);
  for (int x = s.x1; x < W; ++x) dst[x] = last;
}

template <typename scalar_t, typename acc_t>
void weights_kernel(const scalar_t* imgs, acc_t* out, int64_t B, int64_t C, int H, int W,
                    const ParStencil& st, acc_t w1) {
  const int K = st.count;
  const int64_t HW = static_cast<int64_t>(H) * W;
  parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> nb(static_cast<size_t>(K) * W), logit(static_cast<size_t>(K) * W);
    std::vector<acc_t> centre(W), mean(W), inv(W), top(W), sum(W);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H;
      const int y = static_cast<int>(row % H);
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* plane = imgs + (b * C + c) * HW;
        for (int x = 0; x < W; ++x) centre[x] = static_cast<acc_t>(plane[int64_t(y) * W + x]);
        for (int k = 0; k < K; ++k)
          gather_row(plane + int64_t(par_clamp(y + st.dy[k], H)) * W, W, st.dx[k],
                     nb.data() + int64_t(k) * W);
        // The unbiased std over the K neighbours (two passes), as the inverse scale.
        std::fill(mean.begin(), mean.end(), acc_t(0));
        for (int k = 0; k < K; ++k) {
          const acc_t* v = nb.data() + int64_t(k) * W;
          for (int x = 0; x < W; ++x) mean[x] += v[x];
        }
        for (int x = 0; x < W; ++x) mean[x] /= static_cast<acc_t>(K);
        std::fill(inv.begin(), inv.end(), acc_t(0));
        for (int k = 0; k < K; ++k) {
          const acc_t* v = nb.data() + int64_t(k) * W;
          for (int x = 0; x < W; ++x) inv[x] += (v[x] - mean[x]) * (v[x] - mean[x]);
        }
        for (int x = 0; x < W; ++x) inv[x] = par_inv_scale(par_std(inv[x], K), w1);
        for (int k = 0; k < K; ++k) {
          const acc_t* v = nb.data() + int64_t(k) * W;
          acc_t* l = logit.data() + int64_t(k) * W;
          if (c == 0) {
            for (int x = 0; x < W; ++x) l[x] = par_logit_term(v[x], centre[x], inv[x]);
          } else {
            for (int x = 0; x < W; ++x) l[x] += par_logit_term(v[x], centre[x], inv[x]);
          }
        }
      }
      // Mean over the colour channels, then the softmax over the neighbours.
      const acc_t channels = static_cast<acc_t>(C);
      std::fill(top.begin(), top.end(), -std::numeric_limits<acc_t>::infinity());
      for (int k = 0; k < K; ++k) {
        acc_t* l = logit.data() + int64_t(k) * W;
        for (int x = 0; x < W; ++x) {
          l[x] /= channels;
          top[x] = std::max(top[x], l[x]);
        }
      }
      std::fill(sum.begin(), sum.end(), acc_t(0));
      for (int k = 0; k < K; ++k) {
        acc_t* l = logit.data() + int64_t(k) * W;
        for (int x = 0; x < W; ++x) {
          l[x] = par_exp(l[x] - top[x]);
          sum[x] += l[x];
        }
      }
      for (int k = 0; k < K; ++k) {
        const acc_t* e = logit.data() + int64_t(k) * W;
        const acc_t pos = static_cast<acc_t>(st.pos[k]);
        acc_t* o = out + ((b * K + k) * H + y) * W;
        for (int x = 0; x < W; ++x) o[x] = par_weight(e[x], sum[x], pos);
      }
    }
  });
}

// The channels that are not zero everywhere, as planes of a compact buffer: slot j holds
// channel slot_channel[j] of image slot_image[j]; the slots of image b are
// [first[b], first[b + 1]). A step is linear, so the other channels stay zero.
struct LiveSlots {
  std::vector<int64_t> first, channel;
  int64_t count() const { return first.back(); }
  int64_t most() const {
    int64_t m = 0;
    for (size_t b = 0; b + 1 < first.size(); ++b) m = std::max(m, first[b + 1] - first[b]);
    return m;
  }
};

template <typename scalar_t>
LiveSlots live_slots(const scalar_t* masks, int64_t B, int64_t C, int64_t HW) {
  std::vector<uint8_t> live(B * C, 0);
  parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const scalar_t* p = masks + bc * HW;
      bool any = false;
      for (int64_t i = 0; i < HW && !any; ++i) any = static_cast<opmath_t<scalar_t>>(p[i]) != 0;
      live[bc] = any;
    }
  });
  LiveSlots s;
  s.first.push_back(0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < C; ++c)
      if (live[b * C + c]) s.channel.push_back(b * C + c);
    s.first.push_back(static_cast<int64_t>(s.channel.size()));
  }
  return s;
}

// One step of row y of N planes of one image (in and out at those planes' first, HW apart;
// weights at the image's first): out[p] = sum_k weights_k(p) in[n_k(p)] (par.h). Blocks of
// kBlockX pixels keep their N x kBlockX sums in registers over the K neighbours, each
// weight load serving the N channels; a block whose neighbours all lie inside the row reads
// them as one contiguous run, the others clamp each column.
constexpr int kBlockX = 8;
constexpr int kChunk = 4;
#if defined(__GNUC__)
#define AFFEXT_PAR_VECTORS 1
#endif
#if defined(__GNUC__) && defined(__x86_64__)
#define AFFEXT_PAR_AVX2 1
#define AFFEXT_PAR_INLINE inline __attribute__((always_inline))
#else
#define AFFEXT_PAR_INLINE inline
#endif

template <int N, typename acc_t>
AFFEXT_PAR_INLINE void step_row(const acc_t* in, acc_t* out, const acc_t* weights, int64_t HW,
                                int y, int H, int W, const ParStencil& st) {
  const int K = st.count;
  for (int x0 = 0; x0 < W; x0 += kBlockX) {
    const int len = std::min(kBlockX, W - x0);
    acc_t acc[N][kBlockX] = {};
    for (int k = 0; k < K; ++k) {
      const int dx = st.dx[k];
      const acc_t* w = weights + k * HW + int64_t(y) * W + x0;
      const acc_t* src = in + int64_t(par_clamp(y + st.dy[k], H)) * W;
      if (len == kBlockX && x0 + dx >= 0 && x0 + dx + kBlockX <= W) {
        const acc_t* run = src + x0 + dx;
        for (int c = 0; c < N; ++c)
          for (int i = 0; i < kBlockX; ++i)
            acc[c][i] = par_step_term(acc[c][i], w[i], run[c * HW + i]);
      } else {
        for (int i = 0; i < len; ++i) {
          const int xi = par_clamp(x0 + i + dx, W);
          for (int c = 0; c < N; ++c) acc[c][i] = par_step_term(acc[c][i], w[i], src[c * HW + xi]);
        }
      }
    }
    for (int c = 0; c < N; ++c)
      for (int i = 0; i < len; ++i) out[c * HW + int64_t(y) * W + x0 + i] = acc[c][i];
  }
}

#ifdef AFFEXT_PAR_VECTORS
// float32: the block's sums as one 8-float vector a channel (GCC / clang vector extensions:
// two SSE registers, or one AVX register where compiled for AVX2), so that they stay in
// registers over the K neighbours. Lane by lane the same operations as step_row's.
// (Its values pass between inlined functions only: GCC's note on the ABI of 32-byte vector
// arguments without AVX does not apply.)
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float Float8 __attribute__((vector_size(32), aligned(4)));
AFFEXT_PAR_INLINE Float8 load8(const float* p) {
  Float8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <int N>
AFFEXT_PAR_INLINE void step_row(const float* in, float* out, const float* weights, int64_t HW,
                                int y, int H, int W, const ParStencil& st) {
  static_assert(kBlockX == 8, "one Float8 a block");
  const int K = st.count;
  for (int x0 = 0; x0 < W; x0 += kBlockX) {
    const int len = std::min(kBlockX, W - x0);
    Float8 acc[N];
    for (int c = 0; c < N; ++c) acc[c] = Float8{};
    for (int k = 0; k < K; ++k) {
      const int dx = st.dx[k];
      const float* w = weights + k * HW + int64_t(y) * W + x0;
      const float* src = in + int64_t(par_clamp(y + st.dy[k], H)) * W;
      if (len == kBlockX && x0 + dx >= 0 && x0 + dx + kBlockX <= W) {
        const Float8 wv = load8(w);
        const float* run = src + x0 + dx;
        for (int c = 0; c < N; ++c) acc[c] = par_step_term(acc[c], wv, load8(run + c * HW));
      } else {
        for (int i = 0; i < len; ++i) {
          const int xi = par_clamp(x0 + i + dx, W);
          for (int c = 0; c < N; ++c) acc[c][i] = par_step_term(acc[c][i], w[i], src[c * HW + xi]);
        }
      }
    }
    for (int c = 0; c < N; ++c) {
      float* o = out + c * HW + int64_t(y) * W + x0;
      if (len == kBlockX) {
        std::memcpy(o, &acc[c], sizeof(Float8));
      } else {
        for (int i = 0; i < len; ++i) o[i] = acc[c][i];
      }
    }
  }
}
#endif

// Rows [begin, end) of image rows (b, y) for every live plane of their image.
template <typename acc_t>
AFFEXT_PAR_INLINE void step_rows(const acc_t* in, acc_t* out, const acc_t* weights,
                                 const LiveSlots& slots, int64_t begin, int64_t end, int H, int W,
                                 const ParStencil& st) {
  const int64_t HW = static_cast<int64_t>(H) * W;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t b = row / H;
    const int y = static_cast<int>(row % H);
    const acc_t* wb = weights + b * st.count * HW;
    for (int64_t j = slots.first[b]; j < slots.first[b + 1]; j += kChunk) {
      const int64_t n = std::min<int64_t>(kChunk, slots.first[b + 1] - j);
      const acc_t* src = in + j * HW;
      acc_t* dst = out + j * HW;
      switch (n) {
        case 1:
          step_row<1>(src, dst, wb, HW, y, H, W, st);
          break;
        case 2:
          step_row<2>(src, dst, wb, HW, y, H, W, st);
          break;
        case 3:
          step_row<3>(src, dst, wb, HW, y, H, W, st);
          break;
        default:
          step_row<kChunk>(src, dst, wb, HW, y, H, W, st);
          break;
      }
    }
  }
}

template <typename acc_t>
void step_rows_portable(const acc_t* in, acc_t* out, const acc_t* weights, const LiveSlots& slots,
                        int64_t begin, int64_t end, int H, int W, const ParStencil& st) {
  step_rows(in, out, weights, slots, begin, end, H, W, st);
}

#ifdef AFFEXT_PAR_AVX2
// The same code compiled for AVX2 (8 floats a vector), without FMA: a multiply and an add,
// rounded each, as the portable path, so both give the same bits.
template <typename acc_t>
__attribute__((target("avx2"))) void step_rows_avx2(const acc_t* in, acc_t* out,
                                                    const acc_t* weights, const LiveSlots& slots,
                                                    int64_t begin, int64_t end, int H, int W,
                                                    const ParStencil& st) {
  step_rows(in, out, weights, slots, begin, end, H, W, st);
}
#endif

// One step of every live plane.
template <typename acc_t>
void step_forward(const acc_t* in, acc_t* out, const acc_t* weights, const LiveSlots& slots,
                  int64_t B, int H, int W, const ParStencil& st) {
#ifdef AFFEXT_PAR_AVX2
  static const bool avx2 = __builtin_cpu_supports("avx2");
#else
  constexpr bool avx2 = false;
#endif
  parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
#ifdef AFFEXT_PAR_AVX2
    if (avx2) return step_rows_avx2(in, out, weights, slots, begin, end, H, W, st);
#endif
    step_rows_portable(in, out, weights, slots, begin, end, H, W, st);
  });
}

// One adjoint step: out[q] = sum over (p, k) with n_k(p) = q of weights_k(p) in[p], in the
// order k, p's row, p's column (par.h).
template <typename acc_t>
void step_adjoint(const acc_t* in, acc_t* out, const acc_t* weights, const LiveSlots& slots,
                  int64_t B, int H, int W, const ParStencil& st) {
  const int K = st.count;
  const int64_t HW = static_cast<int64_t>(H) * W;
  parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(static_cast<size_t>(slots.most()) * W);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H;
      const int qy = static_cast<int>(row % H);
      const int64_t j0 = slots.first[b], n = slots.first[b + 1] - j0;
      if (n == 0) continue;
      std::fill(acc.begin(), acc.begin() + n * W, acc_t(0));
      for (int k = 0; k < K; ++k) {
        const int dx = st.dx[k];
        int y0, y1, left0, left1, right0 = 0, right1 = -1;
        par_preimage(qy, st.dy[k], H, y0, y1);
        if (y0 > y1) continue;
        // Columns 0 and W - 1 gather ranges; the others one pixel each, qx - dx.
        par_preimage(0, dx, W, left0, left1);
        if (W > 1) par_preimage(W - 1, dx, W, right0, right1);
        const int in0 = std::max(1, dx), in1 = std::max(in0, std::min(W - 1, W + dx));
        for (int y = y0; y <= y1; ++y) {
          const acc_t* w = weights + ((b * K + k) * H + y) * W;
          for (int64_t j = 0; j < n; ++j) {
            const acc_t* g = in + (j0 + j) * HW + int64_t(y) * W;
            acc_t* a = acc.data() + j * W;
            for (int x = left0; x <= left1; ++x) a[0] = par_step_term(a[0], w[x], g[x]);
            for (int qx = in0; qx < in1; ++qx) a[qx] = par_step_term(a[qx], w[qx - dx], g[qx - dx]);
            for (int x = right0; x <= right1; ++x) a[W - 1] = par_step_term(a[W - 1], w[x], g[x]);
          }
        }
      }
      for (int64_t j = 0; j < n; ++j)
        std::copy(acc.data() + j * W, acc.data() + (j + 1) * W, out + (j0 + j) * HW + qy * W);
    }
  });
}

// num_iter steps (forward or adjoint) of the live channels of masks into result (zeros).
template <bool kAdjoint, typename scalar_t>
void refine_typed(const Tensor& masks, const Tensor& weights, const ParStencil& st,
                  int64_t num_iter, Tensor& result) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t B = masks.size(0), C = masks.size(1);
  const int H = static_cast<int>(masks.size(2)), W = static_cast<int>(masks.size(3));
  const int64_t HW = int64_t(H) * W;
  const scalar_t* m = masks.const_data_ptr<scalar_t>();
  const LiveSlots slots = live_slots(m, B, C, HW);
  const int64_t n = slots.count();
  if (n == 0) return;
  std::vector<acc_t> buf0(n * HW), buf1(n * HW);
  parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j)
      std::copy(m + slots.channel[j] * HW, m + (slots.channel[j] + 1) * HW, buf0.data() + j * HW);
  });
  acc_t* bufs[2] = {buf0.data(), buf1.data()};
  const acc_t* w = weights.const_data_ptr<acc_t>();
  for (int64_t it = 0; it < num_iter; ++it) {
    if (kAdjoint)
      step_adjoint(bufs[it % 2], bufs[(it + 1) % 2], w, slots, B, H, W, st);
    else
      step_forward(bufs[it % 2], bufs[(it + 1) % 2], w, slots, B, H, W, st);
  }
  const acc_t* last = bufs[num_iter % 2];
  scalar_t* out = result.mutable_data_ptr<scalar_t>();
  parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j)
      for (int64_t i = 0; i < HW; ++i)
        out[slots.channel[j] * HW + i] = static_cast<scalar_t>(last[j * HW + i]);
  });
}

template <bool kAdjoint>
Tensor refine(const char* name, const Tensor& masks_in, const Tensor& weights_in, IntList dilations,
              int64_t num_iter) {
  check_par_refine_args(name, masks_in, weights_in, dilations, num_iter);
  const ParStencil st = make_par_stencil(dilations, 1.0, 0.0);
  const Tensor masks = torch::stable::contiguous(masks_in);
  const Tensor weights = torch::stable::contiguous(weights_in);
  Tensor result = torch::stable::new_zeros(masks, masks.sizes());
  if (masks.numel() == 0) return result;
  THO_DISPATCH_V2(masks.scalar_type(), "par_refine_cpu", AT_WRAP(([&] {
                    refine_typed<kAdjoint, scalar_t>(masks, weights, st, num_iter, result);
                  })),  // parenthesised: the template's comma
                  AT_FLOATING_TYPES, ScalarType::Half, ScalarType::BFloat16);
  return result;
}

Tensor par_weights_cpu(const Tensor& imgs_in, IntList dilations, double w1, double w2) {
  check_par_imgs(imgs_in);
  const ParStencil st = make_par_stencil(dilations, w1, w2);
  const Tensor imgs = torch::stable::contiguous(imgs_in);
  const int64_t B = imgs.size(0), C = imgs.size(1);
  const int H = static_cast<int>(imgs.size(2)), W = static_cast<int>(imgs.size(3));
  const ScalarType acc = par_acc_dtype(imgs.scalar_type());
  Tensor out = torch::stable::new_empty(imgs, {B, st.count, H, W}, acc);
  if (B == 0) return out;
  THO_DISPATCH_V2(imgs.scalar_type(), "par_weights_cpu", AT_WRAP(([&] {
                    using acc_t = opmath_t<scalar_t>;
                    weights_kernel<scalar_t, acc_t>(imgs.const_data_ptr<scalar_t>(),
                                                    out.mutable_data_ptr<acc_t>(), B, C, H, W, st,
                                                    static_cast<acc_t>(w1));
                  })),  // parenthesised: the template's comma
                  AT_FLOATING_TYPES, ScalarType::Half, ScalarType::BFloat16);
  return out;
}

Tensor par_refine_cpu(const Tensor& masks, const Tensor& weights, IntList dilations,
                      int64_t num_iter) {
  return refine<false>("masks", masks, weights, dilations, num_iter);
}

Tensor par_refine_backward_cpu(const Tensor& grad, const Tensor& weights, IntList dilations,
                               int64_t num_iter) {
  return refine<true>("grad", grad, weights, dilations, num_iter);
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(affext, CPU, m) {
  m.impl("par_weights", TORCH_BOX(&par_weights_cpu));
  m.impl("par_refine", TORCH_BOX(&par_refine_cpu));
  m.impl("par_refine_backward", TORCH_BOX(&par_refine_backward_cpu));
}

}  // namespace affext
