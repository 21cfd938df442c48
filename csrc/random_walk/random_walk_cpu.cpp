// CPU random walk: taps built once, then `iterations` stencil steps over zero-padded channel
// buffers, so that the inner loop along x has no branch and vectorises. All-zero channels stay
// zero under the walk (it is linear per channel) and are skipped.
//
// A step costs one FMA and one pixel load (most of them across a cache line) per tap, pixel
// and channel. Rows are stepped in pairs, so that a pixel vector both rows read is loaded
// once, and the taps are stored per (row pair, run of x vectors) as lists of only those taps
// that are non-zero somewhere in the run: psa's region leaves the pairs of the outer r - 1
// columns and last r - 1 rows out, and with the x grid shifted to start at those columns'
// edge about a seventh of the tap vectors at 56 x 56 are zero and skipped.
//
// Threads: one OpenMP team for the whole walk, splitting each step by (channel block, row
// pair), with one barrier per step, or, with enough channels, whole blocks per thread and no
// barrier. The step kernel is compiled twice (AVX2+FMA and baseline) and picked at run time,
// so a portable build still runs 8 floats wide where the CPU can.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/checks.h"
#include "random_walk/random_walk.h"

namespace affext {
namespace {

// Channels sharing one load of the taps: a block of 6 on two rows is 12 accumulators, and
// with two taps and a pixel it fills the 16 vector registers of AVX2. Blocks are sized to
// share out evenly over the threads (see walk).
constexpr int kChanBlock = 6;
constexpr int kVecRegs = 16;
// Rows stepped at once (see step_run); even for a single channel, sharing pixel loads between
// rows beats running more x vectors at once.
constexpr int kRows = 2;

// 32-byte vectors (one AVX register; two SSE registers in the baseline build), loaded from
// any address.
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32), aligned(sizeof(T))));
  static constexpr int lanes = 32 / sizeof(T);
};

// kRows rows times U vectors along x times CB channels per pass: an FMA has a latency of
// several cycles, so a block of few channels needs more than one x vector in flight to keep
// the FMA units busy. U is the most that fits the registers with a tap per row and x vector,
// and a pixel.
constexpr int x_unroll(int channels) {
  return (kVecRegs - 1) / (kRows * (channels + 1)) > 1 ? (kVecRegs - 1) / (kRows * (channels + 1))
                                                       : 1;
}

// Geometry of the padded buffers. Each row is covered by G x vectors starting at column xs
// (-lanes < xs <= 0, so that a vector edge can fall on the edge of psa's region); column x of
// row y lives at (y + P) * Wp + P - xs + x, with P = r - 1 zero pixels beyond the vectors on
// every side, so that every tap's shift stays inside the buffer.
struct Layout {
  int64_t H, W, P, Hp, Wp, xs, G, ps;
  int64_t plane() const { return ps; }
  int64_t row(int64_t y) const { return (y + P) * Wp + P; }  // first vector of row y
  int64_t at(int64_t y, int64_t x) const { return row(y) - xs + x; }
};

// The taps of one image for units of R rows and runs of U x vectors: for each (unit, run),
// the list of taps that are non-zero in some lane of the run, each as its buffer shift from
// the unit's first row and u * lanes weights (u = U, or fewer in a row's last run). With two
// rows, the pixel vectors that both rows read are loaded once for both: the lists of a
// (unit, run) are those taps (weights of row 0, then of row 1), then row 0's other taps,
// then row 1's.
template <typename scalar_t>
struct TapRuns {
  int R = 1, U = 1;
  int64_t runs = 0;              // per unit
  std::vector<int64_t> first;    // 3 * units * runs + 1 entry bounds
  std::vector<int64_t> w_first;  // units * runs, into w
  std::vector<int64_t> shift;    // per entry
  std::vector<scalar_t> w;
};

// A block of up to kChanBlock live channels of one image.
struct ChannelBlock {
  int64_t b, first;  // image, first slot in the live buffers
  int n;
};

