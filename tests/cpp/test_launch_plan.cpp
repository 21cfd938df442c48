// Host logic of the CUDA launch path, checked on the CPU (tests/test_launch_plan.py builds and
// runs this with the C++ compiler; no torch, no CUDA). Expected values are worked out by hand
// in the comments, apart from walk_plan.h's code.
#include <atomic>
#include <cstdio>
#include <set>
#include <thread>
#include <tuple>
#include <vector>

#include "common/launch_cache.h"
#include "random_walk/walk_plan.h"

using namespace affext;

static int failures = 0;
#define CHECK(cond)                                                 \
  do {                                                              \
    if (!(cond)) {                                                  \
      std::printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                   \
    }                                                               \
  } while (0)

// Every (map, tile, chunk) of a batch with mixed live counts is exactly one unit.
static void test_units() {
  const std::vector<int> live_n = {3, 0, 21, 4, 5, 0};
  const int64_t B = live_n.size(), tiles_per_map = 7;
  std::vector<int64_t> start(B + 1);
  walk_unit_starts(live_n.data(), B, tiles_per_map, start.data());
  // chunks of 4: 1, 0, 6, 1, 2, 0 -> starts 0, 7, 7, 49, 56, 70, total 70
  const std::vector<int64_t> expected = {0, 7, 7, 49, 56, 70, 70};
  CHECK(start == expected);
  std::set<std::tuple<int64_t, int64_t, int>> seen;
  for (int64_t u = 0; u < start[B]; ++u) {
    const WalkUnit w = walk_unit(u, start.data(), B, tiles_per_map);
    CHECK(w.b >= 0 && w.b < B && live_n[w.b] > 0);
    CHECK(w.tile >= 0 && w.tile < tiles_per_map);
    CHECK(w.chunk >= 0 && w.chunk * kWalkChannels < live_n[w.b]);
    seen.insert({w.b, w.tile, w.chunk});
  }
  CHECK(static_cast<int64_t>(seen.size()) == 70);
  // the first unit of map 2 and the last one of the list
  const WalkUnit first2 = walk_unit(7, start.data(), B, tiles_per_map);
  CHECK(first2.b == 2 && first2.tile == 0 && first2.chunk == 0);
  const WalkUnit last = walk_unit(69, start.data(), B, tiles_per_map);
  CHECK(last.b == 4 && last.tile == 6 && last.chunk == 1);
  // one map, nothing live: no units
  const int none = 0;
  int64_t s1[2];
  walk_unit_starts(&none, 1, 5, s1);
  CHECK(s1[0] == 0 && s1[1] == 0);
}

static void test_smem() {
  // K = 34, P = 4, 2 rows, float: shifts 68 ints = 272 B; stage 4 x 10 x 40 x 4 = 6400 B;
  // one resident tile 69 x 64 x 4 = 17664 B.
  const WalkSmem s = walk_smem(34, 4, 2, 1, 4);
  CHECK(s.stage == 272 && s.taps == 272 + 6400 && s.total == 272 + 6400 + 17664);
  CHECK(walk_smem(34, 4, 2, 0, 4).total == 6672);
  // K = 4 (radius 2), P = 1, double, 8 rows: 32 B of shifts, 4 x 10 x 34 x 8 = 10880 B
  CHECK(walk_smem(4, 1, 8, 0, 8).total == 32 + 10880);
}

static void test_modes() {
  WalkMode m = WalkMode::Resident;
  CHECK(parse_walk_mode(nullptr, &m) && m == WalkMode::Auto);
  CHECK(parse_walk_mode("", &m) && m == WalkMode::Auto);
  CHECK(parse_walk_mode("streamed", &m) && m == WalkMode::Streamed);
  CHECK(parse_walk_mode("per-step", &m) && m == WalkMode::PerStep);
  CHECK(parse_walk_mode("resident", &m) && m == WalkMode::Resident);
  CHECK(!parse_walk_mode("residentx", &m) && !parse_walk_mode("stream", &m));
}

