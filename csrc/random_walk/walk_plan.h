// The CUDA walk's launch plan and work units as plain host code (no CUDA, no torch), so that the
// CPU tests compile and check it (tests/cpp/test_launch_plan.cpp) where no GPU runs the kernels.
//
// - Shared memory of a block: walk_smem (the kernel computes the same layout on the device).
// - The plan: tile shape, mode (resident / streamed cooperative / one step a launch), grid and
//   shared memory, from the device's limits and an occupancy function (blocks per SM of a
//   kernel variant at a shared-memory size; the CUDA side caches it per device, dtype, K, tile
//   and resident mode).
// - Work units: a (tile, channel chunk) pair of one map; a map with n live channels has
//   ceil(n / kWalkChannels) chunks per tile. unit_start[b] is the first unit of map b and
//   unit_start[B] their count, built on the device from the live counts (no host
//   synchronisation); walk_unit decodes a unit. Blocks take units round robin, so a map with
//   many live channels spreads over more blocks instead of making one block the slowest at
//   every grid barrier.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/macros.h"

namespace affext {

constexpr int kTileW = 32;        // one warp per tile row
constexpr int kMaxTileRows = 8;   // 256 threads
constexpr int kWalkChannels = 4;  // live channels stepped together
constexpr int kMaxResidentTiles = 3;

// A block's shared memory: the K weight shifts and K stage shifts, the staged channels, and,
// for resident kernels, resident_tiles x (2K + 1) x tile pixels of weights. Byte offsets.
struct WalkSmem {
  size_t shifts, stage, taps, total;
};

AFFEXT_HOST_DEVICE WalkSmem walk_smem(int K, int P, int tile_rows, int resident_tiles,
                                      size_t elem_size) {
  WalkSmem s;
  s.shifts = 0;
  s.stage = (2 * K * sizeof(int) + 15) / 16 * 16;
  const size_t stage_elems =
      static_cast<size_t>(kWalkChannels) * (tile_rows + 2 * P) * (kTileW + 2 * P);
  s.taps = s.stage + stage_elems * elem_size;
  s.total =
      s.taps + static_cast<size_t>(resident_tiles) * (2 * K + 1) * tile_rows * kTileW * elem_size;
  return s;
}

// ---- work units -----------------------------------------------------------------------------

AFFEXT_HOST_DEVICE int64_t walk_chunks(int n_live) {
  return (n_live + kWalkChannels - 1) / kWalkChannels;
}

// unit_start[0 .. B]: the first unit of each map and, last, the number of units.
AFFEXT_HOST_DEVICE void walk_unit_starts(const int* live_n, int64_t B, int64_t tiles_per_map,
                                         int64_t* unit_start) {
  int64_t n = 0;
  for (int64_t b = 0; b < B; ++b) {
    unit_start[b] = n;
    n += walk_chunks(live_n[b]) * tiles_per_map;
  }
  unit_start[B] = n;
}

struct WalkUnit {
  int64_t b;     // map
  int64_t tile;  // tile within the map
  int chunk;     // live channels chunk * kWalkChannels ..
};

// Unit u (< unit_start[B]) of the list: its map by binary search, then the tile and the chunk
// (consecutive units: the tiles of one chunk, so neighbouring blocks read neighbouring pixels).
AFFEXT_HOST_DEVICE WalkUnit walk_unit(int64_t u, const int64_t* unit_start, int64_t B,
                                      int64_t tiles_per_map) {
  int64_t lo = 0, hi = B - 1;  // the last map whose start <= u (maps without units are skipped)
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (unit_start[mid] <= u)
      lo = mid;
    else
      hi = mid - 1;
  }
  const int64_t local = u - unit_start[lo];
  return {lo, local % tiles_per_map, static_cast<int>(local / tiles_per_map)};
}

// ---- the plan -------------------------------------------------------------------------------

enum class WalkMode { Auto, Resident, Streamed, PerStep };

