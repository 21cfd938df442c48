// The half-disk neighbourhood of AffinityNet (docs/method.md §3) and its pair regions.
//
// Offsets, in psa's order: (0, 1..r-1), then for dy in 1..r-1 the dx in -(r-1)..(r-1)
// with dx^2 + dy^2 < r^2. The Python twin is affext/neighborhood.py; a test ties them.
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace affext {

constexpr int kMinRadius = 2;
constexpr int kMaxRadius = 16;
// Half-disk size for kMaxRadius, rounded up; checked when the offsets are built.
constexpr int kMaxOffsets = 416;

struct Offsets {
  int radius;
  int count;
  int8_t dy[kMaxOffsets];
  int8_t dx[kMaxOffsets];
};

// Pair regions: which pairs (first pixel p, offset k) exist.
//   kRegionPsa:  p in psa's from-region, rows [0, H-r+1), columns [r-1, W-r+1);
//                every neighbour of such a p lies inside the map.
//   kRegionFull: every pair whose second pixel lies inside the map.
enum Region : int { kRegionPsa = 0, kRegionFull = 1 };

inline Offsets make_offsets(int radius) {
  Offsets o{};
  o.radius = radius;
  o.count = 0;
  const int rf = radius - 1;
  for (int dx = 1; dx <= rf; ++dx) {
    o.dy[o.count] = 0;
    o.dx[o.count] = static_cast<int8_t>(dx);
    ++o.count;
  }
  for (int dy = 1; dy <= rf; ++dy) {
    for (int dx = -rf; dx <= rf; ++dx) {
      if (dx * dx + dy * dy < radius * radius) {
        o.dy[o.count] = static_cast<int8_t>(dy);
        o.dx[o.count] = static_cast<int8_t>(dx);
        ++o.count;
      }
    }
  }
  return o;
}

// Does the pair (p = (y, x), p + (dy, dx)) exist in the region on an H x W map?
AFFEXT_HOST_DEVICE bool pair_in_region(int y, int x, int dy, int dx, int H, int W, int radius,
                                       int region) {
  if (region == kRegionPsa) {
    const int rf = radius - 1;
    return y < H - rf && x >= rf && x < W - rf;
  }
  const int qy = y + dy, qx = x + dx;
  return qy >= 0 && qy < H && qx >= 0 && qx < W;
}

}  // namespace affext
