// Sparse random walk (method.md section 5) as a fixed-neighbourhood stencil.
//
// psa's transition T = A^beta D^-1 (A symmetric, unit diagonal, D its column sums) has, in
// column q, the entries of q itself, of q + o_k (pair (q, k)) and of q - o_k (pair (q - o_k, k)).
// One step v' = v T is therefore, per pixel q,
//   v'[q] = sum_j tap[q, j] * v[q + s_j],   s_0 = 0, s_k = o_k, s_{K+k} = -o_k,
// with tap[q, j] = A^beta[q + s_j, q] / d_q. The taps are built once; each of the t steps is
// then a stencil with 2K + 1 taps. The per-element math below is shared by CPU and CUDA.
#pragma once

#include <ATen/ATen.h>

#include "common/macros.h"
#include "common/neighborhood.h"
#include "common/scalar_math.h"

namespace affext {

// A^beta of one pair (psa raises the affinity matrix element-wise to beta).
template <typename acc_t>
AFFEXT_HOST_DEVICE acc_t walk_pair_weight(acc_t aff, acc_t beta) {
  return pow_acc(aff, beta);
}

// The 2K + 1 unnormalised taps of pixel (y, x) and their sum d_q (the column sum of A^beta).
// aff points at aff[b], (K, H, W) contiguous; taps[j * stride] receives tap j.
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

// Checks shared by the CPU and CUDA launchers (random_walk_args.cpp).
void check_random_walk_args(const at::Tensor& cam, const at::Tensor& aff, double beta,
                            int64_t iterations, int64_t radius, int64_t region);

at::Tensor random_walk_cpu(const at::Tensor& cam, const at::Tensor& aff, double beta,
                           int64_t iterations, int64_t radius, int64_t region);
#ifdef AFFEXT_WITH_CUDA
at::Tensor random_walk_cuda(const at::Tensor& cam, const at::Tensor& aff, double beta,
                            int64_t iterations, int64_t radius, int64_t region);
#endif

}  // namespace affext
