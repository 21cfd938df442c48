// Argument checks shared by the CPU and CUDA launchers of the pair loss.
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "pair_loss/pair_loss.h"

namespace affext {

namespace {

void check_region(int64_t region) {
  TORCH_CHECK_VALUE(region == kRegionPsa || region == kRegionFull,
                    "region must be 0 (psa) or 1 (full), got ", region);
}

}  // namespace

at::Tensor prepare_labels(const at::Tensor& labels, int64_t radius, int64_t region) {
  check_dim("labels", labels, 3, "(B, H, W)");
  TORCH_CHECK_TYPE(at::isIntegralType(labels.scalar_type(), /*includeBool=*/false),
                   "labels must be an integer tensor (uint8, int32 or int64: 0 background, "
                   "1..254 classes, 255 ignored), got ",
                   labels.scalar_type());
  check_radius(radius);
  check_region(region);
  // psa's from-region must hold a pixel; the full region has pairs on any map.
  if (region == kRegionPsa) check_map_size("labels", labels.size(1), labels.size(2), radius);
  if (labels.scalar_type() == at::kByte) return labels.contiguous();
  if (labels.numel() > 0) {
    const auto [lo, hi] = at::aminmax(labels);
    const int64_t min = lo.item<int64_t>(), max = hi.item<int64_t>();
    TORCH_CHECK_VALUE(min >= 0 && max <= kIgnoreLabel,
                      "labels must lie in 0..255 (0 background, 1..254 classes, 255 ignored), "
                      "got values in [",
                      min, ", ", max, "]");
  }
  return labels.to(at::kByte).contiguous();
}

PairLossArgs prepare_pair_loss_args(const at::Tensor& aff, const at::Tensor& labels, int64_t radius,
                                    int64_t region) {
  check_dim("aff", aff, 4, "(B, K, H, W)");
  check_floating("aff", aff);
  check_same_device("labels", labels, "aff", aff);
  at::Tensor labels_u8 = prepare_labels(labels, radius, region);
  Offsets o = offsets_for(radius);
  TORCH_CHECK_VALUE(aff.size(1) == o.count, "aff has ", aff.size(1), " offsets but radius ", radius,
                    " has K = ", o.count);
  TORCH_CHECK_VALUE(aff.size(0) == labels.size(0) && aff.size(2) == labels.size(1) &&
                        aff.size(3) == labels.size(2),
                    "aff (B, K, H, W) = ", aff.sizes(), " and labels (B, H, W) = ", labels.sizes(),
                    " must agree in B, H and W");
  return {aff.contiguous(), std::move(labels_u8), o};
}

PairLossOutputs make_pair_loss_outputs(const at::Tensor& aff) {
  const auto part = [&] { return at::empty({}, aff.options()); };
  return {part(), part(), part(), part(), at::empty({3}, aff.options().dtype(at::kLong))};
}

PairLossGrads prepare_pair_loss_grads(const std::optional<at::Tensor>& grad_loss,
                                      const std::optional<at::Tensor>& grad_bg_loss,
                                      const std::optional<at::Tensor>& grad_fg_loss,
                                      const std::optional<at::Tensor>& grad_neg_loss,
                                      const at::Tensor& counts, const at::Tensor& aff) {
  static const char* const names[kLossParts] = {"grad_loss", "grad_bg_loss", "grad_fg_loss",
                                                "grad_neg_loss"};
  const std::optional<at::Tensor>* grads[kLossParts] = {&grad_loss, &grad_bg_loss, &grad_fg_loss,
                                                        &grad_neg_loss};
  PairLossGrads out;
  for (int i = 0; i < kLossParts; ++i) {
    if (!grads[i]->has_value() || !(*grads[i])->defined()) continue;
    const at::Tensor& g = **grads[i];
    TORCH_CHECK_VALUE(g.dim() == 0, names[i], " must be a 0-dim tensor, got shape ", g.sizes());
    check_floating(names[i], g);
    check_same_device(names[i], g, "aff", aff);
    out.parts[i] = g.to(aff.scalar_type());
  }
  TORCH_CHECK_VALUE(counts.dim() == 1 && counts.size(0) == 3 && counts.scalar_type() == at::kLong,
                    "counts must be the forward's (3,) int64 pair counts, got ",
                    counts.scalar_type(), " of shape ", counts.sizes());
  check_same_device("counts", counts, "aff", aff);
  out.counts = counts.contiguous();
  return out;
}

}  // namespace affext
