// CPU random walk, two paths to one result (docs/method.md §5; the math in random_walk.h).
//
// AVX2 path (x86-64 CPUs with AVX2 and FMA): taps built once, then `iterations` stencil steps
// over zero-padded channel buffers, so that the inner loop along x has no branch and runs 8
// floats wide. A step costs one FMA and one pixel load (most of them across a cache line) per
// tap, pixel and channel. Rows are stepped in pairs, so that a pixel vector both rows read is
// loaded once, and the taps are stored per (row pair, run of x vectors) as lists of only those
// taps that are non-zero somewhere in the run: psa's region leaves the pairs of the outer
// r - 1 columns and last r - 1 rows out, and with the x grid shifted to start at those
// columns' edge about a seventh of the tap vectors at 56 x 56 are zero and skipped. Every
// multiply-add is an explicit FMA instruction and a pixel's taps are summed in an order fixed
// by the stencil alone, so the result is the same bits for any thread count, channel block and
// compiler.
//
// Portable path (any other CPU, or AFFEXT_WALK_CPU_PATH=portable): the GPU kernel's own
// per-pixel functions (walk_step_pixel over padded planes), so that the CPU tests exercise the
// arithmetic the GPU runs.
//
// Both skip all-zero channels (the walk is linear per channel, so they stay zero). Threads: the
// AVX2 path runs one OpenMP team for the whole walk, splitting each step by (channel block, row
// pair), with one barrier per step, or, with enough channels, whole blocks per thread and no
// barrier; the portable path splits each step by (channel chunk, row).
#include "common/stable.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/parallel.h"
#include "random_walk/random_walk.h"

#if defined(__GNUC__) && defined(__x86_64__)
#define AFFEXT_HAVE_AVX2_PATH 1
#include <immintrin.h>
#endif

namespace affext {
namespace {

// ---- shared by both paths ------------------------------------------------------------------

// The live channels in the order of the walk's buffers: slot l is channel c[l] of image b[l].
struct LiveSlots {
  std::vector<int64_t> b, c;
  std::vector<int64_t> first, count;  // per image: its first slot and its number of slots
  int64_t size() const { return static_cast<int64_t>(b.size()); }
};

// Whether each (image, channel) plane of the contiguous (B, C, H, W) cam has a non-zero value.
template <typename scalar_t>
std::vector<uint8_t> live_channels(const Tensor& cam) {
  const int64_t planes = cam.size(0) * cam.size(1), HW = cam.size(2) * cam.size(3);
  const scalar_t* p = cam.const_data_ptr<scalar_t>();
  std::vector<uint8_t> live(static_cast<size_t>(planes), 0);
  parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t l = begin; l < end; ++l)
      live[l] = std::any_of(p + l * HW, p + (l + 1) * HW, [](scalar_t v) { return v != 0; });
  });
  return live;
}

LiveSlots live_slots(const std::vector<uint8_t>& live, int64_t B, int64_t C) {
  const uint8_t* live_p = live.data();
  LiveSlots s;
  for (int64_t b = 0; b < B; ++b) {
    s.first.push_back(s.size());
    for (int64_t c = 0; c < C; ++c) {
      if (!live_p[b * C + c]) continue;
      s.b.push_back(b);
      s.c.push_back(c);
    }
    s.count.push_back(s.size() - s.first.back());
  }
  return s;
}

// A block of live channels of one image, stepped together.
struct ChannelBlock {
  int64_t b, first;  // image, first slot in the live buffers
  int n;
};

// n_live slots from `first` split into n_blocks blocks of near-equal size.
void split_blocks(std::vector<ChannelBlock>& blocks, int64_t b, int64_t first, int64_t n_live,
                  int64_t n_blocks) {
  for (int64_t i = 0, start = first; i < n_blocks; ++i) {
    const int n = static_cast<int>((n_live * (i + 1)) / n_blocks - (n_live * i) / n_blocks);
    blocks.push_back({b, start, n});
    start += n;
  }
}

