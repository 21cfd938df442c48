// Dense CRF (Krähenbühl & Koltun 2011) with the permutohedral lattice (Adams, Baek & Davis
// 2010): the model of pydensecrf's DenseCRF2D with a Gaussian and a bilateral Potts term,
// and its mean-field inference (docs/method.md §2).
//
// Model. A pixel p = (x, y) of an H x W image has two feature vectors: f_g = (x, y) / sxy_g
// (the Gaussian term) and f_b = (x / sxy_b, y / sxy_b, r / srgb, g / srgb, b / srgb) (the
// bilateral term). A term's kernel is k(p, q) = exp(-|f_p - f_q|^2 / 2), approximated by
// filtering on the lattice: L v = slice(blur(splat(v))) (the pixel's own contribution
// included, as in pydensecrf), and normalised symmetrically, n = 1 / sqrt(L 1 + 1e-20),
// K v = n * L(n * v). With the unary U = -log(clip(score, 1e-5, 1)) (scores not normalised
// over labels, as psa passes them), mean field runs
//   Q_0 = softmax(-U),  Q_{t+1} = softmax(-U + w_g K_g Q_t + w_b K_b Q_t)
// per pixel over the labels, w the Potts compatibilities (a label's energy drops by w times
// the kernel-weighted mass of that label around the pixel).
//
// Lattice. A d-dimensional point is scaled per axis (s_i = sqrt(2/3) (d + 1) /
// sqrt((i + 1)(i + 2)), which makes the lattice's blur match a unit Gaussian), elevated onto
// the hyperplane sum = 0 of R^{d+1}, and located in its enclosing simplex: d + 1 lattice
// vertices (integer keys) with barycentric weights. splat adds each pixel's value, times its
// weight, to its d + 1 vertices; blur convolves with [1/2, 1, 1/2] along each of the d + 1
// lattice axes in turn (missing neighbours count as 0); slice reads the weighted vertex sum
// back, times alpha = 1 / (1 + 2^-d).
//
// This header holds what the CPU and the CUDA kernels share: the point embedding, the key
// packing and its bound, the fast exponential and the per-pixel mean-field update, so that the
// CPU tests exercise the GPU's arithmetic. Sums run in a fixed order everywhere (a vertex's
// pixels in increasing pixel order, a pixel's vertices by remainder), so the result does not
// depend on thread counts.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/macros.h"

