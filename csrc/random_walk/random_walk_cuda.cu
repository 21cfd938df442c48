// CUDA random walk: the launch layer around random_walk.h's math.
//
// Design
// - Symmetry: a step needs only A_k[q] (K planes) and 1 / d_q per pixel (random_walk.h), built
//   once per call into padded planes (WalkGrid) by walk_weights_kernel / walk_degrees_kernel:
//   K + 1 numbers a pixel instead of 2K + 1 taps. The CAMs are copied into zeroed padded planes
//   (walk_planes_in_kernel), which finds each channel's liveness (a channel zero everywhere
//   stays zero under the linear walk) and a per-map list of live channels on the device; no
//   host synchronisation decides anything.
// - One persistent cooperative kernel (walk_kernel) runs every step. Its blocks own tiles of
//   (map, tile_rows x 32 pixels) over the whole batch, round robin, for all steps; a step stages
//   the tile and its r - 1 halo of up to kWalkChannels live channels of the current plane into
//   shared memory, steps every pixel of the tile for those channels together (each weight read
//   once per pixel, chunk and step), and writes the next plane; grid.sync() separates steps.
//   Dead channels are never read: the chunk loop runs over the map's live list.
// - Where a block's tiles' weights fit in shared memory (small maps, batches of small maps),
//   they are loaded there once as 2K + 1 per-pixel values and stay for all steps; otherwise
//   each step reads the K + 1 planes through the read-only cache (L2-resident up to ~512x512).
// - Planes ping-pong in global memory; they are read with __ldcg and written with __stcg (L2,
//   not the incoherent L1), and grid.sync() orders one step's writes before the next's reads.
// - Work units: resident kernels step the tiles whose weights they hold; streamed ones take
//   (tile, chunk of live channels) units round robin (walk_plan.h), so maps with many live
//   channels spread over more blocks instead of one block holding every grid barrier.
// - Without cooperative launch support (cudaDevAttrCooperativeLaunch), or when the driver
//   refuses the cooperative launch (MPS, green contexts), the same kernel runs one step a
//   launch (a refusal warns once). Cooperative launches can be captured in a CUDA graph.
// - The plan's set-up (device attributes, occupancy, the shared-memory limit raised once to
//   the opt-in maximum) is made once per device and kernel variant under a lock (launch plan).
// - Value checks (aff in [0, 1] and finite, cam finite) are made as the values are read and
//   OR-ed into a device flag; the host reads it once at the end (the call's only host
//   synchronisation), or, under stream capture, a device assert checks it: a replay with bad
//   values then leaves the CUDA context unusable for the rest of the process.
// - Deterministic: each output pixel is computed by one thread with walk_step_pixel's fixed
//   order and explicit FMAs; no floating-point atomics.
// - Memory: 2 B C planes + (K + 1) B planes of (H + 2r - 2)(W + 2r - 2): O((K + C) N).
//
// Performance model (float32, r = 5: K = 34, halo P = 4; H100/H200, 132 SMs, ~50 MB L2)
// Per pixel, live channel and step: 68 FMAs, 68 shared-memory value loads, and 68 weight loads
// per pixel and chunk of up to 4 channels; shared memory delivers 32 words per clock per SM,
// so with 3 live channels a pixel costs ~8.5 SM-clocks of loads a step. The grid barrier costs
// ~1-3 us, the staging round trip to L2 ~1 us.
// - 56x56, 3 live (psa-shaped): 56 tiles of 2 x 32, weights resident (35 KB a block). A step:
//   ~1 us of staging, ~1 us of dependent FMAs in 2 warps, one barrier: ~3 us; 256 steps
//   ~0.8 ms. All 21 live: 6 chunks a step, ~2x that.
// - 16 maps of 63x63, 3 live: 256 tiles of 8 x 32, two per block, resident (154 KB a block on
//   132 SMs). A step: 512 pixels x 8.5 clocks ~2.6 us + staging + barrier ~5 us; 256 steps
//   ~1.3 ms, ~12,000 maps/s.
// - 512x512, 3 live: 1024 tiles of 8 x 32, weights not resident (37.8 MB of weights, 6.6 MB of
//   live planes: L2-resident). A step reads ~38 MB of weights + ~8 MB of staged halos and
//   writes 3 MB: ~9 us at ~5.5 TB/s of L2, overlapped with ~10 us of shared-memory loads
//   (262k pixels x 8.5 clocks over 132 SMs); ~12-15 us a step, ~3-4 ms for 256 steps.
// Compiled, not yet run on a GPU: these are estimates, the benchmarks measure.
#include "common/stable.h"

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <tuple>