// One run of U x vectors of one unit of R rows, CB channels. With Pin, a pixel vector both
// rows use is held in a register for their two FMAs: left alone, the compiler folds the load
// into each FMA and loads it twice, which costs as much as the FMAs (the loads cross cache
// lines at most shifts).
template <typename scalar_t, int CB, int U, int R, bool Pin>
__attribute__((always_inline)) inline void step_run(const TapRuns<scalar_t>& t, int64_t index,
                                                    const scalar_t* const* in, scalar_t* const* out,
                                                    int64_t x0, int64_t Wp) {
  using vec = typename Vec<scalar_t>::type;
  constexpr int lanes = Vec<scalar_t>::lanes;
  vec acc[R][U][CB];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < U; ++u)
      for (int c = 0; c < CB; ++c) acc[r][u][c] = vec{};
  const int64_t* bounds = t.first.data() + 3 * index;
  const scalar_t* __restrict__ w_p = t.w.data() + t.w_first[index];
  const int64_t* __restrict__ shift = t.shift.data();
  if constexpr (R == 2) {
    for (int64_t e = bounds[0]; e < bounds[1]; ++e, w_p += 2 * U * lanes) {
      vec w0[U], w1[U];
      for (int u = 0; u < U; ++u) {
        w0[u] = *reinterpret_cast<const vec*>(w_p + u * lanes);
        w1[u] = *reinterpret_cast<const vec*>(w_p + (U + u) * lanes);
      }
      const int64_t off = x0 + shift[e];
      for (int c = 0; c < CB; ++c)
        for (int u = 0; u < U; ++u) {
          vec v = *reinterpret_cast<const vec*>(in[c] + off + u * lanes);
          if constexpr (Pin) __asm__("" : "+x"(v));
          acc[0][u][c] += w0[u] * v;
          acc[1][u][c] += w1[u] * v;
        }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int64_t e = bounds[1 + r]; e < bounds[2 + r]; ++e, w_p += U * lanes) {
      vec w[U];
      for (int u = 0; u < U; ++u) w[u] = *reinterpret_cast<const vec*>(w_p + u * lanes);
      const int64_t off = x0 + shift[e];
      for (int c = 0; c < CB; ++c)
        for (int u = 0; u < U; ++u)
          acc[r][u][c] += w[u] * *reinterpret_cast<const vec*>(in[c] + off + u * lanes);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < U; ++u)
      for (int c = 0; c < CB; ++c)
        *reinterpret_cast<vec*>(out[c] + r * Wp + x0 + u * lanes) = acc[r][u][c];
}

// The last run of a unit may be shorter than U vectors.
template <typename scalar_t, int CB, int U, int R, bool Pin>
__attribute__((always_inline)) inline void step_short_run(const TapRuns<scalar_t>& t, int64_t index,
                                                          const scalar_t* const* in,
                                                          scalar_t* const* out, int64_t x0,
                                                          int64_t Wp, int u) {
  if constexpr (U > 1) {
    if (u == U)
      step_run<scalar_t, CB, U, R, Pin>(t, index, in, out, x0, Wp);
    else
      step_short_run<scalar_t, CB, U - 1, R, Pin>(t, index, in, out, x0, Wp, u);
  } else {
    step_run<scalar_t, CB, 1, R, Pin>(t, index, in, out, x0, Wp);
  }
}

template <typename scalar_t, int CB, bool Pin>
__attribute__((always_inline)) inline void step_unit(const TapRuns<scalar_t>& t, int64_t unit,
                                                     const scalar_t* const* in,
                                                     scalar_t* const* out, const Layout& g) {
  constexpr int U = x_unroll(CB), R = kRows;
  constexpr int lanes = Vec<scalar_t>::lanes;
  const int64_t full = g.G / U;
  for (int64_t run = 0; run < full; ++run)
    step_run<scalar_t, CB, U, R, Pin>(t, unit * t.runs + run, in, out, run * U * lanes, g.Wp);
  if (full < t.runs)
    step_short_run<scalar_t, CB, U, R, Pin>(t, unit * t.runs + full, in, out, full * U * lanes,
                                            g.Wp, static_cast<int>(g.G - full * U));
}

