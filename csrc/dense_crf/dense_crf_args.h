// Checks and host-side set-up shared by the dense CRF's CPU and CUDA launchers.
#pragma once

#include "common/stable.h"
#include "dense_crf/dense_crf.h"

namespace affext {

// Shapes, dtypes, devices and settings (every message names the argument).
void check_dense_crf_args(const Tensor& image, const Tensor& scores, int64_t iterations,
                          double gaussian_sxy, double gaussian_compat, double bilateral_sxy,
                          double bilateral_srgb, double bilateral_compat);

// Scores finite and >= 0 (affext.dense_crf raises the error as ValueError).
void check_dense_crf_values(const Tensor& scores);

struct CrfPackings {
  crf::KeyPacking gaussian, bilateral;
};

// How the two lattices' keys are packed for an H x W image (bounds from the settings alone,
// so that the CUDA kernels need no look at the data).
CrfPackings crf_packings(int64_t H, int64_t W, double gaussian_sxy, double bilateral_sxy,
                         double bilateral_srgb);

}  // namespace affext