#include "common/cuda_utils.cuh"
#include "common/launch_cache.h"
#include "random_walk/random_walk.h"
#include "random_walk/walk_plan.h"

namespace affext {
namespace {

namespace cg = cooperative_groups;

// ---- set-up kernels -------------------------------------------------------------------------

// Block bc copies cam[bc] into plane bc (zeroed, padded) and records whether the channel is live
// (non-zero somewhere) and whether it holds a non-finite value.
template <typename scalar_t, typename acc_t>
__global__ void walk_planes_in_kernel(const scalar_t* __restrict__ cam, acc_t* __restrict__ planes,
                                      uint8_t* __restrict__ live, int* __restrict__ flags,
                                      WalkGrid g) {
  const int64_t bc = blockIdx.x;
  const int64_t HW = static_cast<int64_t>(g.H) * g.W;
  const scalar_t* src = cam + bc * HW;
  acc_t* dst = planes + bc * g.S;
  int nonzero = 0, bad = 0;
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
    const acc_t v = static_cast<acc_t>(src[i]);
    nonzero |= v != acc_t(0);
    bad |= walk_cam_flags(v);
    dst[g.at(static_cast<int>(i / g.W), static_cast<int>(i % g.W))] = v;
  }
  nonzero = __syncthreads_or(nonzero);
  bad = __syncthreads_or(bad);
  if (threadIdx.x == 0) {
    live[bc] = nonzero ? 1 : 0;
    if (bad) atomicOr(flags, kCamNonFinite);
  }
}

// One block: per map, its live channels in order (live_idx[b, 0 .. live_n[b])), then the
// work-unit starts of walk_plan.h (unit_start[B]: the number of units).
__global__ void walk_live_list_kernel(const uint8_t* __restrict__ live, int* __restrict__ live_idx,
                                      int* __restrict__ live_n, int64_t* __restrict__ unit_start,
                                      int64_t B, int C, int64_t tiles_per_map) {
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) {
    int n = 0;
    for (int c = 0; c < C; ++c)
      if (live[b * C + c]) live_idx[b * C + n++] = c;
    live_n[b] = n;
  }
  __syncthreads();
  if (threadIdx.x == 0) walk_unit_starts(live_n, B, tiles_per_map, unit_start);
}

// The padded weights w (B, K, S); every affinity value is checked once, at its own pixel.
template <typename scalar_t, typename acc_t>
__global__ void walk_weights_kernel(const scalar_t* __restrict__ aff, acc_t* __restrict__ w,
                                    int* __restrict__ flags, int64_t B, WalkGrid g, Offsets o,
                                    int region, acc_t beta) {
  const int K = o.count;
  const int64_t HW = static_cast<int64_t>(g.H) * g.W;
  int bad = 0;
  for (int64_t i = grid_first(); i < B * K * g.S; i += grid_stride()) {
    const int64_t bk = i / g.S;
    const int64_t q = i % g.S;
    const int py = static_cast<int>(q / g.Wp), px = static_cast<int>(q % g.Wp);
    const scalar_t* aff_k = aff + bk * HW;
    const int y = py - g.P, x = px - g.P;
    if (y >= 0 && y < g.H && x >= 0 && x < g.W)
      bad |= walk_aff_flags(static_cast<acc_t>(aff_k[static_cast<int64_t>(y) * g.W + x]));
    w[i] = walk_padded_weight<acc_t>(aff_k, g, o, static_cast<int>(bk % K), py, px, region, beta);
  }
  for (int lane = 16; lane > 0; lane /= 2) bad |= __shfl_xor_sync(0xffffffffu, bad, lane);
  if (threadIdx.x % 32 == 0 && bad) atomicOr(flags, bad);
}

