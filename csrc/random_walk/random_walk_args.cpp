// Argument checks shared by the CPU and CUDA launchers of the random walk.
#include "common/checks.h"
#include "random_walk/random_walk.h"

namespace affext {

void check_random_walk_args(const at::Tensor& cam, const at::Tensor& aff, double beta,
                            int64_t iterations, int64_t radius, int64_t region) {
  check_dim("cam", cam, 4, "(B, C, H, W)");
  check_dim("aff", aff, 4, "(B, K, H, W)");
  check_floating("cam", cam);
  check_floating("aff", aff);
  check_same_device("cam", cam, "aff", aff);
  check_radius(radius);
  TORCH_CHECK_VALUE(region == kRegionPsa || region == kRegionFull,
                    "region must be 0 (psa) or 1 (full), got ", region);
  TORCH_CHECK_VALUE(beta > 0, "beta must be > 0, got ", beta);
  TORCH_CHECK_VALUE(iterations >= 1, "iterations must be >= 1, got ", iterations);
  const int K = make_offsets(static_cast<int>(radius)).count;
  TORCH_CHECK_VALUE(aff.size(1) == K, "aff has ", aff.size(1), " offsets but radius ", radius,
                    " has K = ", K);
  TORCH_CHECK_VALUE(
      cam.size(0) == aff.size(0) && cam.size(2) == aff.size(2) && cam.size(3) == aff.size(3),
      "cam ", cam.sizes(), " and aff ", aff.sizes(),
      " must agree in batch and map size (B, ., H, W)");
  check_map_size("aff", aff.size(2), aff.size(3), radius);
  if (aff.numel() > 0) {
    TORCH_CHECK_VALUE(!at::isnan(aff).any().item<bool>(), "aff contains NaN");
    TORCH_CHECK_VALUE(!(aff < 0).any().item<bool>(), "aff contains negative affinities");
  }
  if (cam.numel() > 0) TORCH_CHECK_VALUE(!at::isnan(cam).any().item<bool>(), "cam contains NaN");
}

}  // namespace affext