// Copies between cam-shaped (B, C, H, W) tensors and the live planes of a walk's buffers:
// slot l's plane starts at l * plane, and row y of it at row(y).
template <typename scalar_t, typename Row>
void copy_planes_in(const Tensor& cam, const LiveSlots& s, scalar_t* planes, int64_t plane,
                    Row row) {
  const int64_t C = cam.size(1), H = cam.size(2), W = cam.size(3);
  const scalar_t* cam_p = cam.const_data_ptr<scalar_t>();
  for (int64_t l = 0; l < s.size(); ++l) {
    const scalar_t* src = cam_p + (s.b[l] * C + s.c[l]) * H * W;
    for (int64_t y = 0; y < H; ++y)
      std::copy(src + y * W, src + (y + 1) * W, planes + l * plane + row(y));
  }
}

template <typename scalar_t, typename Row>
void copy_planes_out(const scalar_t* planes, int64_t plane, Row row, const LiveSlots& s,
                     Tensor& result) {
  const int64_t C = result.size(1), H = result.size(2), W = result.size(3);
  scalar_t* res_p = result.mutable_data_ptr<scalar_t>();
  for (int64_t l = 0; l < s.size(); ++l) {
    scalar_t* dst = res_p + (s.b[l] * C + s.c[l]) * H * W;
    for (int64_t y = 0; y < H; ++y) {
      const scalar_t* src = planes + l * plane + row(y);
      std::copy(src, src + W, dst + y * W);
    }
  }
}

// WalkValueFlag bits OR-ed over every value of t (OR is order-free: any split gives the same).
template <typename scalar_t, typename Flags>
int value_flags(const Tensor& t, Flags flags) {
  const scalar_t* p = t.const_data_ptr<scalar_t>();
  std::atomic<int> all{0};
  parallel_for(0, t.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    int f = 0;
    for (int64_t i = begin; i < end; ++i) f |= flags(p[i]);
    all.fetch_or(f, std::memory_order_relaxed);
  });
  return all.load();
}

// Forced choices, for tests: AFFEXT_WALK_CPU_PATH=portable|avx2, and
// AFFEXT_WALK_CPU_BLOCK=n (1..kChanBlock), the AVX2 path's largest channel block.
const char* env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// ---- portable path: random_walk.h's per-pixel step, as the GPU runs it ----------------------

// Channels of one image stepped together (each weight read once for them).
constexpr int kPortableChannels = 4;

template <typename scalar_t>
void walk_portable(const Tensor& cam, const Tensor& aff, const LiveSlots& slots, double beta,
                   int64_t iterations, const Offsets& o, int region, Tensor& result) {
  using acc_t = scalar_t;
  const int64_t B = cam.size(0), H = cam.size(2), W = cam.size(3), HW = H * W;
  const WalkGrid g = make_walk_grid(H, W, o.radius);
  const int K = o.count;
  std::vector<int> shift(K);
  for (int k = 0; k < K; ++k) shift[k] = g.shift(o, k);

  // Weights (B, K, S) and inverse degrees (B, S), zero in the padding.
  std::vector<acc_t> w(static_cast<size_t>(B * K * g.S));
  std::vector<acc_t> invd(static_cast<size_t>(B * g.S), acc_t(0));
  const scalar_t* aff_p = aff.const_data_ptr<scalar_t>();
  parallel_for(0, B * K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bk = begin; bk < end; ++bk)
      for (int64_t q = 0; q < g.S; ++q)
        w[bk * g.S + q] = walk_padded_weight<acc_t>(
            aff_p + bk * HW, g, o, static_cast<int>(bk % K), static_cast<int>(q / g.Wp),
            static_cast<int>(q % g.Wp), region, static_cast<acc_t>(beta));
  });
  parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H;
      const int y = static_cast<int>(row % H);
      for (int x = 0; x < W; ++x) {
        const int64_t q = g.at(y, x);
        invd[b * g.S + q] = walk_inv_degree(w.data() + b * K * g.S, g, o, q);
      }
    }
  });

  std::vector<ChannelBlock> chunks;
  for (int64_t b = 0; b < B; ++b)
    split_blocks(chunks, b, slots.first[b], slots.count[b],
                 (slots.count[b] + kPortableChannels - 1) / kPortableChannels);
  std::vector<acc_t> storage(static_cast<size_t>(2 * slots.size() * g.S), acc_t(0));
  acc_t* bufs[2] = {storage.data(), storage.data() + slots.size() * g.S};
  auto row = [&](int64_t y) { return g.at(static_cast<int>(y), 0); };
  copy_planes_in(cam, slots, bufs[0], g.S, row);

  const int64_t items = static_cast<int64_t>(chunks.size()) * H;
  for (int64_t it = 0; it < iterations; ++it) {
    const acc_t* cur = bufs[it % 2];
    acc_t* nxt = bufs[(it + 1) % 2];
    parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const ChannelBlock& chunk = chunks[item / H];
        const int y = static_cast<int>(item % H);
        for (int x = 0; x < W; ++x) {
          const int64_t q = g.at(y, x);
          const PaddedWeights<acc_t> wt{w.data() + chunk.b * K * g.S + q,
                                        invd.data() + chunk.b * g.S + q, g.S, shift.data()};
          const ShiftedValues<acc_t> v{cur + chunk.first * g.S + q, g.S, shift.data()};
          acc_t out[kPortableChannels];
          walk_step_pixel<kPortableChannels>(wt, v, K, chunk.n, out);
          for (int c = 0; c < chunk.n; ++c) nxt[(chunk.first + c) * g.S + q] = out[c];
        }
      }
    });
  }
  copy_planes_out(bufs[iterations % 2], g.S, row, slots, result);
}