// 1 / d_q of every pixel into invd (B, S) (zeroed: the padding is never read).
template <typename acc_t>
__global__ void walk_degrees_kernel(const acc_t* __restrict__ w, acc_t* __restrict__ invd,
                                    int64_t B, WalkGrid g, Offsets o) {
  const int64_t HW = static_cast<int64_t>(g.H) * g.W;
  for (int64_t i = grid_first(); i < B * HW; i += grid_stride()) {
    const int64_t b = i / HW, p = i % HW;
    const int64_t q = g.at(static_cast<int>(p / g.W), static_cast<int>(p % g.W));
    invd[b * g.S + q] = walk_inv_degree(w + b * o.count * g.S, g, o, q);
  }
}

// out (B, C, H, W) from the final planes; dead channels are zero.
template <typename acc_t>
__global__ void walk_planes_out_kernel(const acc_t* __restrict__ planes,
                                       const uint8_t* __restrict__ live, acc_t* __restrict__ out,
                                       int64_t BC, WalkGrid g) {
  const int64_t HW = static_cast<int64_t>(g.H) * g.W;
  for (int64_t i = grid_first(); i < BC * HW; i += grid_stride()) {
    const int64_t bc = i / HW, p = i % HW;
    out[i] = live[bc]
                 ? planes[bc * g.S + g.at(static_cast<int>(p / g.W), static_cast<int>(p % g.W))]
                 : acc_t(0);
  }
}

// Under stream capture the host cannot read the flag: the replay asserts on the device. A
// device assert leaves the CUDA context unusable (every later CUDA call in the process fails),
// so a caller that replays a captured walk on new values must check them first (see
// affext/ops/random_walk.py).
__global__ void walk_assert_values_kernel(const int* flags) {
  CUDA_KERNEL_ASSERT_MSG(*flags == 0,
                         "affext.random_walk: aff outside [0, 1] or not finite, or cam not finite");
}

// ---- the walk ------------------------------------------------------------------------------

template <typename acc_t>
struct WalkParams {
  const acc_t* w;     // (B, K, S)
  const acc_t* invd;  // (B, S)
  acc_t* planes[2];   // (B, C, S) each
  const int* live_idx;
  const int* live_n;
  const int64_t* unit_start;  // (B + 1): walk_plan.h's work units
  int64_t B;
  int C;
  WalkGrid g;
  Offsets o;
  int tile_rows, tiles_x, tiles_y;
  int64_t tiles;
  int resident_tiles;  // tiles a block keeps the weights of (resident kernels)
  int64_t first_step, steps;
};

template <typename acc_t>
__device__ WalkSmem walk_smem(int K, int P, int tile_rows, int resident_tiles) {
  return ::affext::walk_smem(K, P, tile_rows, resident_tiles, sizeof(acc_t));
}

// A pixel's 2K + 1 weights kept in shared memory: forward, backward, then 1 / d, each a
// plane of the tile's pixels.
template <typename acc_t>
struct TileWeights {
  const acc_t* t;  // at the pixel in plane 0
  int stride;      // tile pixels
  int K;
  __device__ acc_t forward(int k) const { return t[k * stride]; }
  __device__ acc_t backward(int k) const { return t[(K + k) * stride]; }
  __device__ acc_t inv_degree() const { return t[2 * K * stride]; }
};

struct Tile {
  int64_t b;
  int y0, x0;
};

template <typename acc_t>
__device__ Tile walk_tile(const WalkParams<acc_t>& p, int64_t t) {
  const int64_t per_map = static_cast<int64_t>(p.tiles_y) * p.tiles_x;
  const int r = static_cast<int>(t % per_map);
  return {t / per_map, (r / p.tiles_x) * p.tile_rows, (r % p.tiles_x) * kTileW};
}

