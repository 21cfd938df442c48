// Argument checks shared by the CPU and CUDA launchers of the pairwise affinity.
#include "common/stable.h"

#include "affinity/affinity.h"

namespace affext {

void check_affinity_args(const Tensor& feat, int64_t radius) {
  check_dim("feat", feat, 4, "(B, C, H, W)");
  check_floating("feat", feat);
  check_radius(radius);
  AFFEXT_CHECK(feat.size(1) > 0, "feat must have at least one channel, got ", sizes_of(feat));
  check_map_size("feat", feat.size(2), feat.size(3), radius);
}

BackwardArgs prepare_backward_args(const Tensor& grad, const Tensor& feat, const Tensor& aff,
                                   int64_t radius) {
  check_affinity_args(feat, radius);
  check_same_device("grad", grad, "feat", feat);
  check_same_device("aff", aff, "feat", feat);
  Offsets o = offsets_for(radius);
  const Sizes aff_shape{{feat.size(0), o.count, feat.size(2), feat.size(3)}};
  AFFEXT_CHECK(
      sizes_of(grad).values == aff_shape.values && sizes_of(aff).values == aff_shape.values,
      "grad and aff must have shape (B, K, H, W) = ", aff_shape, ", got ", sizes_of(grad), " and ",
      sizes_of(aff));
  const ScalarType dtype = feat.scalar_type();
  return {torch::stable::contiguous(to_dtype(grad, dtype)), torch::stable::contiguous(feat),
          torch::stable::contiguous(to_dtype(aff, dtype)), o};
}

}  // namespace affext
