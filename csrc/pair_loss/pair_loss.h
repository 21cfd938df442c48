// Class-balanced pair loss of AffinityNet (method.md section 4), computed from the label map:
// every pair (p, p + o_k) of the region is classified from its two labels and its affinity
// contributes to the sum of its class. The kernels return six numbers, the "stats":
//   [bg_sum, fg_sum, neg_sum, bg_count, fg_count, neg_count]
// with bg_sum = sum over bg_pos pairs of -log(a + 1e-5), fg_sum likewise and
// neg_sum = sum over neg pairs of -log(1 + 1e-5 - a). The division by the counts and the
// weights 1/4, 1/4, 1/2 are applied once, in affext/ops/pair_loss.py.
// The per-element math below is shared by the CPU and the CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "common/macros.h"
#include "common/neighborhood.h"
#include "common/scalar_math.h"

namespace affext {

// Pair classes; the first three are also the slots of the stats (sums, then counts).
enum PairClass : int { kPairBg = 0, kPairFg = 1, kPairNeg = 2, kPairNone = 3 };
enum : int { kPairStats = 6, kIgnoreLabel = 255 };

// Section 4: bg_pos if both labels are 0, fg_pos if equal and a class, neg if different;
// a pair touching an ignored pixel (255) belongs to no class.
AFFEXT_HOST_DEVICE int pair_class(uint8_t li, uint8_t lj) {
  if (li == kIgnoreLabel || lj == kIgnoreLabel) return kPairNone;
  if (li != lj) return kPairNeg;
  return li == 0 ? kPairBg : kPairFg;
}

// psa's 1e-5 terms, rounded to acc_t as psa's float32 tensor arithmetic rounds them:
// log(a + 1e-5) and log((1 + 1e-5) - a), the constant 1 + 1e-5 formed in double first.
template <typename acc_t>
AFFEXT_HOST_DEVICE acc_t pos_argument(acc_t a) {
  return a + static_cast<acc_t>(1e-5);
}
template <typename acc_t>
AFFEXT_HOST_DEVICE acc_t neg_argument(acc_t a) {
  return static_cast<acc_t>(1.0 + 1e-5) - a;
}

// A pair's summand in the sum of its class (section 4), >= 0 for a in [0, 1].
template <typename acc_t>
AFFEXT_HOST_DEVICE acc_t pair_term(int cls, acc_t a) {
  return cls == kPairNeg ? -log_acc(neg_argument(a)) : -log_acc(pos_argument(a));
}

// d pair_term / d a.
template <typename acc_t>
AFFEXT_HOST_DEVICE acc_t pair_term_grad(int cls, acc_t a) {
  return cls == kPairNeg ? acc_t(1) / neg_argument(a) : acc_t(-1) / pos_argument(a);
}

// Class of the pair (b, k, y, x): kPairNone when it lies outside the region. labels points
// at image b's (H, W) uint8 map.
AFFEXT_HOST_DEVICE int pair_class_at(const uint8_t* labels, int y, int x, int dy, int dx, int H,
                                     int W, int radius, int region) {
  if (!pair_in_region(y, x, dy, dx, H, W, radius, region)) return kPairNone;
  return pair_class(labels[y * W + x], labels[(y + dy) * W + x + dx]);
}

at::Tensor pair_loss_cpu(const at::Tensor& aff, const at::Tensor& labels, int64_t radius,
                         int64_t region);
at::Tensor pair_loss_backward_cpu(const at::Tensor& grad_stats, const at::Tensor& aff,
                                  const at::Tensor& labels, int64_t radius, int64_t region);
at::Tensor pair_classes_cpu(const at::Tensor& labels, int64_t radius, int64_t region);
#ifdef AFFEXT_WITH_CUDA
at::Tensor pair_loss_cuda(const at::Tensor& aff, const at::Tensor& labels, int64_t radius,
                          int64_t region);
at::Tensor pair_loss_backward_cuda(const at::Tensor& grad_stats, const at::Tensor& aff,
                                   const at::Tensor& labels, int64_t radius, int64_t region);
at::Tensor pair_classes_cuda(const at::Tensor& labels, int64_t radius, int64_t region);
#endif

// Shared argument checks of the launchers (pair_loss_args.cpp).
struct PairLossArgs {
  at::Tensor aff;     // (B, K, H, W), contiguous
  at::Tensor labels;  // (B, H, W), uint8, contiguous
  Offsets offsets;
};
// Checks aff against labels, radius and region; labels as uint8 (see prepare_labels).
PairLossArgs prepare_pair_loss_args(const at::Tensor& aff, const at::Tensor& labels, int64_t radius,
                                    int64_t region);
// Checks an integer (B, H, W) label map with values in 0..255 and returns it as contiguous
// uint8. Other integer dtypes are range-checked (a device sync on CUDA) and converted once.
at::Tensor prepare_labels(const at::Tensor& labels, int64_t radius, int64_t region);
// The (6,) float64 gradient of the stats, contiguous, on device.
at::Tensor prepare_grad_stats(const at::Tensor& grad_stats, const at::Device& device);

}  // namespace affext