template <typename acc_t, bool Resident>
__global__ void __launch_bounds__(kMaxTileRows* kTileW) walk_kernel(const WalkParams<acc_t> p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const WalkGrid& g = p.g;
  const int K = p.o.count, P = g.P;
  const WalkSmem layout = walk_smem<acc_t>(K, P, p.tile_rows, Resident ? p.resident_tiles : 0);
  int* wshift = reinterpret_cast<int*>(smem_raw + layout.shifts);  // in the global planes
  int* tshift = wshift + K;                                        // in the stage
  acc_t* stage = reinterpret_cast<acc_t*>(smem_raw + layout.stage);
  acc_t* taps = reinterpret_cast<acc_t*>(smem_raw + layout.taps);
  const int TWp = kTileW + 2 * P;              // stage row
  const int TS = (p.tile_rows + 2 * P) * TWp;  // stage channel
  const int TP = p.tile_rows * kTileW;         // tile pixels
  const int i = threadIdx.x, ly = i / kTileW, lx = i % kTileW;
  for (int k = i; k < K; k += blockDim.x) {
    wshift[k] = g.shift(p.o, k);
    tshift[k] = p.o.dy[k] * TWp + p.o.dx[k];
  }
  __syncthreads();

  if constexpr (Resident) {
    for (int m = 0; m < p.resident_tiles; ++m) {
      const int64_t t = blockIdx.x + static_cast<int64_t>(m) * gridDim.x;
      if (t >= p.tiles) break;
      const Tile tile = walk_tile(p, t);
      const int y = tile.y0 + ly, x = tile.x0 + lx;
      const bool inside = y < g.H && x < g.W;
      const int64_t q = inside ? g.at(y, x) : 0;
      const PaddedWeights<acc_t> src{p.w + tile.b * K * g.S + q, p.invd + tile.b * g.S + q, g.S,
                                     wshift};
      acc_t* dst = taps + static_cast<int64_t>(m) * (2 * K + 1) * TP + i;
      for (int k = 0; k < K; ++k) {
        dst[k * TP] = inside ? src.forward(k) : acc_t(0);
        dst[(K + k) * TP] = inside ? src.backward(k) : acc_t(0);
      }
      dst[2 * K * TP] = inside ? src.inv_degree() : acc_t(0);
    }
    // the first step's barrier below orders these writes before their reads
  }

  // One chunk of up to kWalkChannels live channels of one tile: stage them with the halo, step
  // every pixel of the tile, write the next plane. m: the tile's resident slot.
  const auto step_chunk = [&](const acc_t* cur, acc_t* nxt, const Tile& tile, int c0, int n_live,
                              int m) {
    const int nc = min(kWalkChannels, n_live - c0);
    int64_t plane[kWalkChannels];
#pragma unroll
    for (int c = 0; c < kWalkChannels; ++c)
      plane[c] = c < nc ? (tile.b * p.C + __ldg(p.live_idx + tile.b * p.C + c0 + c)) * g.S : 0;
    __syncthreads();  // the previous chunk's readers are done with the stage
#pragma unroll
    for (int c = 0; c < kWalkChannels; ++c) {
      if (c >= nc) break;
      for (int e = i; e < TS; e += blockDim.x) {
        const int py = tile.y0 + e / TWp, px = tile.x0 + e % TWp;  // padded coordinates
        acc_t v = acc_t(0);
        if (py < g.Hp && px < g.Wp)
          v = __ldcg(cur + plane[c] + static_cast<int64_t>(py) * g.Wp + px);
        stage[c * TS + e] = v;
      }
    }
    __syncthreads();
    const int y = tile.y0 + ly, x = tile.x0 + lx;
    if (y < g.H && x < g.W) {
      const int64_t q = g.at(y, x);
      const ShiftedValues<acc_t> v{stage + (ly + P) * TWp + lx + P, TS, tshift};
      acc_t out[kWalkChannels];
      if constexpr (Resident) {
        const TileWeights<acc_t> wt{taps + static_cast<int64_t>(m) * (2 * K + 1) * TP + i, TP, K};
        walk_step_pixel<kWalkChannels>(wt, v, K, nc, out);
      } else {
        const PaddedWeights<acc_t> wt{p.w + tile.b * K * g.S + q, p.invd + tile.b * g.S + q, g.S,
                                      wshift};
        walk_step_pixel<kWalkChannels>(wt, v, K, nc, out);
      }
#pragma unroll
      for (int c = 0; c < kWalkChannels; ++c)
        if (c < nc) __stcg(nxt + plane[c] + q, out[c]);
    }
  };

  const int64_t per_map = static_cast<int64_t>(p.tiles_y) * p.tiles_x;
  for (int64_t s = 0; s < p.steps; ++s) {
    const acc_t* cur = p.planes[(p.first_step + s) & 1];
    acc_t* nxt = p.planes[(p.first_step + s + 1) & 1];
    if constexpr (Resident) {
      // A block steps the tiles whose weights it holds, every chunk of each (the weights cannot
      // move to another block; the plan keeps this mode to grids of at most 3 tiles a block).
      int m = 0;
      for (int64_t t = blockIdx.x; t < p.tiles; t += gridDim.x, ++m) {
        const Tile tile = walk_tile(p, t);
        const int n_live = __ldg(p.live_n + tile.b);
        for (int c0 = 0; c0 < n_live; c0 += kWalkChannels)
          step_chunk(cur, nxt, tile, c0, n_live, m);
      }
    } else {
      // (tile, chunk) work units round robin over the blocks (walk_plan.h).
      const int64_t units = __ldg(p.unit_start + p.B);
      for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
        const WalkUnit unit = walk_unit(u, p.unit_start, p.B, per_map);
        const Tile tile = walk_tile(p, unit.b * per_map + unit.tile);
        step_chunk(cur, nxt, tile, unit.chunk * kWalkChannels, __ldg(p.live_n + tile.b), 0);
      }
    }
    if (s + 1 < p.steps) cg::this_grid().sync();
  }
}