#ifdef AFFEXT_HAVE_AVX2_PATH
// ---- AVX2 path ------------------------------------------------------------------------------

// Channels sharing one load of the taps: a block of 6 on two rows is 12 accumulators, and
// with two taps and a pixel it fills the 16 vector registers of AVX2. Blocks are sized to
// share out evenly over the threads (see plan_channel_blocks).
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

// The step kernels below are compiled for AVX2+FMA (step_avx2 is their only caller), so that
// they can name the FMA instruction.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

// acc += w * v, rounded once: an explicit FMA (an intrinsic, which no compiler splits into a
// multiply and an add), so that no compiler's choice to contract (or not) a multiply and an
// add can make two instantiations of step_run round a pixel differently.
template <typename scalar_t, typename vec>
__attribute__((always_inline)) inline void fma_into(vec& acc, const vec& w, const vec& v) {
  if constexpr (sizeof(scalar_t) == 4)
    acc = (vec)_mm256_fmadd_ps((__m256)w, (__m256)v, (__m256)acc);
  else
    acc = (vec)_mm256_fmadd_pd((__m256d)w, (__m256d)v, (__m256d)acc);
}

// One run of U x vectors of one unit of R rows, CB channels. A pixel vector both rows use is
// held in a register for their two FMAs: left alone, the compiler folds the load into each
// FMA and loads it twice, which costs as much as the FMAs (the loads cross cache lines at
// most shifts).
template <typename scalar_t, int CB, int U, int R>
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
          __asm__("" : "+x"(v));
          fma_into<scalar_t>(acc[0][u][c], w0[u], v);
          fma_into<scalar_t>(acc[1][u][c], w1[u], v);
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
          fma_into<scalar_t>(acc[r][u][c], w[u],
                             *reinterpret_cast<const vec*>(in[c] + off + u * lanes));
    }
  }
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < U; ++u)
      for (int c = 0; c < CB; ++c)
        *reinterpret_cast<vec*>(out[c] + r * Wp + x0 + u * lanes) = acc[r][u][c];
}

// The last run of a unit may be shorter than U vectors.
template <typename scalar_t, int CB, int U, int R>
__attribute__((always_inline)) inline void step_short_run(const TapRuns<scalar_t>& t, int64_t index,
                                                          const scalar_t* const* in,
                                                          scalar_t* const* out, int64_t x0,
                                                          int64_t Wp, int u) {
  if constexpr (U > 1) {
    if (u == U)
      step_run<scalar_t, CB, U, R>(t, index, in, out, x0, Wp);
    else
      step_short_run<scalar_t, CB, U - 1, R>(t, index, in, out, x0, Wp, u);
  } else {
    step_run<scalar_t, CB, 1, R>(t, index, in, out, x0, Wp);
  }
}

template <typename scalar_t, int CB>
__attribute__((always_inline)) inline void step_unit(const TapRuns<scalar_t>& t, int64_t unit,
                                                     const scalar_t* const* in,
                                                     scalar_t* const* out, const Layout& g) {
  constexpr int U = x_unroll(CB), R = kRows;
  constexpr int lanes = Vec<scalar_t>::lanes;
  const int64_t full = g.G / U;
  for (int64_t run = 0; run < full; ++run)
    step_run<scalar_t, CB, U, R>(t, unit * t.runs + run, in, out, run * U * lanes, g.Wp);
  if (full < t.runs)
    step_short_run<scalar_t, CB, U, R>(t, unit * t.runs + full, in, out, full * U * lanes, g.Wp,
                                       static_cast<int>(g.G - full * U));
}

