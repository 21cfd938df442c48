// Pairwise L1 affinity over the half-disk (docs/method.md §3):
//   aff[b, k, y, x] = exp(-mean_c |feat[b, c, y, x] - feat[b, c, y + dy_k, x + dx_k]|),
//   0 where the neighbour lies outside the map.
// The per-element math below is shared by the CPU and the CUDA kernels.
#pragma once

#include "common/macros.h"
#include "common/neighborhood.h"
#include "common/scalar_math.h"
#include "common/stable.h"

namespace affext {

// Affinity from the channel sum of absolute differences.
template <typename acc_t>
AFFEXT_HOST_DEVICE acc_t affinity_from_l1(acc_t l1_sum, acc_t inv_channels) {
  return exp_acc(-l1_sum * inv_channels);
}

// One channel's term of the L1 distance between two pixels.
template <typename acc_t>
AFFEXT_HOST_DEVICE acc_t l1_term(acc_t a, acc_t b) {
  return abs_acc(a - b);
}

// d|a - b| / da with psa's (autograd's) convention sign(0) = 0 (and 0 for NaN); both forms
// give +1, -1 or +0 for the same inputs. On the GPU two selects, rather than
// (a > b) - (a < b), which costs an integer-to-float conversion there; on the CPU the
// branch-free difference, since the nested select is control flow that stops the compiler
// from vectorising the backward's loops (measured: about 8x slower).
template <typename T>
AFFEXT_HOST_DEVICE T sign_of_difference(T a, T b) {
#ifdef __CUDA_ARCH__
  return a > b ? T(1) : (a < b ? T(-1) : T(0));
#else
  return T(a > b) - T(a < b);
#endif
}

// Weight of a pair in the backward pass: w = grad * aff / C, so that
// d loss / d l1_sum = -w (the affinity is exp(-l1_sum / C)).
template <typename acc_t>
AFFEXT_HOST_DEVICE acc_t pair_weight(acc_t grad, acc_t aff, acc_t inv_channels) {
  return grad * aff * inv_channels;
}

// A pair's term of grad_feat at its pixel p with neighbour q: d loss / d f_p through
// |f_p - f_q|, the same expression whether p is the first or the second pixel of the pair.
template <typename acc_t>
AFFEXT_HOST_DEVICE acc_t grad_term(acc_t weight, acc_t fp, acc_t fq) {
  return -weight * sign_of_difference(fp, fq);
}

Tensor pairwise_affinity_cpu(const Tensor& feat, int64_t radius);
Tensor pairwise_affinity_backward_cpu(const Tensor& grad, const Tensor& feat, const Tensor& aff,
                                      int64_t radius);
#ifdef AFFEXT_WITH_CUDA
Tensor pairwise_affinity_cuda(const Tensor& feat, int64_t radius);
Tensor pairwise_affinity_backward_cuda(const Tensor& grad, const Tensor& feat, const Tensor& aff,
                                       int64_t radius);
#endif

// Shared argument checks of the forward and backward launchers (affinity_args.cpp).
void check_affinity_args(const Tensor& feat, int64_t radius);

// The backward's inputs, checked, contiguous and in feat's dtype.
struct BackwardArgs {
  Tensor grad, feat, aff;
  Offsets offsets;
};
BackwardArgs prepare_backward_args(const Tensor& grad, const Tensor& feat, const Tensor& aff,
                                   int64_t radius);

}  // namespace affext
