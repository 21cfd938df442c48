// CPU random walk: taps built once, then `iterations` stencil steps over zero-padded channel
// buffers, so that the inner loop along x has no branch and vectorises. All-zero channels stay
// zero under the walk (it is linear per channel) and are skipped.
//
// Threads: one OpenMP team for the whole walk, splitting each step by (channel block, row),
// with one barrier per step, or, with enough channel blocks, whole blocks per thread and no
// barrier. The step kernel is compiled twice (AVX2+FMA and baseline) and picked at run time,
// so a portable build still runs 8 floats wide where the CPU can.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/checks.h"
#include "random_walk/random_walk.h"

namespace affext {
namespace {

constexpr int kChanBlock = 8;  // channels sharing one load of the taps

// Geometry of the padded buffers: P = r - 1 zero pixels on every side, rows of Wp.
struct Layout {
  int64_t H, W, Ws, P, Hp, Wp, J;
  int64_t plane() const { return Hp * Wp; }
};

// A block of up to kChanBlock live channels of one image.
struct ChannelBlock {
  int64_t b, first;  // image, first slot in the live buffers
  int n;
};

// 32-byte vectors (one AVX register; two SSE registers in the baseline build), loaded from
// any address.
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32), aligned(sizeof(T))));
  static constexpr int lanes = 32 / sizeof(T);
};

template <typename T>
constexpr int64_t x_block() {  // pixels of a row held in registers per channel: one vector
  return Vec<T>::lanes;
}

template <typename scalar_t, int CB>
__attribute__((always_inline)) inline void step_row(const scalar_t* __restrict__ taps,
                                                    const scalar_t* const* in,
                                                    scalar_t* const* out, const int64_t* shift,
                                                    const Layout& g) {
  using vec = typename Vec<scalar_t>::type;
  constexpr int lanes = Vec<scalar_t>::lanes;
  for (int64_t x0 = 0; x0 < g.Ws; x0 += lanes) {
    vec acc[CB];
    for (int c = 0; c < CB; ++c) acc[c] = vec{};
    for (int64_t j = 0; j < g.J; ++j) {
      const vec w = *reinterpret_cast<const vec*>(taps + j * g.Ws + x0);
      const int64_t off = x0 + shift[j];
      for (int c = 0; c < CB; ++c) acc[c] += w * *reinterpret_cast<const vec*>(in[c] + off);
    }
    for (int c = 0; c < CB; ++c) *reinterpret_cast<vec*>(out[c] + x0) = acc[c];
  }
}

// One row y of one channel block: out = stencil(in). `in`/`out` point at the block's first
// channel plane; `taps` at the (J, Ws) taps of row y.
template <typename scalar_t>
__attribute__((always_inline)) inline void step_block_row(const scalar_t* taps,
                                                          const scalar_t* in, scalar_t* out,
                                                          int n, int64_t y,
                                                          const int64_t* shift,
                                                          const Layout& g) {
  const int64_t row = (y + g.P) * g.Wp + g.P;
  const scalar_t* ins[kChanBlock];
  scalar_t* outs[kChanBlock];
  for (int c = 0; c < n; ++c) {
    ins[c] = in + c * g.plane() + row;
    outs[c] = out + c * g.plane() + row;
  }
  switch (n) {
    case 8: step_row<scalar_t, 8>(taps, ins, outs, shift, g); break;
    case 7: step_row<scalar_t, 7>(taps, ins, outs, shift, g); break;
    case 6: step_row<scalar_t, 6>(taps, ins, outs, shift, g); break;
    case 5: step_row<scalar_t, 5>(taps, ins, outs, shift, g); break;
    case 4: step_row<scalar_t, 4>(taps, ins, outs, shift, g); break;
    case 3: step_row<scalar_t, 3>(taps, ins, outs, shift, g); break;
    case 2: step_row<scalar_t, 2>(taps, ins, outs, shift, g); break;
    default: step_row<scalar_t, 1>(taps, ins, outs, shift, g); break;
  }
}

// The step compiled for AVX2+FMA, and for the baseline; chosen once at run time.
#if defined(__GNUC__) && defined(__x86_64__)
#define AFFEXT_HAVE_AVX2_PATH 1
template <typename scalar_t>
__attribute__((target("avx2,fma"))) void step_avx2(const scalar_t* taps, const scalar_t* in,
                                                  scalar_t* out, int n, int64_t y,
                                                  const int64_t* shift, const Layout& g) {
  step_block_row<scalar_t>(taps, in, out, n, y, shift, g);
}

inline bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

template <typename scalar_t>
void step_baseline(const scalar_t* taps, const scalar_t* in, scalar_t* out, int n, int64_t y,
                   const int64_t* shift, const Layout& g) {
  step_block_row<scalar_t>(taps, in, out, n, y, shift, g);
}

template <typename scalar_t>
using StepFn = void (*)(const scalar_t*, const scalar_t*, scalar_t*, int, int64_t,
                        const int64_t*, const Layout&);

template <typename scalar_t>
StepFn<scalar_t> pick_step() {
#ifdef AFFEXT_HAVE_AVX2_PATH
  if (cpu_has_avx2_fma()) return &step_avx2<scalar_t>;
#endif
  return &step_baseline<scalar_t>;
}