// AFFEXT_WALK_CUDA_MODE's value (nullptr or empty: Auto); false for an unknown name.
inline bool parse_walk_mode(const char* s, WalkMode* mode) {
  const auto eq = [](const char* a, const char* b) {
    while (*a && *a == *b) ++a, ++b;
    return *a == *b;
  };
  if (s == nullptr || *s == '\0')
    *mode = WalkMode::Auto;
  else if (eq(s, "resident"))
    *mode = WalkMode::Resident;
  else if (eq(s, "streamed"))
    *mode = WalkMode::Streamed;
  else if (eq(s, "per-step"))
    *mode = WalkMode::PerStep;
  else
    return false;
  return true;
}

struct DeviceLimits {
  int sms;           // multiprocessors
  bool cooperative;  // cooperative launch supported (and not refused before)
  int max_smem;      // opt-in shared memory a block
};

enum class PlanError {
  None,
  ResidentDoesNotFit,  // WalkMode::Resident asked, the weights do not fit
  SmemTooLarge,        // even the streamed kernel's stage exceeds the block's shared memory
  NoOccupancy,         // the streamed kernel cannot run one block on an SM
};

struct WalkPlan {
  int tile_rows, tiles_x, tiles_y;
  int64_t tiles_per_map, tiles;
  int64_t max_units;  // units when every channel is live: tiles x chunks of C
  bool cooperative, resident;
  int resident_tiles;
  unsigned int grid;
  size_t smem;
  PlanError error;
};

// Tiles of 8 rows where there are enough to fill the SMs, else 4 or 2 (small maps spread over
// more SMs). Resident where every block's share of tiles (1 to kMaxResidentTiles) keeps its
// weights in shared memory with the grid the occupancy allows; else streamed (cooperative:
// the grid that is resident at once; one step a launch: up to 65535 blocks). A grid never
// exceeds the work units of a fully live batch (max_units).
// occupancy(resident_tiles, tile_rows, smem): blocks per SM of that kernel (resident_tiles 0:
// the streamed one) at that dynamic shared memory.
template <typename Occupancy>
WalkPlan plan_walk(int64_t B, int H, int W, int P, int K, int C, size_t elem_size, WalkMode mode,
                   const DeviceLimits& dev, Occupancy&& occupancy) {
  WalkPlan plan{};
  plan.tiles_x = (W + kTileW - 1) / kTileW;
  for (int rows : {kMaxTileRows, kMaxTileRows / 2, kMaxTileRows / 4}) {
    plan.tile_rows = rows;
    plan.tiles_y = (H + rows - 1) / rows;
    plan.tiles_per_map = static_cast<int64_t>(plan.tiles_y) * plan.tiles_x;
    plan.tiles = B * plan.tiles_per_map;
    if (plan.tiles >= dev.sms) break;
  }
  plan.max_units = plan.tiles * walk_chunks(C);
  plan.cooperative = dev.cooperative && mode != WalkMode::PerStep;
  if (plan.cooperative && mode != WalkMode::Streamed) {
    for (int m = 1; m <= kMaxResidentTiles; ++m) {
      const size_t smem = walk_smem(K, P, plan.tile_rows, m, elem_size).total;
      if (smem > static_cast<size_t>(dev.max_smem)) break;
      const int per_sm = occupancy(m, plan.tile_rows, smem);
      if (per_sm <= 0) break;
      const int64_t resident = static_cast<int64_t>(per_sm) * dev.sms;
      const int64_t grid = plan.tiles < resident ? plan.tiles : resident;
      if ((plan.tiles + grid - 1) / grid <= m) {
        plan.resident = true;
        plan.resident_tiles = m;
        plan.grid = static_cast<unsigned int>(grid);
        plan.smem = smem;
        return plan;
      }
    }
  }
  if (mode == WalkMode::Resident) {
    plan.error = PlanError::ResidentDoesNotFit;
    return plan;
  }
  plan.smem = walk_smem(K, P, plan.tile_rows, 0, elem_size).total;
  if (plan.smem > static_cast<size_t>(dev.max_smem)) {
    plan.error = PlanError::SmemTooLarge;
    return plan;
  }
  const int per_sm = occupancy(0, plan.tile_rows, plan.smem);
  if (per_sm <= 0) {
    plan.error = PlanError::NoOccupancy;
    return plan;
  }
  const int64_t cap = plan.cooperative ? static_cast<int64_t>(per_sm) * dev.sms : 65535;
  plan.grid = static_cast<unsigned int>(plan.max_units < cap ? plan.max_units : cap);
  return plan;
}

}  // namespace affext