// ---- launch plan ---------------------------------------------------------------------------
//
// Set-up that does not change while the process runs is made once and kept (LaunchCache):
// - per device: its SM count, cooperative launch support and opt-in shared memory a block;
// - per (device, walk kernel): its dynamic shared-memory limit raised once to the device's
//   opt-in maximum, under the cache's lock, before any occupancy query or launch of it. (Setting
//   it to each call's size, as before, let one thread lower it between another's set and
//   launch: "invalid argument".)
// - per (device, dtype size, K, tile rows, resident tiles (0: streamed)): blocks per SM.
// A call then plans with arithmetic only (walk_plan.h).

struct DeviceInfo {
  DeviceLimits limits;
  bool cooperative_refused;  // a cooperative launch was refused once: plan one step a launch
};

LaunchCache<int, DeviceInfo>& device_infos() {
  static LaunchCache<int, DeviceInfo> cache;
  return cache;
}

DeviceInfo device_info(int device) {
  return device_infos().get(device, [device] {
    int sms = 0, coop = 0, max_smem = 0;
    check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    check_cuda(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
    check_cuda(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    return DeviceInfo{{sms, coop != 0, max_smem}, false};
  });
}

// The kernel variant's shared-memory limit at the device's opt-in maximum, once (the current
// device is `device`: the caller holds a guard).
template <typename acc_t, bool Resident>
void raise_smem_limit(int device, int max_smem) {
  static LaunchCache<int, bool> raised;
  raised.get(device, [max_smem] {
    check_cuda(cudaFuncSetAttribute(walk_kernel<acc_t, Resident>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem));
    return true;
  });
}

// (device, sizeof(acc_t), K, tile rows, resident tiles) -> blocks per SM. The entry's smem is a
// function of the rest of the key (walk_smem), so the key says everything.
using OccupancyKey = std::tuple<int, int, int, int, int>;

template <typename acc_t>
int blocks_per_sm(int device, int max_smem, int K, int tile_rows, int resident_tiles, size_t smem) {
  static LaunchCache<OccupancyKey, int> cache;
  const OccupancyKey key{device, static_cast<int>(sizeof(acc_t)), K, tile_rows, resident_tiles};
  return cache.get(key, [&] {
    int blocks = 0;
    const int threads = tile_rows * kTileW;
    if (resident_tiles > 0) {
      raise_smem_limit<acc_t, true>(device, max_smem);
      check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, walk_kernel<acc_t, true>,
                                                               threads, smem));
    } else {
      raise_smem_limit<acc_t, false>(device, max_smem);
      check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, walk_kernel<acc_t, false>,
                                                               threads, smem));
    }
    return blocks;
  });
}

