// Argument checks shared by the CPU and CUDA launchers of the pairwise affinity.
#include <vector>

#include "affinity/affinity.h"
#include "common/checks.h"

namespace affext {

void check_affinity_args(const at::Tensor& feat, int64_t radius) {
  check_dim("feat", feat, 4, "(B, C, H, W)");
  check_floating("feat", feat);
  check_radius(radius);
  TORCH_CHECK_VALUE(feat.size(1) > 0, "feat must have at least one channel, got ", feat.sizes());
  check_map_size("feat", feat.size(2), feat.size(3), radius);
}

BackwardArgs prepare_backward_args(const at::Tensor& grad, const at::Tensor& feat,
                                   const at::Tensor& aff, int64_t radius) {
  check_affinity_args(feat, radius);
  check_same_device("grad", grad, "feat", feat);
  check_same_device("aff", aff, "feat", feat);
  Offsets o = offsets_for(radius);
  const std::vector<int64_t> aff_shape{feat.size(0), o.count, feat.size(2), feat.size(3)};
  TORCH_CHECK_VALUE(grad.sizes() == aff_shape && aff.sizes() == aff_shape,
                    "grad and aff must have shape (B, K, H, W) = ", aff_shape, ", got ",
                    grad.sizes(), " and ", aff.sizes());
  const auto dtype = feat.scalar_type();
  return {grad.to(dtype).contiguous(), feat.contiguous(), aff.to(dtype).contiguous(), o};
}

}  // namespace affext
