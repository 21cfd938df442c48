// Argument checks shared by the CPU and CUDA launchers of the pair loss.
#include "common/stable.h"

#include <tuple>
#include <utility>

#include "pair_loss/pair_loss.h"

namespace affext {

namespace {

void check_region(int64_t region) {
  AFFEXT_CHECK(region == kRegionPsa || region == kRegionFull,
               "region must be 0 (psa) or 1 (full), got ", region);
}

}  // namespace

Tensor prepare_labels(const Tensor& labels, int64_t radius, int64_t region) {
  check_dim("labels", labels, 3, "(B, H, W)");
  AFFEXT_CHECK(is_integer(labels.scalar_type()),
               "labels must be an integer tensor (uint8, int32 or int64: 0 background, "
               "1..254 classes, 255 ignored), got ",
               labels.scalar_type());
  check_radius(radius);
  check_region(region);
  // psa's from-region must hold a pixel; the full region has pairs on any map.
  if (region == kRegionPsa) check_map_size("labels", labels.size(1), labels.size(2), radius);
  if (labels.scalar_type() == ScalarType::Byte) return torch::stable::contiguous(labels);
  if (labels.numel() > 0) {
    const auto [lo, hi] = aminmax(labels);
    const int64_t min = item<int64_t>(lo), max = item<int64_t>(hi);
    AFFEXT_CHECK(min >= 0 && max <= kIgnoreLabel,
                 "labels must lie in 0..255 (0 background, 1..254 classes, 255 ignored), "
                 "got values in [",
                 min, ", ", max, "]");
  }
  return torch::stable::contiguous(torch::stable::to(labels, ScalarType::Byte));
}

PairLossArgs prepare_pair_loss_args(const Tensor& aff, const Tensor& labels, int64_t radius,
                                    int64_t region) {
  check_dim("aff", aff, 4, "(B, K, H, W)");
  check_floating("aff", aff);
  check_same_device("labels", labels, "aff", aff);
  Tensor labels_u8 = prepare_labels(labels, radius, region);
  Offsets o = offsets_for(radius);
  AFFEXT_CHECK(aff.size(1) == o.count, "aff has ", aff.size(1), " offsets but radius ", radius,
               " has K = ", o.count);
  AFFEXT_CHECK(aff.size(0) == labels.size(0) && aff.size(2) == labels.size(1) &&
                   aff.size(3) == labels.size(2),
               "aff (B, K, H, W) = ", sizes_of(aff), " and labels (B, H, W) = ", sizes_of(labels),
               " must agree in B, H and W");
  return {torch::stable::contiguous(aff), std::move(labels_u8), o};
}

PairLossOutputs make_pair_loss_outputs(const Tensor& aff) {
  const auto part = [&] { return torch::stable::new_empty(aff, {}); };
  return {part(), part(), part(), part(), torch::stable::new_empty(aff, {3}, ScalarType::Long)};
}

PairLossGrads prepare_pair_loss_grads(const std::optional<Tensor>& grad_loss,
                                      const std::optional<Tensor>& grad_bg_loss,
                                      const std::optional<Tensor>& grad_fg_loss,
                                      const std::optional<Tensor>& grad_neg_loss,
                                      const Tensor& counts, const Tensor& aff) {
  static const char* const names[kLossParts] = {"grad_loss", "grad_bg_loss", "grad_fg_loss",
                                                "grad_neg_loss"};
  const std::optional<Tensor>* grads[kLossParts] = {&grad_loss, &grad_bg_loss, &grad_fg_loss,
                                                    &grad_neg_loss};
  PairLossGrads out;
  for (int i = 0; i < kLossParts; ++i) {
    if (!grads[i]->has_value() || !(*grads[i])->defined()) continue;
    const Tensor& g = **grads[i];
    AFFEXT_CHECK(g.dim() == 0, names[i], " must be a 0-dim tensor, got shape ", sizes_of(g));
    check_floating(names[i], g);
    check_same_device(names[i], g, "aff", aff);
    out.parts[i] = to_dtype(g, aff.scalar_type());
  }
  AFFEXT_CHECK(counts.dim() == 1 && counts.size(0) == 3 && counts.scalar_type() == ScalarType::Long,
               "counts must be the forward's (3,) int64 pair counts, got ", counts.scalar_type(),
               " of shape ", sizes_of(counts));
  check_same_device("counts", counts, "aff", aff);
  out.counts = torch::stable::contiguous(counts);
  return out;
}

}  // namespace affext