namespace affext {
namespace crf {

constexpr int kGaussianDim = 2;   // (x, y)
constexpr int kBilateralDim = 5;  // (x, y, r, g, b)
constexpr float kScoreClip = 1e-5f;
constexpr float kNormEps = 1e-20f;

// The float with the bits i (a form that compilers vectorise).
AFFEXT_HOST_DEVICE float float_from_bits(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
#endif
}

// The nearest integer to x (ties to even), |x| < 2^22, without a library call: adding and
// taking away 1.5 * 2^23 leaves no fraction bits (x86's rintf is a call without SSE4.1).
AFFEXT_HOST_DEVICE float round_to_int(float x) {
  // (IEEE arithmetic as compiled here: no -ffast-math, which would fold it away.)
  const float magic = 12582912.0f;
  return (x + magic) - magic;
}

// The scale of lattice axis i (0-based) for a d-dimensional lattice.
// (The expected standard deviation of the lattice's blur, rounded to float, then the axis's
// factor in double: the same float as pydensecrf's, so that points land in the same simplex.)
AFFEXT_HOST_DEVICE float axis_scale(int d, int i) {
  const float inv_std = static_cast<float>(sqrt(2.0 / 3.0) * (d + 1));
  return static_cast<float>(1.0 / sqrt(static_cast<double>((i + 1) * (i + 2))) *
                            static_cast<double>(inv_std));
}

// Integer keys of a lattice vertex: its first d coordinates (the last one is minus their sum),
// packed into 64 bits, `bits` per coordinate, each biased by 2^(bits - 1).
struct KeyPacking {
  int bits;  // per coordinate; 0 when the keys do not fit into 64 bits
};

// The largest |coordinate| a key of a point with |f_i| <= fmax[i] can have, plus the
// neighbour step (d + 1), so that a neighbour's key never borrows across fields.
inline KeyPacking key_packing(int d, const float* fmax) {
  // elevated[j] sums the scaled features from j on and subtracts j times one of them:
  // |elevated[j]| <= sum_i (i + 1) s_i |f_i|; a vertex lies within d + 1 of it, and a
  // neighbour within d + 1 of that.
  double bound = 0;
  for (int i = 0; i < d; ++i) bound += (i + 1) * static_cast<double>(axis_scale(d, i)) * fmax[i];
  bound += 2.0 * (d + 1) + 2.0;
  int bits = 2;
  while (static_cast<double>(int64_t{1} << (bits - 1)) <= bound && bits < 63) ++bits;
  return {bits * d <= 64 ? bits : 0};
}

// Per-point embedding: the d + 1 vertex keys (packed) and barycentric weights of the simplex
// containing the scaled, elevated point f (d features).
template <int D>
AFFEXT_HOST_DEVICE void embed_point(const float* f, int bits, uint64_t* keys, float* weights) {
  constexpr int D1 = D + 1;
  float el[D1];
  // Elevation onto sum = 0: el[j] = sum_{i >= j} c_i - j c_{j-1}, c_i = s_i f_i.
  float tail = 0.f;
  for (int j = D; j > 0; --j) {
    const float c = f[j - 1] * axis_scale(D, j - 1);
    el[j] = tail - static_cast<float>(j) * c;
    tail += c;
  }
  el[0] = tail;
  // The nearest point whose coordinates are all multiples of d + 1 ("remainder 0").
  const float down = 1.0f / static_cast<float>(D1);
  float rem0[D1];
  int excess = 0;  // sum of the rounded coordinates / (d + 1): 0 on the hyperplane
  for (int i = 0; i < D1; ++i) {
    const float r = round_to_int(el[i] * down);
    rem0[i] = r * static_cast<float>(D1);
    excess += static_cast<int>(r);
  }
  // Rank of each coordinate's residual in decreasing order (ties: the lower index first).
  int rank[D1];
  for (int i = 0; i < D1; ++i) rank[i] = 0;
  // (Counted without branches: the comparisons' outcomes are as good as random.)
  for (int i = 0; i < D; ++i) {
    const float di = el[i] - rem0[i];
    for (int j = i + 1; j < D1; ++j) {
      const int lower = di < el[j] - rem0[j];
      rank[i] += lower;
      rank[j] += 1 - lower;
    }
  }
  // Bring the rounded point back onto the hyperplane by moving the extreme coordinates.
  for (int i = 0; i < D1; ++i) {
    rank[i] += excess;
    const int wrap = static_cast<int>(rank[i] < 0) - static_cast<int>(rank[i] >= D1);
    rank[i] += wrap * D1;
    rem0[i] += static_cast<float>(wrap * D1);
  }
  // Barycentric coordinates (Adams et al. 2010, §4).
  float bary[D1 + 1];
  for (int i = 0; i <= D1; ++i) bary[i] = 0.f;
  for (int i = 0; i < D1; ++i) {
    const float v = (el[i] - rem0[i]) * down;
    bary[D - rank[i]] += v;
    bary[D1 - rank[i]] -= v;
  }
  bary[0] += 1.f + bary[D1];
  // Vertex r of the simplex: rem0 + r on the coordinates ranked below d + 1 - r, r - (d + 1)
  // on the others.
  const int64_t bias = int64_t{1} << (bits - 1);
  for (int r = 0; r < D1; ++r) {
    uint64_t key = 0;
    for (int i = 0; i < D; ++i) {
      const int c = static_cast<int>(rem0[i]) + (rank[i] <= D - r ? r : r - D1);
      key |= static_cast<uint64_t>(c + bias) << (i * bits);
    }
    keys[r] = key;
    weights[r] = bary[r];
  }
}

// The key of a vertex's neighbour along lattice axis j (0..d), in direction +1 (the vertex
// plus (d + 1) e_j - (1, ..., 1)) or -1 (minus it). Only the first d coordinates are kept.
AFFEXT_HOST_DEVICE uint64_t neighbour_key(uint64_t key, int d, int bits, int j, int direction) {
  uint64_t ones = 0;
  for (int i = 0; i < d; ++i) ones += uint64_t{1} << (i * bits);
  const uint64_t step_j = j < d ? (uint64_t{1} << (j * bits)) * static_cast<uint64_t>(d + 1) : 0;
  // +1: key - ones + (d + 1) e_j; -1: key + ones - (d + 1) e_j (unsigned wrap-around is exact
  // since every field stays inside its range by the packing bound).
  return direction > 0 ? key - ones + step_j : key + ones - step_j;
}

AFFEXT_HOST_DEVICE float slice_alpha(int d) { return 1.0f / (1.0f + ldexpf(1.0f, -d)); }

// The bits of the float f.
AFFEXT_HOST_DEVICE uint32_t bits_from_float(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
#endif
}

// max(x, -87) for x <= 0, as an integer min of the bits: with the sign bit set (which leaves
// x <= 0 as it is but for +0, which becomes -0), a float's bits read as a signed integer grow
// with its magnitude. (Written with a float comparison, or as an unsigned select, the clamped
// branch folds to a constant and compilers then keep a branch in loops that would otherwise
// run in vector lanes.) A NaN would become -87; none arrives here, since the unary's clip
// turns a NaN score into 1e-5.
AFFEXT_HOST_DEVICE float clamp_below_87(float x) {
  constexpr int32_t kMinus87 = static_cast<int32_t>(0xC2AE0000u);
  const int32_t i = static_cast<int32_t>(bits_from_float(x) | 0x80000000u);
  return float_from_bits(i < kMinus87 ? i : kMinus87);
}

// exp(x) for x <= 0 (arguments of a max-subtracted softmax), relative error ~2e-7, and 0
// below -87. A fixed sequence of float operations, so every path gives the same bits for a
// given compiler's contraction of a * b + c.
AFFEXT_HOST_DEVICE float exp_nonpositive(float x) {
  x = clamp_below_87(x);
  const float n = round_to_int(x * 1.44269504088896341f);
  // x - n ln 2 in two parts (Cody-Waite), exact enough for |n| <= 126
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // times 2^n through the exponent bits (n in [-126, 0])
  return p * float_from_bits((static_cast<int32_t>(n) + 127) << 23);
}

// q[l] = softmax_l(e[l]) over the n labels of one stack of one pixel: the mean-field update,
// with e = -U + w_g K_g Q + w_b K_b Q already summed by the caller.
AFFEXT_HOST_DEVICE void softmax_pixel(const float* e, int n, float* q) {
  float top = -INFINITY;
  for (int l = 0; l < n; ++l) top = e[l] > top ? e[l] : top;
  float sum = 0.f;
  for (int l = 0; l < n; ++l) {
    const float x = exp_nonpositive(e[l] - top);
    q[l] = x;
    sum += x;
  }
  for (int l = 0; l < n; ++l) q[l] = q[l] / sum;
}

// The first marginals, softmax(-U), and -U = log(clip(score, 1e-5, 1)) itself (pydensecrf's
// unary_from_softmax clips to [1e-5, 1]).
AFFEXT_HOST_DEVICE void unary_pixel(const float* score, int n, int64_t stride, float* logp,
                                    float* q) {
  float top = -INFINITY;
  for (int l = 0; l < n; ++l) {
    const float s = score[l * stride];
    const float lp = logf(s > kScoreClip ? (s < 1.0f ? s : 1.0f) : kScoreClip);
    logp[l * stride] = lp;
    top = lp > top ? lp : top;
  }
  float sum = 0.f;
  for (int l = 0; l < n; ++l) {
    const float e = exp_nonpositive(logp[l * stride] - top);
    q[l * stride] = e;
    sum += e;
  }
  for (int l = 0; l < n; ++l) q[l * stride] = q[l * stride] / sum;
}

// Features of pixel (x, y) for the two terms.
AFFEXT_HOST_DEVICE void gaussian_features(int x, int y, float sxy, float* f) {
  f[0] = static_cast<float>(x) / sxy;
  f[1] = static_cast<float>(y) / sxy;
}
AFFEXT_HOST_DEVICE void bilateral_features(int x, int y, const uint8_t* rgb, float sxy, float srgb,
                                           float* f) {
  f[0] = static_cast<float>(x) / sxy;
  f[1] = static_cast<float>(y) / sxy;
  f[2] = static_cast<float>(rgb[0]) / srgb;
  f[3] = static_cast<float>(rgb[1]) / srgb;
  f[4] = static_cast<float>(rgb[2]) / srgb;
}

}  // namespace crf
}  // namespace affext