// One unit (kRows rows from row unit * kRows) of one channel block:
// out = stencil(in). `in`/`out` point at the block's first channel plane.
template <typename scalar_t, bool Pin>
__attribute__((always_inline)) inline void step_block_unit(const TapRuns<scalar_t>& t,
                                                           const scalar_t* in, scalar_t* out, int n,
                                                           int64_t unit, const Layout& g) {
  const int64_t row = g.row(unit * t.R);
  const scalar_t* ins[kChanBlock];
  scalar_t* outs[kChanBlock];
  for (int c = 0; c < n; ++c) {
    ins[c] = in + c * g.plane() + row;
    outs[c] = out + c * g.plane() + row;
  }
  switch (n) {
    case 6:
      step_unit<scalar_t, 6, Pin>(t, unit, ins, outs, g);
      break;
    case 5:
      step_unit<scalar_t, 5, Pin>(t, unit, ins, outs, g);
      break;
    case 4:
      step_unit<scalar_t, 4, Pin>(t, unit, ins, outs, g);
      break;
    case 3:
      step_unit<scalar_t, 3, Pin>(t, unit, ins, outs, g);
      break;
    case 2:
      step_unit<scalar_t, 2, Pin>(t, unit, ins, outs, g);
      break;
    default:
      step_unit<scalar_t, 1, Pin>(t, unit, ins, outs, g);
      break;
  }
}

// The step compiled for AVX2+FMA, and for the baseline; chosen once at run time.
#if defined(__GNUC__) && defined(__x86_64__)
#define AFFEXT_HAVE_AVX2_PATH 1
template <typename scalar_t>
__attribute__((target("avx2,fma"))) void step_avx2(const TapRuns<scalar_t>& t, const scalar_t* in,
                                                   scalar_t* out, int n, int64_t unit,
                                                   const Layout& g) {
  step_block_unit<scalar_t, true>(t, in, out, n, unit, g);
}

inline bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

template <typename scalar_t>
void step_baseline(const TapRuns<scalar_t>& t, const scalar_t* in, scalar_t* out, int n,
                   int64_t unit, const Layout& g) {
  step_block_unit<scalar_t, false>(t, in, out, n, unit, g);
}

template <typename scalar_t>
using StepFn = void (*)(const TapRuns<scalar_t>&, const scalar_t*, scalar_t*, int, int64_t,
                        const Layout&);

template <typename scalar_t>
StepFn<scalar_t> pick_step() {
#ifdef AFFEXT_HAVE_AVX2_PATH
  if (cpu_has_avx2_fma()) return &step_avx2<scalar_t>;
#endif
  return &step_baseline<scalar_t>;
}

// Is tap j non-zero for some column of [x0, x0 + n) in row y? taps: (H, J, W) of one image.
template <typename scalar_t>
bool tap_live(const scalar_t* taps, const Layout& g, int64_t J, int64_t y, int64_t j, int64_t x0,
              int64_t n) {
  if (y >= g.H) return false;  // the second row of a unit past the last row
  const scalar_t* r = taps + (y * J + j) * g.W;
  for (int64_t x = std::max<int64_t>(x0, 0); x < std::min(x0 + n, g.W); ++x)
    if (r[x] != scalar_t(0)) return true;
  return false;
}

// Tap vectors (row, x vector, tap) left after skipping the zero ones, for a grid starting at
// column xs: the cost of a step per channel.
template <typename scalar_t>
int64_t grid_cost(const std::vector<scalar_t>& taps, const Layout& g, int64_t J, int64_t B) {
  constexpr int lanes = Vec<scalar_t>::lanes;
  int64_t cost = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t y = 0; y < g.H; ++y)
      for (int64_t v = 0; v < g.G; ++v)
        for (int64_t j = 0; j < J; ++j)
          cost += tap_live(taps.data() + b * g.H * J * g.W, g, J, y, j, g.xs + v * lanes, lanes);
  return cost;
}

