// PAR, the pixel-adaptive refinement of AFA and ToCo (docs/method.md §10).
//
// Neighbours: for each dilation d (in the order given), the 3x3 ring scaled by d, row by row
// without its centre: (-d,-d) (-d,0) (-d,d) (0,-d) (0,d) (d,-d) (d,0) (d,d) as (dy, dx);
// K = 8 x the number of dilations. Borders replicate: neighbour k of (y, x) is
// (clamp(y + dy_k, 0, H-1), clamp(x + dx_k, 0, W-1)), whatever d is beside H and W.
//
// Weights, once per image (par_weights):
//   std_c(p)  = unbiased standard deviation of imgs[c] over the K neighbours of p,
//   logit_k(p) = mean_c -(|imgs[c, n_k(p)] - imgs[c, p]| / (std_c(p) + 1e-8) / w1)^2,
//   weights_k(p) = softmax_k(logit(p)) + pos_k,
//   pos_k = w2 softmax_k(-(|o_k| / (std_j |o_j| + 1e-8) / w1)^2), |o_k| = d or sqrt(2) d,
// a constant of the dilation set (ParStencil::pos).
// Steps (par_refine), num_iter times, per pixel and channel, in the fixed order k = 0..K-1:
//   s = 0; s = par_step_term(s, weights_k(p), masks[n_k(p)]); masks'(p) = s.
// The adjoint (par_refine_backward) gathers, per pixel q, over every (p, k) with n_k(p) = q,
// in the order k, then p's row, then p's column (par_preimage): deterministic, no atomics.
//
// The per-element math below is shared by the CPU and the CUDA kernels.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/macros.h"
#include "common/scalar_math.h"
#include "common/stable.h"

namespace affext {

constexpr int kParRing = 8;
constexpr int kParMaxDilations = 16;
constexpr int kParMaxNeighbors = kParRing * kParMaxDilations;
// The largest dilation accepted: offsets and clamped indices stay far inside int32.
constexpr int64_t kParMaxDilation = 1 << 20;

// The ring of one dilation in PAR's order, as multiples of d.
constexpr int kParRingDy[kParRing] = {-1, -1, -1, 0, 0, 1, 1, 1};
constexpr int kParRingDx[kParRing] = {-1, 0, 1, -1, 1, -1, 0, 1};

// The neighbour offsets and the position term of a dilation set (make_par_stencil, in
// par_args.cpp). Passed by value to the CUDA kernels (about 2 kB).
struct ParStencil {
  int count;  // K
  int dy[kParMaxNeighbors];
  int dx[kParMaxNeighbors];
  double pos[kParMaxNeighbors];  // pos_k, w2 included
};

// Replicate padding: the index of a neighbour at v on an axis of n pixels.
AFFEXT_HOST_DEVICE int par_clamp(int v, int n) { return v < 0 ? 0 : (v >= n ? n - 1 : v); }

// The pixels v of an axis of n whose neighbour at offset d is q (clamp(v + d) == q): the
// range [lo, hi], empty when lo > hi. Inside the axis one pixel, q - d; at the first (last)
// pixel every v whose neighbour falls at or before (after) it.
AFFEXT_HOST_DEVICE void par_preimage(int q, int d, int n, int& lo, int& hi) {
  lo = q == 0 ? 0 : q - d;
  hi = q == n - 1 ? n - 1 : q - d;
  lo = lo < 0 ? 0 : lo;
  hi = hi > n - 1 ? n - 1 : hi;
}

// The scale of one colour channel's differences at a pixel: 1 / ((std + 1e-8) w1).
template <typename acc_t>
AFFEXT_HOST_DEVICE acc_t par_inv_scale(acc_t sd, acc_t w1) {
  return acc_t(1) / ((sd + acc_t(1e-8)) * w1);
}

// One colour channel's term of the logit: -(|v - centre| / (std + 1e-8) / w1)^2.
template <typename acc_t>
AFFEXT_HOST_DEVICE acc_t par_logit_term(acc_t v, acc_t centre, acc_t inv_scale) {
  const acc_t t = abs_acc(v - centre) * inv_scale;
  return -(t * t);
}

// exp(x) for the softmax's x = logit - max <= 0. float: Cephes' expf in a form the compiler
// vectorises (x = n ln2 + r, a degree-6 polynomial in r, 2^n from the exponent bits; within
// about 2 ulp of expf), 0 below ln(FLT_MIN) where expf's result is below 1.2e-38, NaN for
// NaN. double: exp.
AFFEXT_HOST_DEVICE double par_exp(double x) { return exp_acc(x); }
AFFEXT_HOST_DEVICE float par_exp(float x) {
  const bool nan = x != x;
  const bool tiny = x < -87.33654f;
  const float xc = tiny ? -87.33654f : x;
  float n = static_cast<float>(static_cast<int>(xc * 1.44269504088896341f + 0.5f));
  n = n > xc * 1.44269504088896341f + 0.5f ? n - 1.0f : n;  // floor, for negative values
  const float r = xc - n * 0.693359375f - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int bits = (static_cast<int>(n) + 127) << 23;
#ifdef __CUDA_ARCH__
  const float scale = __int_as_float(bits);
#else
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
#endif
  return nan ? x : (tiny ? 0.0f : e * scale);
}

// Unbiased standard deviation from the sum of squared deviations over K values.
template <typename acc_t>
AFFEXT_HOST_DEVICE acc_t par_std(acc_t sum_sq, int K) {
  return sqrt_acc(sum_sq / static_cast<acc_t>(K - 1));
}

// The weight from its logit, the logits' maximum, the sum of exp(logit - max) and pos_k.
template <typename acc_t>
AFFEXT_HOST_DEVICE acc_t par_weight(acc_t e, acc_t sum, acc_t pos) {
  return e / sum + pos;
}

// One neighbour's term of a step (and of the adjoint step).
template <typename acc_t>
AFFEXT_HOST_DEVICE acc_t par_step_term(acc_t s, acc_t w, acc_t v) {
  return s + w * v;
}

// Checks shared by the launchers (par_args.cpp); each message names the argument.
ParStencil make_par_stencil(IntList dilations, double w1, double w2);
void check_par_imgs(const Tensor& imgs);
// masks (or grad) against weights; K from the dilations.
void check_par_refine_args(const char* name, const Tensor& masks, const Tensor& weights,
                           IntList dilations, int64_t num_iter);
// The dtype the weights and the steps are computed in: float64 for float64, else float32.
inline ScalarType par_acc_dtype(ScalarType t) {
  return t == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

// The launchers (par_cpu.cpp, par_cuda.cu) register themselves with STABLE_TORCH_LIBRARY_IMPL.

}  // namespace affext