// AFFEXT_WALK_CUDA_MODE=resident|streamed|per-step forces a mode (tests: all three give the
// same bits). `force_per_step`: after a refused cooperative launch.
template <typename acc_t>
WalkPlan plan_walk_cuda(int64_t B, const WalkGrid& g, int K, int C, int device,
                        bool force_per_step) {
  const char* env = std::getenv("AFFEXT_WALK_CUDA_MODE");
  WalkMode mode = WalkMode::Auto;
  AFFEXT_CHECK(parse_walk_mode(env, &mode),
               "AFFEXT_WALK_CUDA_MODE must be resident, streamed or per-step, got '", env, "'");
  const DeviceInfo info = device_info(device);
  DeviceLimits limits = info.limits;
  if (info.cooperative_refused || force_per_step) {
    limits.cooperative = false;
    if (mode != WalkMode::Resident) mode = WalkMode::PerStep;
  }
  const auto occupancy = [&](int resident_tiles, int tile_rows, size_t smem) {
    return blocks_per_sm<acc_t>(device, limits.max_smem, K, tile_rows, resident_tiles, smem);
  };
  const WalkPlan plan = plan_walk(B, g.H, g.W, g.P, K, C, sizeof(acc_t), mode, limits, occupancy);
  switch (plan.error) {
    case PlanError::None:
      break;
    case PlanError::ResidentDoesNotFit:
      AFFEXT_CHECK(false, "AFFEXT_WALK_CUDA_MODE=resident, but this walk's weights do not ",
                   "fit in shared memory (or the GPU has no cooperative launch)");
    case PlanError::SmemTooLarge:
      STD_TORCH_CHECK(false, "random_walk: radius ", g.P + 1, " needs ", plan.smem,
                      " bytes of shared memory a block, the GPU has ", limits.max_smem);
    case PlanError::NoOccupancy:
      STD_TORCH_CHECK(false, "random_walk: the walk kernel cannot run on this GPU");
  }
  return plan;
}

// A refusal of a cooperative launch by the driver (too large a grid for this context, e.g.
// under MPS or with green contexts that hold fewer SMs; or not supported there), as opposed
// to an error of the kernel or the arguments.
bool cooperative_refused(cudaError_t err) {
  return err == cudaErrorCooperativeLaunchTooLarge || err == cudaErrorNotSupported ||
         err == cudaErrorNotPermitted;
}

template <typename acc_t>
cudaError_t launch_cooperative(const WalkPlan& plan, const WalkParams<acc_t>& params,
                               cudaStream_t stream) {
  auto kernel = plan.resident ? walk_kernel<acc_t, true> : walk_kernel<acc_t, false>;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(plan.grid);
  config.blockDim = dim3(plan.tile_rows * kTileW);
  config.dynamicSmemBytes = plan.smem;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, params);
}

// One step a launch: no grid-wide barrier inside a kernel.
template <typename acc_t>
void launch_per_step(const WalkPlan& plan, WalkParams<acc_t> params, cudaStream_t stream) {
  const dim3 grid(plan.grid), block(plan.tile_rows * kTileW);
  auto kernel = plan.resident ? walk_kernel<acc_t, true> : walk_kernel<acc_t, false>;
  const int64_t steps = params.steps;
  params.steps = 1;
  for (int64_t s = 0; s < steps; ++s) {
    params.first_step = s;
    kernel<<<grid, block, plan.smem, stream>>>(params);
    check_launch();
  }
}