template <typename scalar_t>
void build_runs(TapRuns<scalar_t>& t, const scalar_t* taps, const Layout& g,
                const std::vector<int64_t>& shift, int R, int U) {
  constexpr int lanes = Vec<scalar_t>::lanes;
  const int64_t J = static_cast<int64_t>(shift.size());
  t.R = R;
  t.U = U;
  t.runs = (g.G + U - 1) / U;
  t.first.assign(1, 0);
  auto push_weights = [&](int64_t y, int64_t j, int64_t x0, int64_t u) {
    const scalar_t* r = taps + (y * J + j) * g.W;
    for (int64_t x = x0; x < x0 + u * lanes; ++x)
      t.w.push_back(y < g.H && x >= 0 && x < g.W ? r[x] : scalar_t(0));
  };
  // The taps of each row by shift from the unit's first row (tap j of row y + r reads
  // shift[j] + r * Wp). Which taps two rows share, and so the order in which a pixel sums
  // its taps, is fixed by the stencil alone; only lists of zeros are dropped. The result
  // therefore does not depend on U, that is on the block sizes and the thread count.
  std::map<int64_t, std::pair<int64_t, int64_t>> by_shift;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < J; ++j) {
      auto it = by_shift.emplace(shift[j] + r * g.Wp, std::make_pair(-1, -1)).first;
      (r == 0 ? it->second.first : it->second.second) = j;
    }
  for (int64_t y = 0; y < g.H; y += R) {
    for (int64_t run = 0; run < t.runs; ++run) {
      const int64_t x0 = g.xs + run * U * lanes;
      const int64_t u = std::min<int64_t>(U, g.G - run * U);
      auto live = [&](int64_t r, int64_t j) {
        return j >= 0 && tap_live(taps, g, J, y + r, j, x0, u * lanes);
      };
      t.w_first.push_back(static_cast<int64_t>(t.w.size()));
      for (const auto& [sh, js] : by_shift) {  // both rows
        if (js.first < 0 || js.second < 0 || !(live(0, js.first) || live(1, js.second))) continue;
        t.shift.push_back(sh);
        push_weights(y, js.first, x0, u);
        push_weights(y + 1, js.second, x0, u);
      }
      t.first.push_back(static_cast<int64_t>(t.shift.size()));
      for (int64_t r = 0; r < 2; ++r) {  // one row only
        for (const auto& [sh, js] : by_shift) {
          const int64_t mine = r == 0 ? js.first : js.second;
          const int64_t other = r == 0 ? js.second : js.first;
          if (other >= 0 || !live(r, mine)) continue;
          t.shift.push_back(sh);
          push_weights(y + r, mine, x0, u);
        }
        t.first.push_back(static_cast<int64_t>(t.shift.size()));
      }
    }
  }
}