static void test_plan() {
  const DeviceLimits h100{132, true, 227 * 1024};
  int calls = 0;
  // two blocks an SM of any variant
  const auto two = [&](int, int, size_t) { return ++calls, 2; };
  // psa-shaped: one 56 x 56 map, r = 5. Rows 8: 2 x 7 = 14 tiles < 132; rows 4: 28; rows 2:
  // 56 tiles (the last try). Resident with one tile a block: grid 56, 24336 B.
  WalkPlan p = plan_walk(1, 56, 56, 4, 34, 21, 4, WalkMode::Auto, h100, two);
  CHECK(p.error == PlanError::None && p.resident && p.cooperative);
  CHECK(p.tile_rows == 2 && p.tiles_x == 2 && p.tiles_y == 28 && p.tiles == 56);
  CHECK(p.resident_tiles == 1 && p.grid == 56 && p.smem == 24336);
  CHECK(p.max_units == 56 * 6);
  // streamed forced: the resident blocks (2 x 132 = 264), fewer than the units of a fully
  // live batch (56 x 6 = 336)
  p = plan_walk(1, 56, 56, 4, 34, 21, 4, WalkMode::Streamed, h100, two);
  CHECK(p.error == PlanError::None && !p.resident && p.cooperative && p.grid == 264);
  CHECK(p.smem == 6672);
  // three live channels at most (C = 3): 56 units, the grid stops there
  p = plan_walk(1, 56, 56, 4, 34, 3, 4, WalkMode::Streamed, h100, two);
  CHECK(p.grid == 56);
  // one step a launch: up to 65535 blocks, here 336
  p = plan_walk(1, 56, 56, 4, 34, 21, 4, WalkMode::PerStep, h100, two);
  CHECK(!p.cooperative && !p.resident && p.grid == 336);
  // no cooperative launch (or refused): per step even in Auto; Resident is an error
  const DeviceLimits no_coop{132, false, 227 * 1024};
  p = plan_walk(1, 56, 56, 4, 34, 21, 4, WalkMode::Auto, no_coop, two);
  CHECK(p.error == PlanError::None && !p.cooperative && !p.resident && p.tiles_per_map == 56);
  p = plan_walk(1, 56, 56, 4, 34, 21, 4, WalkMode::Resident, no_coop, two);
  CHECK(p.error == PlanError::ResidentDoesNotFit);
  // 512 x 512: rows 8, 16 x 64 = 1024 tiles; resident needs 1024 / 264 -> 4 tiles a block
  // (> 3): streamed, grid 264.
  p = plan_walk(1, 512, 512, 4, 34, 21, 4, WalkMode::Auto, h100, two);
  CHECK(p.tile_rows == 8 && p.tiles == 1024 && !p.resident && p.grid == 264);
  // 16 maps of 63 x 63: rows 8, 2 x 8 x 16 = 256 tiles; resident with 1 tile a block needs
  // 256 blocks <= 264: grid 256
  p = plan_walk(16, 63, 63, 4, 34, 21, 4, WalkMode::Auto, h100, two);
  CHECK(p.resident && p.resident_tiles == 1 && p.grid == 256);
  // one block an SM: 132 blocks hold 256 tiles with 2 a block
  const auto one = [](int, int, size_t) { return 1; };
  p = plan_walk(16, 63, 63, 4, 34, 21, 4, WalkMode::Auto, h100, one);
  CHECK(p.resident && p.resident_tiles == 2 && p.grid == 128 + 4);
  // a device with little shared memory: the resident kernels do not fit, the stage does
  const DeviceLimits small{80, true, 8 * 1024};
  p = plan_walk(1, 56, 56, 4, 34, 21, 4, WalkMode::Auto, small, two);
  CHECK(p.error == PlanError::None && !p.resident && p.smem == 6672);
  // and one where not even the stage fits
  const DeviceLimits tiny{80, true, 4 * 1024};
  p = plan_walk(1, 56, 56, 4, 34, 21, 4, WalkMode::Auto, tiny, two);
  CHECK(p.error == PlanError::SmemTooLarge);
  const auto none = [](int, int, size_t) { return 0; };
  p = plan_walk(1, 56, 56, 4, 34, 21, 4, WalkMode::Streamed, h100, none);
  CHECK(p.error == PlanError::NoOccupancy);
  CHECK(calls > 0);
}

static void test_cache() {
  LaunchCache<int, int> cache;
  std::atomic<int> made{0};
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 1000; ++i) {
        const int key = (t + i) % 4;
        const int v = cache.get(key, [&] {
          ++made;
          return key * 10;
        });
        if (v != key * 10) ++wrong;
      }
    });
  for (auto& th : threads) th.join();
  CHECK(made == 4 && wrong == 0 && cache.size() == 4);
  cache.set(2, 99);
  CHECK(cache.get(2, [] { return -1; }) == 99);
  // a make() that throws caches nothing
  bool threw = false;
  try {
    cache.get(7, []() -> int { throw 1; });
  } catch (int) {
    threw = true;
  }
  CHECK(threw && cache.size() == 4 && cache.get(7, [] { return 70; }) == 70);
}

int main() {
  test_units();
  test_smem();
  test_modes();
  test_plan();
  test_cache();
  if (failures == 0) std::printf("launch plan: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
