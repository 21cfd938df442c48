// Sparse random walk (docs/method.md §5) as a fixed-neighbourhood stencil.
//
// psa's transition T = A^beta D^-1 (A symmetric, unit diagonal, D its column sums) has, in
// column q, the entries of q itself, of q + o_k (pair (q, k)) and of q - o_k (pair (q - o_k, k)).
// One step v' = v T is therefore, per pixel q,
//   v'[q] = (v[q] + sum_k A_k[q] v[q + o_k] + A_k[q - o_k] v[q - o_k]) / d_q,
//   d_q   = 1 + sum_k A_k[q] + A_k[q - o_k],
// with A_k[p] = aff[k, p]^beta for a pair (p, k) of the region and 0 otherwise. K + 1 numbers
// per pixel (A_k and 1/d) hold the whole transition, since A is symmetric.
//
// The math below is shared by the CUDA kernel and the CPU's portable path, which both keep
// the map in padded planes (WalkGrid: r - 1 zero pixels on every side, weights zero there),
// so that a step reads every neighbour and every weight without a bounds check. A pixel sums
// its terms in one fixed order, each term an explicit fused multiply-add:
//   s = v[q]; for k = 0..K-1: s = fma(A_k[q - o_k], v[q - o_k], fma(A_k[q], v[q + o_k], s));
//   v'[q] = s * (1 / d_q)
// and the channels stepped together each follow that order alone, so a channel's result is
// the same bits wherever and with whatever other channels it is stepped (determinism by
// construction, any compiler, any thread or block count).
//
// The CPU's AVX2 path (random_walk_cpu.cpp) steps normalised taps tap[q, j] = A / d_q instead,
// in an order of its own; it too uses explicit FMAs only.
#pragma once

#include "common/macros.h"
#include "common/neighborhood.h"
#include "common/scalar_math.h"
#include "common/stable.h"

