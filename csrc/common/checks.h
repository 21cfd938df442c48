// Argument checks shared by the op launchers; every message names the argument.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/neighborhood.h"

namespace affext {

inline void check_radius(int64_t radius) {
  TORCH_CHECK_VALUE(radius >= kMinRadius && radius <= kMaxRadius, "radius must be in [", kMinRadius,
                    ", ", kMaxRadius, "], got ", radius);
}

// The map must hold at least one pixel of psa's from-region: H >= r, W >= 2r - 1.
inline void check_map_size(const char* name, int64_t H, int64_t W, int64_t radius) {
  TORCH_CHECK_VALUE(H >= radius && W >= 2 * radius - 1, name, " is ", H, "x", W, " but radius ",
                    radius, " needs a map of at least ", radius, "x", 2 * radius - 1);
}

inline void check_floating(const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name,
                   " must be a floating-point tensor, got ", t.scalar_type());
}

inline void check_same_device(const char* a_name, const at::Tensor& a, const char* b_name,
                              const at::Tensor& b) {
  TORCH_CHECK_VALUE(a.device() == b.device(), a_name, " is on ", a.device(), " but ", b_name,
                    " is on ", b.device());
}

inline void check_dim(const char* name, const at::Tensor& t, int64_t dim, const char* shape) {
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must have shape ", shape, ", got ", t.sizes());
}

inline Offsets offsets_for(int64_t radius) {
  check_radius(radius);
  Offsets o = make_offsets(static_cast<int>(radius));
  TORCH_INTERNAL_ASSERT(o.count <= kMaxOffsets);
  return o;
}

}  // namespace affext
