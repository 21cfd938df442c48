// Argument checks shared by the CPU and CUDA launchers of the dense CRF.
#include "common/stable.h"

#include <cmath>

#include "dense_crf/dense_crf_args.h"

namespace affext {

void check_dense_crf_args(const Tensor& image, const Tensor& scores, int64_t iterations,
                          double gaussian_sxy, double gaussian_compat, double bilateral_sxy,
                          double bilateral_srgb, double bilateral_compat) {
  check_dim("image", image, 4, "(B, H, W, 3) or (1, H, W, 3)");
  check_dim("scores", scores, 4, "(B, n, H, W)");
  AFFEXT_CHECK(image.scalar_type() == ScalarType::Byte, "image must be a uint8 RGB tensor, got ",
               image.scalar_type());
  check_floating("scores", scores);
  check_same_device("image", image, "scores", scores);
  AFFEXT_CHECK(image.size(3) == 3, "image must have 3 colour channels (RGB) last, got shape ",
               sizes_of(image));
  AFFEXT_CHECK(image.size(0) == scores.size(0) || image.size(0) == 1, "image has ", image.size(0),
               " images but scores has ", scores.size(0),
               " stacks: give one image per stack, or one image for all of them");
  AFFEXT_CHECK(image.size(1) == scores.size(2) && image.size(2) == scores.size(3), "image is ",
               image.size(1), "x", image.size(2), " but scores are ", scores.size(2), "x",
               scores.size(3), ": they must have the same height and width");
  AFFEXT_CHECK(scores.size(1) >= 1, "scores must have at least one label, got shape ",
               sizes_of(scores));
  AFFEXT_CHECK(iterations >= 1, "iterations must be >= 1, got ", iterations);
  AFFEXT_CHECK(std::isfinite(gaussian_sxy) && gaussian_sxy > 0,
               "gaussian_sxy must be a finite number > 0, got ", gaussian_sxy);
  AFFEXT_CHECK(std::isfinite(bilateral_sxy) && bilateral_sxy > 0,
               "bilateral_sxy must be a finite number > 0, got ", bilateral_sxy);
  AFFEXT_CHECK(std::isfinite(bilateral_srgb) && bilateral_srgb > 0,
               "bilateral_srgb must be a finite number > 0, got ", bilateral_srgb);
  AFFEXT_CHECK(std::isfinite(gaussian_compat), "gaussian_compat must be finite, got ",
               gaussian_compat);
  AFFEXT_CHECK(std::isfinite(bilateral_compat), "bilateral_compat must be finite, got ",
               bilateral_compat);
  const int64_t H = scores.size(2), W = scores.size(3);
  AFFEXT_CHECK(H * W <= (int64_t{1} << 28), "scores are ", H, "x", W,
               ": the dense CRF takes at most 2^28 pixels per image");
  // Lattice keys must fit into 64 bits (checked here so that both devices refuse alike).
  (void)crf_packings(H, W, gaussian_sxy, bilateral_sxy, bilateral_srgb);
}

CrfPackings crf_packings(int64_t H, int64_t W, double gaussian_sxy, double bilateral_sxy,
                         double bilateral_srgb) {
  const float xmax = static_cast<float>(std::max<int64_t>(W - 1, 0));
  const float ymax = static_cast<float>(std::max<int64_t>(H - 1, 0));
  const float g_max[crf::kGaussianDim] = {xmax / static_cast<float>(gaussian_sxy),
                                          ymax / static_cast<float>(gaussian_sxy)};
  const float c = 255.0f / static_cast<float>(bilateral_srgb);
  const float b_max[crf::kBilateralDim] = {xmax / static_cast<float>(bilateral_sxy),
                                           ymax / static_cast<float>(bilateral_sxy), c, c, c};
  CrfPackings p{crf::key_packing(crf::kGaussianDim, g_max),
                crf::key_packing(crf::kBilateralDim, b_max)};
  AFFEXT_CHECK(p.gaussian.bits > 0, "a ", H, "x", W, " image with gaussian_sxy ", gaussian_sxy,
               " spans more lattice cells than 64-bit keys hold");
  AFFEXT_CHECK(p.bilateral.bits > 0, "a ", H, "x", W, " image with bilateral_sxy ", bilateral_sxy,
               " and bilateral_srgb ", bilateral_srgb,
               " spans more lattice cells than 64-bit keys hold: raise bilateral_sxy or "
               "bilateral_srgb");
  return p;
}

void check_dense_crf_values(const Tensor& scores) {
  // One reduction, aminmax, which propagates NaN (on CUDA: one host synchronisation, skipped
  // with validate=False): NaN somewhere makes both NaN, an infinity (and no NaN) lo or hi
  // infinite, a negative value (and neither) lo < 0.
  if (scores.numel() == 0) return;
  const auto [lo_t, hi_t] = aminmax(scores);
  const double lo = item<double>(lo_t), hi = item<double>(hi_t);
  AFFEXT_CHECK(!std::isnan(lo) && !std::isnan(hi), "scores contain NaN values");
  AFFEXT_CHECK(!std::isinf(lo) && !std::isinf(hi), "scores contain infinite values");
  AFFEXT_CHECK(lo >= 0,
               "scores contain negative values; they must be >= 0 (probabilities or CAM "
               "scores; the unary is -log(clip(score, 1e-5, 1)))");
}

}  // namespace affext
