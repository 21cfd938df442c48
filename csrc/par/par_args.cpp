// Argument checks and the stencil of PAR, shared by the CPU and CUDA launchers.
#include "common/stable.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "par/par.h"

namespace affext {

ParStencil make_par_stencil(IntList dilations, double w1, double w2) {
  const int64_t n = static_cast<int64_t>(dilations.size());
  AFFEXT_CHECK(n >= 1 && n <= kParMaxDilations, "dilations must hold 1 to ", kParMaxDilations,
               " values, got ", ints_of(dilations));
  for (const int64_t d : dilations)
    AFFEXT_CHECK(d >= 1 && d <= kParMaxDilation, "dilations must be positive integers (at most ",
                 kParMaxDilation, "), got ", ints_of(dilations));
  AFFEXT_CHECK(std::isfinite(w1) && w1 > 0, "w1 must be a positive number, got ", w1);
  AFFEXT_CHECK(std::isfinite(w2) && w2 >= 0, "w2 must be a number >= 0, got ", w2);
  ParStencil s{};
  s.count = static_cast<int>(n) * kParRing;
  std::vector<double> dist(s.count);
  for (int64_t i = 0; i < n; ++i) {
    for (int j = 0; j < kParRing; ++j) {
      const int k = static_cast<int>(i) * kParRing + j;
      s.dy[k] = kParRingDy[j] * static_cast<int>(dilations[i]);
      s.dx[k] = kParRingDx[j] * static_cast<int>(dilations[i]);
      const bool diagonal = kParRingDy[j] != 0 && kParRingDx[j] != 0;
      dist[k] = static_cast<double>(dilations[i]) * (diagonal ? std::sqrt(2.0) : 1.0);
    }
  }
  // The position term: a softmax over the ring distances scaled by their unbiased std.
  double mean = 0, sum_sq = 0;
  for (const double v : dist) mean += v;
  mean /= s.count;
  for (const double v : dist) sum_sq += (v - mean) * (v - mean);
  const double sd = std::sqrt(sum_sq / (s.count - 1));
  double top = -INFINITY, sum = 0;
  std::vector<double> logit(s.count);
  for (int k = 0; k < s.count; ++k) {
    const double t = dist[k] / (sd + 1e-8) / w1;
    logit[k] = -(t * t);
    top = std::max(top, logit[k]);
  }
  for (int k = 0; k < s.count; ++k) sum += std::exp(logit[k] - top);
  for (int k = 0; k < s.count; ++k) s.pos[k] = w2 * std::exp(logit[k] - top) / sum;
  return s;
}

void check_par_imgs(const Tensor& imgs) {
  check_dim("imgs", imgs, 4, "(B, 3, H, W)");
  check_floating("imgs", imgs);
  AFFEXT_CHECK(imgs.size(1) >= 1 && imgs.size(2) >= 1 && imgs.size(3) >= 1,
               "imgs must have at least one channel and one pixel, got ", sizes_of(imgs));
  AFFEXT_CHECK(imgs.size(2) * imgs.size(3) < (int64_t(1) << 31),
               "imgs has more than 2^31 pixels per channel: ", sizes_of(imgs));
}

void check_par_refine_args(const char* name, const Tensor& masks, const Tensor& weights,
                           IntList dilations, int64_t num_iter) {
  check_dim(name, masks, 4, "(B, C, H, W)");
  check_dim("weights", weights, 4, "(B, K, H, W)");
  check_floating(name, masks);
  check_same_device(name, masks, "weights", weights);
  AFFEXT_CHECK(num_iter >= 1, "num_iter must be >= 1, got ", num_iter);
  const ParStencil s = make_par_stencil(dilations, 1.0, 0.0);
  AFFEXT_CHECK(weights.size(1) == s.count, "weights has ", weights.size(1),
               " neighbours but dilations ", ints_of(dilations), " have K = 8 x ", dilations.size(),
               " = ", s.count);
  AFFEXT_CHECK(masks.size(0) == weights.size(0) && masks.size(2) == weights.size(2) &&
                   masks.size(3) == weights.size(3),
               name, " ", sizes_of(masks), " and weights ", sizes_of(weights),
               " must agree in batch and size (B, ., H, W)");
  AFFEXT_CHECK(masks.size(2) * masks.size(3) < (int64_t(1) << 31), name,
               " has more than 2^31 pixels per channel: ", sizes_of(masks));
  const auto acc = par_acc_dtype(masks.scalar_type());
  AFFEXT_CHECK(weights.scalar_type() == acc, "weights must be ", acc, " (the accumulation ",
               "type of ", name, "'s ", masks.scalar_type(), "), got ", weights.scalar_type());
}

}  // namespace affext