// One unit (kRows rows from row unit * kRows) of one channel block:
// out = stencil(in). `in`/`out` point at the block's first channel plane.
template <typename scalar_t>
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
      step_unit<scalar_t, 6>(t, unit, ins, outs, g);
      break;
    case 5:
      step_unit<scalar_t, 5>(t, unit, ins, outs, g);
      break;
    case 4:
      step_unit<scalar_t, 4>(t, unit, ins, outs, g);
      break;
    case 3:
      step_unit<scalar_t, 3>(t, unit, ins, outs, g);
      break;
    case 2:
      step_unit<scalar_t, 2>(t, unit, ins, outs, g);
      break;
    default:
      step_unit<scalar_t, 1>(t, unit, ins, outs, g);
      break;
  }
}

// The step, compiled for AVX2+FMA (the only instantiation of the kernels above).
template <typename scalar_t>
__attribute__((target("avx2,fma"))) void step_avx2(const TapRuns<scalar_t>& t, const scalar_t* in,
                                                   scalar_t* out, int n, int64_t unit,
                                                   const Layout& g) {
  step_block_unit<scalar_t>(t, in, out, n, unit, g);
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

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

// Live channels grouped by image into blocks of near-equal size (at most max_block). With a
// channel for every thread, an image's block count is a multiple of the thread count, so that
// whole blocks share out evenly (21 channels on 2 threads: 5 + 5 and 5 + 6, not 8 + 8 on one
// thread and 5 on the other), and the threads need no barrier: psa's 3 channels on 2 threads
// run as 1 + 2 rather than split by rows, as fast in the median on a busy machine and without
// the rare walks that took 50 times longer, a thread stalled at one of the 256 barriers while
// the other had lost its core.
// On large maps a step is long enough that its barrier costs little, and whole blocks that do
// not share out evenly (3 channels on 2 threads: 1 + 2) would leave a thread idle a third of
// the time: there, unless the imbalance is under an eighth, the rows are split instead.
std::vector<ChannelBlock> plan_channel_blocks(const LiveSlots& slots, int threads, int64_t HW,
                                              int max_block) {
  constexpr int64_t kRowSplitArea = 128 * 128;
  std::vector<ChannelBlock> blocks;
  for (int64_t b = 0; b < static_cast<int64_t>(slots.first.size()); ++b) {
    const int64_t n_live = slots.count[b];
    int64_t n_blocks = (n_live + max_block - 1) / max_block;
    const int64_t idle = (threads - n_live % threads) % threads;  // slots a split leaves empty
    if (n_live >= threads && (HW < kRowSplitArea || 8 * idle <= n_live))
      n_blocks = (n_blocks + threads - 1) / threads * threads;
    // never an empty block (only a forced small max_block could round past n_live)
    split_blocks(blocks, b, slots.first[b], n_live, std::min(n_blocks, n_live));
  }
  return blocks;
}

// Taps (B, H, J, W), normalised by the column sums.
template <typename scalar_t>
std::vector<scalar_t> build_taps(const Tensor& aff, double beta, const Offsets& o, int region) {
  const int64_t B = aff.size(0), H = aff.size(2), W = aff.size(3), HW = H * W;
  const int64_t J = 2 * o.count + 1;
  std::vector<scalar_t> taps(static_cast<size_t>(B * H * J * W));
  const scalar_t* aff_p = aff.const_data_ptr<scalar_t>();
  parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> t(J);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, y = row % H;
      scalar_t* dst = taps.data() + row * J * W;
      for (int64_t x = 0; x < W; ++x) {
        const scalar_t d = walk_taps<scalar_t, scalar_t>(
            aff_p + b * o.count * HW, static_cast<int>(y), static_cast<int>(x), static_cast<int>(H),
            static_cast<int>(W), o, region, static_cast<scalar_t>(beta), t.data(), 1);
        for (int64_t j = 0; j < J; ++j) dst[j * W + x] = t[j] / d;
      }
    }
  });
  return taps;
}