// The walk's steps; a refused cooperative launch outside capture falls back to one step a
// launch (and later calls on this device plan so from the start), with one warning.
template <typename acc_t>
void launch_walk(const WalkPlan& plan, WalkParams<acc_t> params, int64_t B, const WalkGrid& g,
                 int K, int C, int device, bool capturing, cudaStream_t stream) {
  if (!plan.cooperative) return launch_per_step(plan, params, stream);
  const cudaError_t err = launch_cooperative(plan, params, stream);
  if (err == cudaSuccess) return;
  (void)cudaGetLastError();  // a launch error is not sticky: clear it
  if (!cooperative_refused(err)) check_cuda(err);
  STD_TORCH_CHECK(!capturing, "random_walk: the GPU refused the cooperative launch of the walk ",
                  "kernel under CUDA graph capture (", cudaGetErrorString(err), "); run the walk ",
                  "once before capturing, so that later calls on this device plan one step a "
                  "launch");
  DeviceInfo info = device_info(device);
  info.cooperative_refused = true;
  device_infos().set(device, info);
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true)) {  // a Python UserWarning, once a process
    const std::string warning =
        message("affext.random_walk: the GPU refused the cooperative launch of the walk (",
                cudaGetErrorString(err),
                "); the walk runs one step a kernel launch instead (same results, slower)");
    aoti_torch_warn(__func__, __FILE__, static_cast<uint32_t>(__LINE__), warning.c_str());
  }
  const WalkPlan fallback = plan_walk_cuda<acc_t>(B, g, K, C, device, true);
  STD_TORCH_CHECK(fallback.tiles_per_map == plan.tiles_per_map && !fallback.cooperative);
  params.resident_tiles = fallback.resident_tiles;
  launch_per_step(fallback, params, stream);
}