template <typename scalar_t>
void walk(const at::Tensor& cam, const at::Tensor& aff, const at::Tensor& live, double beta,
          int64_t iterations, const Offsets& o, int region, at::Tensor& result) {
  constexpr int lanes = Vec<scalar_t>::lanes;
  const int64_t B = cam.size(0), C = cam.size(1), H = cam.size(2), W = cam.size(3);
  const int64_t J = 2 * o.count + 1;
  const int threads = at::get_num_threads();

  // Live channels, grouped by image into blocks of near-equal size (at most kChanBlock). With
  // a channel for every thread, an image's block count is a multiple of the thread count, so
  // that whole blocks share out evenly (21 channels on 2 threads: 5 + 5 and 5 + 6, not 8 + 8
  // on one thread and 5 on the other), and the threads need no barrier: psa's 3 channels on
  // 2 threads run as 1 + 2 rather than split by rows, as fast in the median on a busy
  // machine and without the rare walks that took 50 times longer, a thread stalled at one of
  // the 256 barriers while the other had lost its core.
  // On large maps a step is long enough that its barrier costs little, and whole blocks that
  // do not share out evenly (3 channels on 2 threads: 1 + 2) would leave a thread idle a third
  // of the time: there, unless the imbalance is under an eighth, the rows are split instead.
  constexpr int64_t kRowSplitArea = 128 * 128;
  const bool* live_p = live.data_ptr<bool>();
  std::vector<int64_t> slot_b, slot_c;
  std::vector<ChannelBlock> blocks;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t first = static_cast<int64_t>(slot_b.size());
    for (int64_t c = 0; c < C; ++c) {
      if (!live_p[b * C + c]) continue;
      slot_b.push_back(b);
      slot_c.push_back(c);
    }
    const int64_t n_live = static_cast<int64_t>(slot_b.size()) - first;
    int64_t n_blocks = (n_live + kChanBlock - 1) / kChanBlock;
    const int64_t idle = (threads - n_live % threads) % threads;  // slots a split leaves empty
    if (n_live >= threads && (H * W < kRowSplitArea || 8 * idle <= n_live))
      n_blocks = (n_blocks + threads - 1) / threads * threads;
    for (int64_t i = 0, start = first; i < n_blocks; ++i) {
      const int n = static_cast<int>((n_live * (i + 1)) / n_blocks - (n_live * i) / n_blocks);
      blocks.push_back({b, start, n});
      start += n;
    }
  }
  const int64_t L = static_cast<int64_t>(slot_b.size());
  if (L == 0) return;  // result is already zero

  // Taps (B, H, J, W), normalised by the column sums.
  using acc_t = scalar_t;
  const int64_t HW = H * W;
  std::vector<scalar_t> taps(static_cast<size_t>(B * H * J * W));
  const scalar_t* aff_p = aff.data_ptr<scalar_t>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> t(J);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, y = row % H;
      scalar_t* dst = taps.data() + row * J * W;
      for (int64_t x = 0; x < W; ++x) {
        const acc_t d = walk_taps<scalar_t, acc_t>(aff_p + b * o.count * HW, y, x, H, W, o, region,
                                                   static_cast<acc_t>(beta), t.data(), 1);
        for (int64_t j = 0; j < J; ++j) dst[j * W + x] = t[j] / d;
      }
    }
  });

  // The x grid: from column 0, or shifted left so that a vector edge falls on column r - 1
  // (the left edge of psa's region); whichever leaves fewer non-zero tap vectors.
  Layout g;
  g.H = H;
  g.W = W;
  g.P = o.radius - 1;
  g.Hp = H + 2 * g.P;
  int64_t best_cost = -1;
  for (int64_t xs : {int64_t(0), g.P - (g.P + lanes - 1) / lanes * lanes}) {
    Layout c = g;
    c.xs = xs;
    c.G = (W - xs + lanes - 1) / lanes;
    const int64_t cost = grid_cost(taps, c, J, B);
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      g = c;
    }
  }
  g.Wp = g.G * lanes + 2 * g.P;
  // Channel planes an odd number of cache lines apart. A block reads the same pixel of up to
  // 12 planes at once; planes a multiple of 4 KiB apart (56 x 56 gives 64 x 64 floats) share
  // L1 sets and trip the CPU's 4 KiB store/load aliasing, which made the step twice as slow.
  constexpr int64_t line = 64 / sizeof(scalar_t);
  g.ps = (g.Hp * g.Wp + line - 1) / line * line;
  if ((g.ps / line) % 2 == 0) g.ps += line;
  std::vector<int64_t> shift(J);
  for (int j = 0; j < J; ++j) shift[j] = tap_dy(o, j) * g.Wp + tap_dx(o, j);

  // Tap runs of every image for each x unroll the blocks use.
  // Tap runs of every image for each x unroll the blocks use, keyed by block size.
  std::map<int, std::vector<TapRuns<scalar_t>>> runs;
  for (const ChannelBlock& blk : blocks) runs[blk.n];
  for (auto& [n, per_image] : runs) {
    per_image.resize(B);
    for (int64_t b = 0; b < B; ++b)
      build_runs(per_image[b], taps.data() + b * H * J * W, g, shift, kRows, x_unroll(n));
  }
  std::vector<const TapRuns<scalar_t>*> block_runs;
  std::vector<int64_t> block_units;
  for (const ChannelBlock& blk : blocks) {
    block_runs.push_back(&runs[blk.n][blk.b]);
    block_units.push_back((H + kRows - 1) / kRows);
  }

  // Ping-pong buffers of the live channels, zero-padded: one allocation, aligned to a cache
  // line, so that the odd plane stride also separates the two buffers' planes.
  std::vector<scalar_t> storage(static_cast<size_t>(2 * L * g.plane() + line), scalar_t(0));
  scalar_t* buf0 = storage.data();
  while (reinterpret_cast<uintptr_t>(buf0) % 64 != 0) ++buf0;
  scalar_t* buf1 = buf0 + L * g.plane();
  const scalar_t* cam_p = cam.data_ptr<scalar_t>();
  for (int64_t l = 0; l < L; ++l) {
    const scalar_t* src = cam_p + (slot_b[l] * C + slot_c[l]) * HW;
    for (int64_t y = 0; y < H; ++y)
      std::copy(src + y * W, src + (y + 1) * W, buf0 + l * g.plane() + g.at(y, 0));
  }

  scalar_t* bufs[2] = {buf0, buf1};
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  const StepFn<scalar_t> step = pick_step<scalar_t>();
  auto step_item = [&](int64_t it, int64_t blk_index, int64_t unit) {
    const ChannelBlock& blk = blocks[blk_index];
    step(*block_runs[blk_index], bufs[it % 2] + blk.first * g.plane(),
         bufs[(it + 1) % 2] + blk.first * g.plane(), blk.n, unit, g);
  };
  if (n_blocks >= threads) {
    // Enough independent channel blocks: each thread walks whole blocks, with no barrier;
    // a block's planes stay in cache for all its steps.
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
    for (int64_t blk = 0; blk < n_blocks; ++blk)
      for (int64_t it = 0; it < iterations; ++it)
        for (int64_t unit = 0; unit < block_units[blk]; ++unit) step_item(it, blk, unit);
  } else {
    // Few channels: split each step by (block, unit of rows), one barrier per step.
    std::vector<std::pair<int64_t, int64_t>> work;
    for (int64_t blk = 0; blk < n_blocks; ++blk)
      for (int64_t unit = 0; unit < block_units[blk]; ++unit) work.emplace_back(blk, unit);
    const int64_t items = static_cast<int64_t>(work.size());
#ifdef _OPENMP
#pragma omp parallel num_threads(static_cast<int>(std::min<int64_t>(threads, items)))
#endif
    for (int64_t it = 0; it < iterations; ++it) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t item = 0; item < items; ++item)
        step_item(it, work[item].first, work[item].second);
      // implicit barrier: the next step reads every row of this one
    }
  }

  const scalar_t* final_buf = bufs[iterations % 2];
  scalar_t* res_p = result.data_ptr<scalar_t>();
  for (int64_t l = 0; l < L; ++l) {
    scalar_t* dst = res_p + (slot_b[l] * C + slot_c[l]) * HW;
    for (int64_t y = 0; y < H; ++y) {
      const scalar_t* src = final_buf + l * g.plane() + g.at(y, 0);
      std::copy(src, src + W, dst + y * W);
    }
  }
}

}  // namespace

