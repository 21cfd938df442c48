// Class-balanced pair loss of AffinityNet (docs/method.md §4), computed from the label map:
// every pair (p, p + o_k) of the region is classified from its two labels and its affinity
// contributes to the sum of its class. The kernels first gather six numbers, the "stats":
//   [bg_sum, fg_sum, neg_sum, bg_count, fg_count, neg_count]
// with bg_sum = sum over bg_pos pairs of -log(a + 1e-5), fg_sum likewise and
// neg_sum = sum over neg pairs of -log(1 + 1e-5 - a), in float64; then the class losses
// L_c = sum_c / (count_c + 1e-5) and L = L_bg/4 + L_fg/4 + L_neg/2 (pair_loss_parts), all
// inside the op, so that a training step launches no further kernels for the loss.
// The per-element math below is shared by the CPU and the CUDA kernels.
#pragma once

#include <cstdint>
#include <optional>
#include <tuple>

#include "common/macros.h"
#include "common/neighborhood.h"
#include "common/scalar_math.h"
#include "common/stable.h"

namespace affext {

// Pair classes; the first three are also the slots of the stats (sums, then counts).
enum PairClass : int { kPairBg = 0, kPairFg = 1, kPairNeg = 2, kPairNone = 3 };
enum : int { kPairStats = 6, kIgnoreLabel = 255 };
// The op's loss outputs, in the order of the schema (csrc/affext.cpp).
enum LossPart : int { kPartLoss = 0, kPartBg = 1, kPartFg = 2, kPartNeg = 3, kLossParts = 4 };
// psa's 1e-5 in the denominators of section 4.
constexpr double kCountEps = 1e-5;

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

// Section 4's weight of a class loss in the total: L = L_bg/4 + L_fg/4 + L_neg/2.
AFFEXT_HOST_DEVICE double class_weight(int cls) { return cls == kPairNeg ? 0.5 : 0.25; }

// The loss and the three class losses from the stats; a class without pairs gives 0.
AFFEXT_HOST_DEVICE void pair_loss_parts(const double* stats, double* parts) {
  parts[kPartLoss] = 0;
  for (int c = 0; c < 3; ++c) {
    parts[kPartBg + c] = stats[c] / (stats[3 + c] + kCountEps);
    parts[kPartLoss] += class_weight(c) * parts[kPartBg + c];
  }
}

// d objective / d sum_c from the gradients of the total loss and of the class loss L_c.
AFFEXT_HOST_DEVICE double class_sum_grad(int cls, double grad_loss, double grad_class_loss,
                                         double count) {
  return (grad_class_loss + class_weight(cls) * grad_loss) / (count + kCountEps);
}

// Class of the pair (b, k, y, x): kPairNone when it lies outside the region. labels points
// at image b's (H, W) uint8 map.
AFFEXT_HOST_DEVICE int pair_class_at(const uint8_t* labels, int y, int x, int dy, int dx, int H,
                                     int W, int radius, int region) {
  if (!pair_in_region(y, x, dy, dx, H, W, radius, region)) return kPairNone;
  return pair_class(labels[y * W + x], labels[(y + dy) * W + x + dx]);
}

// The forward's outputs: the loss and its three parts as 0-dim tensors in aff's dtype, and
// the (3,) int64 counts [bg, fg, neg].
using PairLossOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

PairLossOutputs pair_loss_cpu(const Tensor& aff, const Tensor& labels, int64_t radius,
                              int64_t region);
Tensor pair_loss_backward_cpu(const std::optional<Tensor>& grad_loss,
                              const std::optional<Tensor>& grad_bg_loss,
                              const std::optional<Tensor>& grad_fg_loss,
                              const std::optional<Tensor>& grad_neg_loss, const Tensor& counts,
                              const Tensor& aff, const Tensor& labels, int64_t radius,
                              int64_t region);
Tensor pair_classes_cpu(const Tensor& labels, int64_t radius, int64_t region);
#ifdef AFFEXT_WITH_CUDA
PairLossOutputs pair_loss_cuda(const Tensor& aff, const Tensor& labels, int64_t radius,
                               int64_t region);
Tensor pair_loss_backward_cuda(const std::optional<Tensor>& grad_loss,
                               const std::optional<Tensor>& grad_bg_loss,
                               const std::optional<Tensor>& grad_fg_loss,
                               const std::optional<Tensor>& grad_neg_loss, const Tensor& counts,
                               const Tensor& aff, const Tensor& labels, int64_t radius,
                               int64_t region);
Tensor pair_classes_cuda(const Tensor& labels, int64_t radius, int64_t region);
#endif

// Shared argument checks of the launchers (pair_loss_args.cpp).
struct PairLossArgs {
  Tensor aff;     // (B, K, H, W), contiguous
  Tensor labels;  // (B, H, W), uint8, contiguous
  Offsets offsets;
};
// Checks aff against labels, radius and region; labels as uint8 (see prepare_labels).
PairLossArgs prepare_pair_loss_args(const Tensor& aff, const Tensor& labels, int64_t radius,
                                    int64_t region);
// Checks an integer (B, H, W) label map with values in 0..255 and returns it as contiguous
// uint8. Other integer dtypes are range-checked (a device sync on CUDA) and converted once.
Tensor prepare_labels(const Tensor& labels, int64_t radius, int64_t region);
// The forward's outputs allocated for aff (loss parts in its dtype, counts int64).
PairLossOutputs make_pair_loss_outputs(const Tensor& aff);

// The backward's gradients of the four loss outputs: each None (no gradient) or a 0-dim
// floating tensor on aff's device, returned in aff's dtype (undefined for None); and the
// (3,) int64 counts of the forward, checked.
struct PairLossGrads {
  Tensor parts[kLossParts];
  Tensor counts;
};
PairLossGrads prepare_pair_loss_grads(const std::optional<Tensor>& grad_loss,
                                      const std::optional<Tensor>& grad_bg_loss,
                                      const std::optional<Tensor>& grad_fg_loss,
                                      const std::optional<Tensor>& grad_neg_loss,
                                      const Tensor& counts, const Tensor& aff);

}  // namespace affext