template <typename scalar_t>
Tensor walk(const Tensor& cam, const Tensor& aff, double beta, int64_t iterations, const Offsets& o,
            int region) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t B = cam.size(0), C = cam.size(1);
  const WalkGrid g = make_walk_grid(cam.size(2), cam.size(3), o.radius);
  const int K = o.count;
  const ScalarType acc_dtype =
      std::is_same_v<acc_t, double> ? ScalarType::Double : ScalarType::Float;
  const ScalarType int_dtype = ScalarType::Int;
  const cudaStream_t stream = current_stream();
  const int device = cam.get_device_index();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check_cuda(cudaStreamIsCapturing(stream, &capture));
  const bool capturing = capture != cudaStreamCaptureStatusNone;
  const WalkPlan plan = plan_walk_cuda<acc_t>(B, g, K, static_cast<int>(C), device, false);

  Tensor flags = torch::stable::new_zeros(cam, {1}, int_dtype);
  Tensor planes = torch::stable::new_zeros(cam, {2, B * C, g.S}, acc_dtype);
  Tensor live = torch::stable::new_empty(cam, {B * C}, ScalarType::Byte);
  Tensor live_idx = torch::stable::new_empty(cam, {B, C}, int_dtype);
  Tensor live_n = torch::stable::new_empty(cam, {B}, int_dtype);
  Tensor unit_start = torch::stable::new_empty(cam, {B + 1}, ScalarType::Long);
  Tensor w = torch::stable::new_empty(cam, {B, K, g.S}, acc_dtype);
  Tensor invd = torch::stable::new_zeros(cam, {B, g.S}, acc_dtype);
  Tensor out = torch::stable::new_empty(cam, cam.sizes(), acc_dtype);
  acc_t* const plane_bufs[2] = {planes.mutable_data_ptr<acc_t>(),
                                planes.mutable_data_ptr<acc_t>() + B * C * g.S};

  walk_planes_in_kernel<scalar_t, acc_t><<<static_cast<unsigned int>(B * C), kThreads, 0, stream>>>(
      cam.const_data_ptr<scalar_t>(), plane_bufs[0], live.mutable_data_ptr<uint8_t>(),
      flags.mutable_data_ptr<int>(), g);
  check_launch();
  walk_live_list_kernel<<<1, kThreads, 0, stream>>>(
      live.const_data_ptr<uint8_t>(), live_idx.mutable_data_ptr<int>(),
      live_n.mutable_data_ptr<int>(), unit_start.mutable_data_ptr<int64_t>(), B,
      static_cast<int>(C), plan.tiles_per_map);
  check_launch();
  walk_weights_kernel<scalar_t, acc_t><<<blocks_for(B * K * g.S), kThreads, 0, stream>>>(
      aff.const_data_ptr<scalar_t>(), w.mutable_data_ptr<acc_t>(), flags.mutable_data_ptr<int>(), B,
      g, o, region, static_cast<acc_t>(beta));
  check_launch();
  walk_degrees_kernel<acc_t><<<blocks_for(B * g.H * g.W), kThreads, 0, stream>>>(
      w.const_data_ptr<acc_t>(), invd.mutable_data_ptr<acc_t>(), B, g, o);
  check_launch();

  WalkParams<acc_t> params{};
  params.w = w.const_data_ptr<acc_t>();
  params.invd = invd.const_data_ptr<acc_t>();
  params.planes[0] = plane_bufs[0];
  params.planes[1] = plane_bufs[1];
  params.live_idx = live_idx.const_data_ptr<int>();
  params.live_n = live_n.const_data_ptr<int>();
  params.unit_start = unit_start.const_data_ptr<int64_t>();
  params.B = B;
  params.C = static_cast<int>(C);
  params.g = g;
  params.o = o;
  params.tile_rows = plan.tile_rows;
  params.tiles_x = plan.tiles_x;
  params.tiles_y = plan.tiles_y;
  params.tiles = plan.tiles;
  params.resident_tiles = plan.resident_tiles;
  params.first_step = 0;
  params.steps = iterations;
  launch_walk(plan, params, B, g, K, static_cast<int>(C), device, capturing, stream);

  walk_planes_out_kernel<acc_t><<<blocks_for(B * C * g.H * g.W), kThreads, 0, stream>>>(
      plane_bufs[iterations % 2], live.const_data_ptr<uint8_t>(), out.mutable_data_ptr<acc_t>(),
      B * C, g);
  check_launch();

  if (!capturing) {
    // the call's one host synchronisation
    throw_walk_value_flags(static_cast<int>(item<int64_t>(flags)));
  } else {
    walk_assert_values_kernel<<<1, 1, 0, stream>>>(flags.const_data_ptr<int>());
    check_launch();
  }
  return out;
}

}  // namespace

Tensor random_walk_cuda(const Tensor& cam_in, const Tensor& aff_in, double beta, int64_t iterations,
                        int64_t radius, int64_t region) {
  check_random_walk_args(cam_in, aff_in, beta, iterations, radius, region);
  const Offsets o = offsets_for(radius);
  const torch::stable::accelerator::DeviceGuard guard(cam_in.get_device_index());
  const ScalarType result_dtype = walk_result_dtype(cam_in, aff_in);
  if (cam_in.numel() == 0) return torch::stable::new_zeros(cam_in, cam_in.sizes(), result_dtype);
  // Both inputs in their promoted dtype (half and bfloat16 are read as such, summed in float32).
  // A kernel runs below autograd: these copies record no graph (no detach needed).
  const ScalarType dtype = promote_floating(cam_in.scalar_type(), aff_in.scalar_type());
  const Tensor cam = torch::stable::contiguous(to_dtype(cam_in, dtype));
  const Tensor aff = torch::stable::contiguous(to_dtype(aff_in, dtype));
  Tensor out;
  THO_DISPATCH_V2(dtype, "random_walk_cuda", AT_WRAP([&] {
                    out = walk<scalar_t>(cam, aff, beta, iterations, o, static_cast<int>(region));
                  }),
                  AT_FLOATING_TYPES, ScalarType::Half, ScalarType::BFloat16);
  return out;
}

STABLE_TORCH_LIBRARY_IMPL(affext, CUDA, m) { m.impl("random_walk", TORCH_BOX(&random_walk_cuda)); }

}  // namespace affext
