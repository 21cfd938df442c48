// Argument checks shared by the CPU and CUDA launchers of the random walk.
#include "common/stable.h"

#include "random_walk/random_walk.h"

namespace affext {

void check_random_walk_args(const Tensor& cam, const Tensor& aff, double beta, int64_t iterations,
                            int64_t radius, int64_t region) {
  check_dim("cam", cam, 4, "(B, C, H, W)");
  check_dim("aff", aff, 4, "(B, K, H, W)");
  check_floating("cam", cam);
  check_floating("aff", aff);
  check_same_device("cam", cam, "aff", aff);
  check_radius(radius);
  AFFEXT_CHECK(region == kRegionPsa || region == kRegionFull,
               "region must be 0 (psa) or 1 (full), got ", region);
  AFFEXT_CHECK(beta > 0, "beta must be > 0, got ", beta);
  AFFEXT_CHECK(iterations >= 1, "iterations must be >= 1, got ", iterations);
  const int K = make_offsets(static_cast<int>(radius)).count;
  AFFEXT_CHECK(aff.size(1) == K, "aff has ", aff.size(1), " offsets but radius ", radius,
               " has K = ", K);
  AFFEXT_CHECK(
      cam.size(0) == aff.size(0) && cam.size(2) == aff.size(2) && cam.size(3) == aff.size(3),
      "cam ", sizes_of(cam), " and aff ", sizes_of(aff),
      " must agree in batch and map size (B, ., H, W)");
  // psa's region needs a from-pixel; the full region works on any map (IRN's walk uses it).
  if (region == kRegionPsa) check_map_size("aff", aff.size(2), aff.size(3), radius);
}

void throw_walk_value_flags(int flags) {  // affext.random_walk raises them as ValueError
  AFFEXT_CHECK(!(flags & kAffNonFinite), "aff contains NaN or infinite values");
  AFFEXT_CHECK(!(flags & kAffNegative),
               "aff contains negative affinities; they must lie in [0, 1]");
  AFFEXT_CHECK(!(flags & kAffAboveOne), "aff contains affinities above 1; they must lie in [0, 1]");
  AFFEXT_CHECK(!(flags & kCamNonFinite), "cam contains NaN or infinite values");
}

}  // namespace affext