template <typename scalar_t>
void walk(const at::Tensor& cam, const at::Tensor& aff, const at::Tensor& live, double beta,
          int64_t iterations, const Offsets& o, int region, at::Tensor& result) {
  const int64_t B = cam.size(0), C = cam.size(1), H = cam.size(2), W = cam.size(3);
  Layout g;
  g.H = H;
  g.W = W;
  constexpr int64_t xb = x_block<scalar_t>();
  g.Ws = (W + xb - 1) / xb * xb;
  g.P = o.radius - 1;
  g.Hp = H + 2 * g.P;
  g.Wp = g.Ws + 2 * g.P;
  g.J = 2 * o.count + 1;

  // Live channels, grouped by image into blocks of near-equal size (at most kChanBlock).
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
    const int64_t n_blocks = (n_live + kChanBlock - 1) / kChanBlock;
    for (int64_t i = 0, start = first; i < n_blocks; ++i) {
      const int n = static_cast<int>((n_live * (i + 1)) / n_blocks - (n_live * i) / n_blocks);
      blocks.push_back({b, start, n});
      start += n;
    }
  }
  const int64_t L = static_cast<int64_t>(slot_b.size());
  if (L == 0) return;  // result is already zero

  // Taps (B, H, J, Ws), normalised by the column sums; zero for padding columns.
  using acc_t = scalar_t;
  const int64_t HW = H * W;
  std::vector<scalar_t> taps(static_cast<size_t>(B * H * g.J * g.Ws), scalar_t(0));
  const scalar_t* aff_p = aff.data_ptr<scalar_t>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> t(g.J);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, y = row % H;
      scalar_t* dst = taps.data() + row * g.J * g.Ws;
      for (int64_t x = 0; x < W; ++x) {
        const acc_t d = walk_taps<scalar_t, acc_t>(aff_p + b * o.count * HW, y, x, H, W, o,
                                                   region, static_cast<acc_t>(beta), t.data(), 1);
        for (int64_t j = 0; j < g.J; ++j) dst[j * g.Ws + x] = t[j] / d;
      }
    }
  });
  std::vector<int64_t> shift(g.J);
  for (int j = 0; j < g.J; ++j) shift[j] = tap_dy(o, j) * g.Wp + tap_dx(o, j);

  // Ping-pong buffers of the live channels, zero-padded.
  std::vector<scalar_t> buf0(static_cast<size_t>(L * g.plane()), scalar_t(0));
  std::vector<scalar_t> buf1(buf0.size(), scalar_t(0));
  const scalar_t* cam_p = cam.data_ptr<scalar_t>();
  for (int64_t l = 0; l < L; ++l) {
    const scalar_t* src = cam_p + (slot_b[l] * C + slot_c[l]) * HW;
    for (int64_t y = 0; y < H; ++y)
      std::copy(src + y * W, src + (y + 1) * W,
                buf0.data() + l * g.plane() + (y + g.P) * g.Wp + g.P);
  }

  scalar_t* bufs[2] = {buf0.data(), buf1.data()};
  const scalar_t* taps_p = taps.data();
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  const StepFn<scalar_t> step = pick_step<scalar_t>();
  auto step_item = [&](int64_t it, int64_t blk_index, int64_t y) {
    const ChannelBlock& blk = blocks[blk_index];
    step(taps_p + (blk.b * H + y) * g.J * g.Ws, bufs[it % 2] + blk.first * g.plane(),
         bufs[(it + 1) % 2] + blk.first * g.plane(), blk.n, y, shift.data(), g);
  };
  const int threads = at::get_num_threads();
  if (n_blocks >= threads) {
    // Enough independent channel blocks: each thread walks whole blocks, with no barrier;
    // a block's planes stay in cache for all its steps.
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
    for (int64_t blk = 0; blk < n_blocks; ++blk)
      for (int64_t it = 0; it < iterations; ++it)
        for (int64_t y = 0; y < H; ++y) step_item(it, blk, y);
  } else {
    // Few channels: split each step by rows, one barrier per step.
    const int64_t items = n_blocks * H;
#ifdef _OPENMP
#pragma omp parallel num_threads(static_cast<int>(std::min<int64_t>(threads, items)))
#endif
    for (int64_t it = 0; it < iterations; ++it) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t item = 0; item < items; ++item) step_item(it, item / H, item % H);
      // implicit barrier: the next step reads every row of this one
    }
  }

  const scalar_t* final_buf = bufs[iterations % 2];
  scalar_t* res_p = result.data_ptr<scalar_t>();
  for (int64_t l = 0; l < L; ++l) {
    scalar_t* dst = res_p + (slot_b[l] * C + slot_c[l]) * HW;
    for (int64_t y = 0; y < H; ++y) {
      const scalar_t* src = final_buf + l * g.plane() + (y + g.P) * g.Wp + g.P;
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
                   "on the CPU cam and aff must be float32 or float64, got ",
                   cam_in.scalar_type(), " and ", aff_in.scalar_type());
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