namespace affext {

// A^beta of one pair (psa raises the affinity matrix element-wise to beta).
template <typename acc_t>
AFFEXT_HOST_DEVICE acc_t walk_pair_weight(acc_t aff, acc_t beta) {
  return pow_acc(aff, beta);
}

// ---------------------------------------------------------------------------------------------
// Value checks, made where the values are read (no extra pass, no host synchronisation on the
// GPU): each returns bits of WalkValueFlag, OR-ed over a tensor and turned into an error once.
enum WalkValueFlag : int {
  kAffNonFinite = 1,
  kAffNegative = 2,
  kAffAboveOne = 4,
  kCamNonFinite = 8,
};

// x - x is 0 for every finite x and NaN for NaN and +-Inf.
template <typename acc_t>
AFFEXT_HOST_DEVICE bool walk_is_finite(acc_t x) {
  return x - x == acc_t(0);
}

template <typename acc_t>
AFFEXT_HOST_DEVICE int walk_aff_flags(acc_t a) {
  if (!walk_is_finite(a)) return kAffNonFinite;
  return a < acc_t(0) ? kAffNegative : (a > acc_t(1) ? kAffAboveOne : 0);
}

template <typename acc_t>
AFFEXT_HOST_DEVICE int walk_cam_flags(acc_t c) {
  return walk_is_finite(c) ? 0 : kCamNonFinite;
}

// Throws the error (ValueError in affext.random_walk) for the first flag set
// (random_walk_args.cpp); no-op for 0.
void throw_walk_value_flags(int flags);

// ---------------------------------------------------------------------------------------------
// Padded planes: pixel (y, x) of an H x W map lives at (y + P) * Wp + x + P, P = r - 1.
struct WalkGrid {
  int H, W, P, Hp, Wp;
  int64_t S;  // plane size, rounded up to 32 elements (128 bytes in float32)
  AFFEXT_HOST_DEVICE int64_t at(int y, int x) const {
    return static_cast<int64_t>(y + P) * Wp + x + P;
  }
  // Shift of offset k within a plane.
  AFFEXT_HOST_DEVICE int shift(const Offsets& o, int k) const { return o.dy[k] * Wp + o.dx[k]; }
};

inline WalkGrid make_walk_grid(int64_t H, int64_t W, int radius) {
  WalkGrid g;
  g.H = static_cast<int>(H);
  g.W = static_cast<int>(W);
  g.P = radius - 1;
  g.Hp = g.H + 2 * g.P;
  g.Wp = g.W + 2 * g.P;
  g.S = (static_cast<int64_t>(g.Hp) * g.Wp + 31) / 32 * 32;
  return g;
}

// A_k at padded position (py, px) of one map: aff_k points at aff[b, k] ((H, W) contiguous).
// Zero in the padding and for pairs outside the region.
template <typename acc_t, typename scalar_t>
AFFEXT_HOST_DEVICE acc_t walk_padded_weight(const scalar_t* aff_k, const WalkGrid& g,
                                            const Offsets& o, int k, int py, int px, int region,
                                            acc_t beta) {
  const int y = py - g.P, x = px - g.P;
  if (y < 0 || y >= g.H || x < 0 || x >= g.W) return acc_t(0);
  if (!pair_in_region(y, x, o.dy[k], o.dx[k], g.H, g.W, o.radius, region)) return acc_t(0);
  return walk_pair_weight(static_cast<acc_t>(aff_k[static_cast<int64_t>(y) * g.W + x]), beta);
}

// 1 / d_q at padded index q of one map; w: that map's (K, S) padded weights.
template <typename acc_t>
AFFEXT_HOST_DEVICE acc_t walk_inv_degree(const acc_t* w, const WalkGrid& g, const Offsets& o,
                                         int64_t q) {
  acc_t d = acc_t(1);
  for (int k = 0; k < o.count; ++k) {
    d += w[k * g.S + q];
    d += w[k * g.S + q - g.shift(o, k)];
  }
  return acc_t(1) / d;
}

// Read-only loads: through the read-only data cache on the GPU.
template <typename T>
AFFEXT_HOST_DEVICE T walk_load_ro(const T* p) {
#ifdef __CUDA_ARCH__
  return __ldg(p);
#else
  return *p;
#endif
}

// The weights of pixel q read from the padded (K, S) weights and (S) inverse degrees of its
// map. shift[k] is g.shift(o, k).
template <typename acc_t>
struct PaddedWeights {
  const acc_t* w;     // at q in plane 0
  const acc_t* invd;  // at q
  int64_t S;
  const int* shift;
  AFFEXT_HOST_DEVICE acc_t forward(int k) const { return walk_load_ro(w + k * S); }
  AFFEXT_HOST_DEVICE acc_t backward(int k) const { return walk_load_ro(w + k * S - shift[k]); }
  AFFEXT_HOST_DEVICE acc_t inv_degree() const { return walk_load_ro(invd); }
};

// Channel values around one pixel: channel c at pixel + shift[k] is v[c * stride + shift[k]].
template <typename acc_t>
struct ShiftedValues {
  const acc_t* v;  // channel 0 at the pixel
  int64_t stride;  // between channels
  const int* shift;
  AFFEXT_HOST_DEVICE acc_t self(int c) const { return v[c * stride]; }
  AFFEXT_HOST_DEVICE acc_t forward(int c, int k) const { return v[c * stride + shift[k]]; }
  AFFEXT_HOST_DEVICE acc_t backward(int c, int k) const { return v[c * stride - shift[k]]; }
};

// One step of one pixel for n <= N channels, in the order fixed at the top of this file:
// out[c] = v'[q] of channel c. Weights: forward(k) = A_k[q], backward(k) = A_k[q - o_k],
// inv_degree(); Values: self(c), forward(c, k) = v_c[q + o_k], backward(c, k) = v_c[q - o_k].
// Each weight is read once for all n channels.
template <int N, typename acc_t, typename Weights, typename Values>
AFFEXT_HOST_DEVICE void walk_step_pixel(const Weights& w, const Values& v, int K, int n,
                                        acc_t* out) {
  acc_t s[N];
  for (int c = 0; c < N; ++c) s[c] = c < n ? v.self(c) : acc_t(0);
#ifdef __CUDA_ARCH__
#pragma unroll 4  // overlaps the loads of a few taps; the order of the sums stays
#endif
  for (int k = 0; k < K; ++k) {
    const acc_t wf = w.forward(k), wb = w.backward(k);
    for (int c = 0; c < N; ++c)
      if (c < n) s[c] = fma_acc(wb, v.backward(c, k), fma_acc(wf, v.forward(c, k), s[c]));
  }
  const acc_t inv = w.inv_degree();
  for (int c = 0; c < N; ++c)
    if (c < n) out[c] = s[c] * inv;
}

// ---------------------------------------------------------------------------------------------
// The AVX2 CPU path's taps: the 2K + 1 unnormalised taps of pixel (y, x) and their sum d_q
// (the column sum of A^beta). aff points at aff[b], (K, H, W) contiguous; taps[j * stride]
// receives tap j: 0 the pixel itself, 1 + k the pair (q, k), 1 + K + k the pair (q - o_k, k).
template <typename scalar_t, typename acc_t>
AFFEXT_HOST_DEVICE acc_t walk_taps(const scalar_t* aff, int y, int x, int H, int W,
                                   const Offsets& o, int region, acc_t beta, acc_t* taps,
                                   int64_t stride) {
  const int K = o.count;
  const int64_t HW = static_cast<int64_t>(H) * W;
  acc_t d = acc_t(1);
  taps[0] = acc_t(1);  // A_qq = 1
  for (int k = 0; k < K; ++k) {
    const int dy = o.dy[k], dx = o.dx[k];
    acc_t w = 0;  // pair (q, k): partner q + o_k
    if (pair_in_region(y, x, dy, dx, H, W, o.radius, region))
      w = walk_pair_weight(static_cast<acc_t>(aff[k * HW + static_cast<int64_t>(y) * W + x]), beta);
    taps[(1 + k) * stride] = w;
    d += w;
    w = 0;  // pair (q - o_k, k): partner q - o_k
    const int py = y - dy, px = x - dx;
    if (py >= 0 && px >= 0 && px < W && pair_in_region(py, px, dy, dx, H, W, o.radius, region))
      w = walk_pair_weight(static_cast<acc_t>(aff[k * HW + static_cast<int64_t>(py) * W + px]),
                           beta);
    taps[(1 + K + k) * stride] = w;
    d += w;
  }
  return d;
}

// Row/column shift of tap j: 0, then +o_k, then -o_k.
AFFEXT_HOST_DEVICE int tap_dy(const Offsets& o, int j) {
  return j == 0 ? 0 : (j <= o.count ? o.dy[j - 1] : -o.dy[j - 1 - o.count]);
}
AFFEXT_HOST_DEVICE int tap_dx(const Offsets& o, int j) {
  return j == 0 ? 0 : (j <= o.count ? o.dx[j - 1] : -o.dx[j - 1 - o.count]);
}

// The output dtype: the promoted input dtype, at least float32 (half and bfloat16 inputs walk,
// and return, in float32). The fake kernel (affext/ops/random_walk.py) states the same rule.
inline ScalarType walk_result_dtype(const Tensor& cam, const Tensor& aff) {
  return promote_floating(promote_floating(cam.scalar_type(), aff.scalar_type()),
                          ScalarType::Float);
}

// Checks of shapes and arguments shared by the CPU and CUDA launchers (random_walk_args.cpp);
// no values are read (see WalkValueFlag).
void check_random_walk_args(const Tensor& cam, const Tensor& aff, double beta, int64_t iterations,
                            int64_t radius, int64_t region);

Tensor random_walk_cpu(const Tensor& cam, const Tensor& aff, double beta, int64_t iterations,
                       int64_t radius, int64_t region);
#ifdef AFFEXT_WITH_CUDA
Tensor random_walk_cuda(const Tensor& cam, const Tensor& aff, double beta, int64_t iterations,
                        int64_t radius, int64_t region);
#endif

}  // namespace affext