// The x grid: from column 0, or shifted left so that a vector edge falls on column r - 1
// (the left edge of psa's region); whichever leaves fewer non-zero tap vectors. Then the
// padded row and plane strides.
template <typename scalar_t>
Layout choose_layout(const std::vector<scalar_t>& taps, int64_t B, int64_t H, int64_t W, int64_t J,
                     int radius) {
  constexpr int lanes = Vec<scalar_t>::lanes;
  Layout g;
  g.H = H;
  g.W = W;
  g.P = radius - 1;
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
  return g;
}

// Tap runs of every image for each x unroll the blocks use (keyed by block size), and each
// block's runs.
template <typename scalar_t>
struct BlockRuns {
  std::map<int, std::vector<TapRuns<scalar_t>>> by_size;
  std::vector<const TapRuns<scalar_t>*> of_block;
};

template <typename scalar_t>
void build_block_runs(BlockRuns<scalar_t>& r, const std::vector<scalar_t>& taps, const Layout& g,
                      const Offsets& o, const std::vector<ChannelBlock>& blocks, int64_t B) {
  const int64_t J = 2 * o.count + 1;
  std::vector<int64_t> shift(J);
  for (int j = 0; j < J; ++j) shift[j] = tap_dy(o, j) * g.Wp + tap_dx(o, j);
  for (const ChannelBlock& blk : blocks) r.by_size[blk.n];
  for (auto& [n, per_image] : r.by_size) {
    per_image.resize(B);
    for (int64_t b = 0; b < B; ++b)
      build_runs(per_image[b], taps.data() + b * g.H * J * g.W, g, shift, kRows, x_unroll(n));
  }
  for (const ChannelBlock& blk : blocks) r.of_block.push_back(&r.by_size[blk.n][blk.b]);
}

// Ping-pong buffers of the live channels, zero-padded: one allocation, aligned to a cache
// line, so that the odd plane stride also separates the two buffers' planes.
template <typename scalar_t>
struct PlaneBuffers {
  std::vector<scalar_t> storage;
  scalar_t* buf[2];
  PlaneBuffers(int64_t L, const Layout& g) {
    constexpr int64_t line = 64 / sizeof(scalar_t);
    storage.assign(static_cast<size_t>(2 * L * g.plane() + line), scalar_t(0));
    buf[0] = storage.data();
    while (reinterpret_cast<uintptr_t>(buf[0]) % 64 != 0) ++buf[0];
    buf[1] = buf[0] + L * g.plane();
  }
};

// The steps, threaded: whole blocks per thread where there are enough, else each step split
// by (block, unit of rows) with a barrier.
template <typename scalar_t>
void run_steps(const std::vector<ChannelBlock>& blocks, const BlockRuns<scalar_t>& runs,
               PlaneBuffers<scalar_t>& planes, const Layout& g, int64_t iterations, int threads) {
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  const int64_t units = (g.H + kRows - 1) / kRows;
  auto step_item = [&](int64_t it, int64_t blk_index, int64_t unit) {
    const ChannelBlock& blk = blocks[blk_index];
    step_avx2<scalar_t>(*runs.of_block[blk_index], planes.buf[it % 2] + blk.first * g.plane(),
                        planes.buf[(it + 1) % 2] + blk.first * g.plane(), blk.n, unit, g);
  };
  if (n_blocks >= threads) {
    // Enough independent channel blocks: each thread walks whole blocks, with no barrier;
    // a block's planes stay in cache for all its steps.
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
    for (int64_t blk = 0; blk < n_blocks; ++blk)
      for (int64_t it = 0; it < iterations; ++it)
        for (int64_t unit = 0; unit < units; ++unit) step_item(it, blk, unit);
  } else {
    // Few channels: split each step by (block, unit of rows), one barrier per step.
    const int64_t items = n_blocks * units;
#ifdef _OPENMP
#pragma omp parallel num_threads(static_cast<int>(std::min<int64_t>(threads, items)))
#endif
    for (int64_t it = 0; it < iterations; ++it) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t item = 0; item < items; ++item) step_item(it, item / units, item % units);
      // implicit barrier: the next step reads every row of this one
    }
  }
}