at::Tensor random_walk_cpu(const at::Tensor& cam_in, const at::Tensor& aff_in, double beta,
                           int64_t iterations, int64_t radius, int64_t region) {
  check_random_walk_args(cam_in, aff_in, beta, iterations, radius, region);
  const Offsets o = offsets_for(radius);
  const auto dtype = at::promote_types(cam_in.scalar_type(), aff_in.scalar_type());
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble,
                   "on the CPU cam and aff must be float32 or float64, got ", cam_in.scalar_type(),
                   " and ", aff_in.scalar_type());
  const at::Tensor cam = cam_in.detach().to(dtype).contiguous();
  const at::Tensor aff = aff_in.detach().to(dtype).contiguous();
  at::Tensor result = at::zeros_like(cam);
  if (cam.numel() == 0) return result;
  // A channel that is zero everywhere stays zero: walk only the others.
  const at::Tensor live = (cam != 0).flatten(2).any(2).contiguous();
  AT_DISPATCH_FLOATING_TYPES(dtype, "random_walk_cpu", [&] {
    walk<scalar_t>(cam, aff, live, beta, iterations, o, static_cast<int>(region), result);
  });
  return result;
}

TORCH_LIBRARY_IMPL(affext, CPU, m) { m.impl("random_walk", &random_walk_cpu); }

}  // namespace affext