template <typename scalar_t>
void walk_avx2(const Tensor& cam, const Tensor& aff, const LiveSlots& slots, double beta,
               int64_t iterations, const Offsets& o, int region, int max_block, Tensor& result) {
  const int64_t B = cam.size(0), H = cam.size(2), W = cam.size(3);
  const int threads = static_cast<int>(num_threads());
  const std::vector<ChannelBlock> blocks = plan_channel_blocks(slots, threads, H * W, max_block);
  const std::vector<scalar_t> taps = build_taps<scalar_t>(aff, beta, o, region);
  const Layout g = choose_layout(taps, B, H, W, 2 * o.count + 1, o.radius);
  BlockRuns<scalar_t> runs;
  build_block_runs(runs, taps, g, o, blocks, B);
  PlaneBuffers<scalar_t> planes(slots.size(), g);
  auto row = [&](int64_t y) { return g.at(y, 0); };
  copy_planes_in(cam, slots, planes.buf[0], g.plane(), row);
  run_steps(blocks, runs, planes, g, iterations, threads);
  copy_planes_out(planes.buf[iterations % 2], g.plane(), row, slots, result);
}

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif  // AFFEXT_HAVE_AVX2_PATH

template <typename scalar_t>
void walk(const Tensor& cam, const Tensor& aff, const std::vector<uint8_t>& live, double beta,
          int64_t iterations, const Offsets& o, int region, Tensor& result) {
  const LiveSlots slots = live_slots(live, cam.size(0), cam.size(1));
  if (slots.size() == 0) return;  // result is already zero
  const char* path = env_or_empty("AFFEXT_WALK_CPU_PATH");
  AFFEXT_CHECK(!*path || !std::strcmp(path, "portable") || !std::strcmp(path, "avx2"),
               "AFFEXT_WALK_CPU_PATH must be 'portable' or 'avx2', got '", path, "'");
#ifdef AFFEXT_HAVE_AVX2_PATH
  if (std::strcmp(path, "portable") != 0 && cpu_has_avx2_fma()) {
    const int max_block = *env_or_empty("AFFEXT_WALK_CPU_BLOCK")
                              ? std::atoi(env_or_empty("AFFEXT_WALK_CPU_BLOCK"))
                              : kChanBlock;
    AFFEXT_CHECK(max_block >= 1 && max_block <= kChanBlock, "AFFEXT_WALK_CPU_BLOCK must be in [1, ",
                 kChanBlock, "]");
    walk_avx2<scalar_t>(cam, aff, slots, beta, iterations, o, region, max_block, result);
    return;
  }
#endif
  AFFEXT_CHECK(std::strcmp(path, "avx2") != 0,
               "AFFEXT_WALK_CPU_PATH=avx2 but this CPU or build has no AVX2+FMA path");
  walk_portable<scalar_t>(cam, aff, slots, beta, iterations, o, region, result);
}

}  // namespace

Tensor random_walk_cpu(const Tensor& cam_in, const Tensor& aff_in, double beta, int64_t iterations,
                       int64_t radius, int64_t region) {
  check_random_walk_args(cam_in, aff_in, beta, iterations, radius, region);
  const Offsets o = offsets_for(radius);
  const ScalarType dtype = walk_result_dtype(cam_in, aff_in);
  AFFEXT_CHECK(dtype == promote_floating(cam_in.scalar_type(), aff_in.scalar_type()),
               "on the CPU cam and aff must be float32 or float64, got ", cam_in.scalar_type(),
               " and ", aff_in.scalar_type());
  if (cam_in.numel() == 0) return torch::stable::new_zeros(cam_in, cam_in.sizes(), dtype);
  // A kernel runs below autograd: these copies record no graph (no detach needed).
  const Tensor cam = torch::stable::contiguous(to_dtype(cam_in, dtype));
  const Tensor aff = torch::stable::contiguous(to_dtype(aff_in, dtype));
  Tensor result = torch::stable::new_zeros(cam, cam.sizes());
  THO_DISPATCH_V2(dtype, "random_walk_cpu", AT_WRAP([&] {
                    throw_walk_value_flags(value_flags<scalar_t>(aff, walk_aff_flags<scalar_t>) |
                                           value_flags<scalar_t>(cam, walk_cam_flags<scalar_t>));
                    // A channel that is zero everywhere stays zero: walk only the others.
                    const std::vector<uint8_t> live = live_channels<scalar_t>(cam);
                    walk<scalar_t>(cam, aff, live, beta, iterations, o, static_cast<int>(region),
                                   result);
                  }),
                  AT_FLOATING_TYPES);
  return result;
}

STABLE_TORCH_LIBRARY_IMPL(affext, CPU, m) { m.impl("random_walk", TORCH_BOX(&random_walk_cpu)); }

}  // namespace affext
