// CUDA kernels of the pairwise affinity: the launch layer around affinity.h's math.
//
// Both passes work on tiles of kTileW x kTileH pixels of one image, one thread per pixel (one
// warp per tile row, so that the shared-memory reads of a warp are consecutive words). A block
// streams the image's channels through shared memory in chunks: each chunk holds the tile's
// features and the halo its neighbourhood reaches, V channels interleaved per element (a
// "pack": two channels for 4- and 2-byte types, so that one shared load serves two channels),
// double buffered: the next chunk is read from global memory into registers while the current
// one is computed from shared memory.
// - Forward: each thread keeps the L1 sums of its pixel's offsets in registers across all
//   chunks (kSlots offsets per block; larger radii use more blocks, blockIdx.z) and writes
//   exp(-sum / C) once. Every feature is read from global memory once per block.
// - Backward: each thread keeps in registers the weights w = grad * aff / C of the 2K pairs
//   its pixel belongs to (as first pixel of (p, p + o_k) and as second of (p - o_k, p)) and
//   gathers grad_feat[c, p] = sum -w sign(f_p - f_q) over them, offset by offset, first then
//   second pair: the order of the CPU kernel, no atomics, deterministic. Radii with more than
//   kSlots offsets loop over the offsets in passes inside the block, adding onto the previous
//   passes' sums (in float for half/bf16).
// Neither pass materialises more than the (B, K, H, W) affinities.
//
// Performance model (docs/performance.md), training shape B=8, C=448, 56x56, r=5 (K=34),
// float32, on an H100 (132 SMs, ~3.3 TB/s, shared memory 32 words per clock per SM, ~1.7 GHz):
// - Global memory: 45 MB of features read (x ~2.5 through L2 for the halos), 3.4 MB of
//   affinities written forward; backward reads the features, grad and aff and writes 45 MB:
//   ~15 us + ~30 us at DRAM speed.
// - Blocks: 8 images x 14 x 2 tiles = 224, one or two per SM; 128 threads each.
// - Shared memory, the bound: per pixel and pack of two channels the forward reads 1 + 34
//   8-byte elements (2 wavefronts per warp each): a block of 4 warps, 224 packs, 4 x 224 x 70 =
//   63k wavefronts; two blocks on an SM ~125k clocks = ~75 us. The backward reads 1 + 68
//   elements: ~250k clocks = ~145 us. The arithmetic (2 FP ops per term forward, 5 backward)
//   is below that. Expected fwd+bwd ~0.25 ms against psa-dense's 8.2 ms (measured on an H200).
// - half/bfloat16: a pack is one 4-byte word, so the shared-memory reads halve, and the
//   global traffic too: expected faster than float32. Accumulation is in float.
#include "common/stable.h"

#include <algorithm>

#include "affinity/affinity.h"
#include "common/cuda_utils.cuh"

namespace affext {
namespace {

constexpr int kTileW = 32;  // a warp per tile row
constexpr int kTileH = 4;
constexpr int kTileThreads = kTileW * kTileH;
// Offsets per thread and pass: all 34 of psa's radius 5 in one pass.
constexpr int kSlots = 36;
// Scalars each thread prefetches per chunk: a chunk holds at most kPrefetch * kTileThreads.
constexpr int kPrefetch = 40;
// Shared memory of the two chunk buffers, within the default limit of every GPU.
constexpr int kSharedBytes = 48 * 1024;

// Channels per shared element: two for 2- and 4-byte types (one 4- or 8-byte load), one for
// double.
template <typename scalar_t>
constexpr int pack_width() {
  return sizeof(scalar_t) == 8 ? 1 : 2;
}

template <typename scalar_t>
struct alignas(sizeof(scalar_t) * pack_width<scalar_t>()) Pack {
  scalar_t v[pack_width<scalar_t>()];
};

using Divider = UIntDivider;

// Where a block's tile and halo lie, and how the channels are chunked; the same for all blocks.
struct Geometry {
  int H, W;
  int tiles_x;         // tiles per row of tiles
  int up, down, side;  // halo rows above and below the tile, halo columns on each side
  int sw, plane;       // shared row width kTileW + 2 side, plane (up + kTileH + down) * sw
  int packs;           // packs per chunk
  int total_packs;     // packs of the image: ceil(C / V)
  Divider plane_div, sw_div;
};

Geometry make_geometry(int64_t C, int64_t H, int64_t W, int radius, bool backward, int elem_bytes,
                       int width) {
  Geometry g{};
  g.H = static_cast<int>(H);
  g.W = static_cast<int>(W);
  g.tiles_x = static_cast<int>((W + kTileW - 1) / kTileW);
  const int rf = radius - 1;
  g.up = backward ? rf : 0;  // forward offsets point down (dy >= 0) only
  g.down = rf;
  g.side = rf;
  g.sw = kTileW + 2 * rf;
  g.plane = (g.up + kTileH + g.down) * g.sw;
  g.total_packs = static_cast<int>((C + width - 1) / width);
  const int by_registers = kPrefetch * kTileThreads / (g.plane * width);
  const int by_shared = kSharedBytes / (2 * g.plane * elem_bytes * width);
  STD_TORCH_CHECK(by_registers >= 1 && by_shared >= 1, "affinity tile too large");
  g.packs = std::min({by_registers, by_shared, g.total_packs});
  g.plane_div = Divider(static_cast<unsigned int>(g.plane));
  g.sw_div = Divider(static_cast<unsigned int>(g.sw));
  return g;
}

// The pixel of the block's tile this thread owns, and its element in the shared planes.
struct TilePixel {
  int y0, x0;  // the tile's first row and column
  int y, x;    // this thread's pixel (may lie outside the map on the last tiles)
  int centre;  // its index in a shared plane
  bool inside;
};

__device__ __forceinline__ TilePixel tile_pixel(const Geometry& g) {
  TilePixel t;
  t.y0 = (blockIdx.x / g.tiles_x) * kTileH;
  t.x0 = (blockIdx.x % g.tiles_x) * kTileW;
  const int ty = threadIdx.x / kTileW, tx = threadIdx.x % kTileW;
  t.y = t.y0 + ty;
  t.x = t.x0 + tx;
  t.centre = (ty + g.up) * g.sw + tx + g.side;
  t.inside = t.y < g.H && t.x < g.W;
  return t;
}

// One chunk of packs [first, first + count) of image b's features with the tile's halo:
// read from global memory into registers (fetch), then written to a shared buffer (store).
// Element e of a chunk is (pack, channel within the pack, position in the plane), position
// fastest, so that consecutive threads read consecutive columns. Outside the map and past
// the last channel the features read as 0 (such pairs are masked, such channels add 0).
template <typename scalar_t>
struct ChunkLoader {
  static constexpr int V = pack_width<scalar_t>();
  scalar_t values[kPrefetch];

  __device__ __forceinline__ void fetch(const scalar_t* __restrict__ feat_b, int64_t C,
                                        const Geometry& g, const TilePixel& t, int first,
                                        int count) {
    const int n = count * V * g.plane;
#pragma unroll
    for (int i = 0; i < kPrefetch; ++i) {
      const int e = threadIdx.x + i * kTileThreads;
      scalar_t value = scalar_t(0);
      if (e < n) {
        const auto [rest, pos] = g.plane_div.divmod(static_cast<unsigned int>(e));
        const auto [row, col] = g.sw_div.divmod(pos);
        const int64_t c = static_cast<int64_t>(first) * V + rest;
        const int gy = t.y0 - g.up + static_cast<int>(row);
        const int gx = t.x0 - g.side + static_cast<int>(col);
        if (c < C && gy >= 0 && gy < g.H && gx >= 0 && gx < g.W)
          value = feat_b[(c * g.H + gy) * g.W + gx];
      }
      values[i] = value;
    }
  }

  __device__ __forceinline__ void store(Pack<scalar_t>* __restrict__ buffer, const Geometry& g,
                                        int count) const {
    const int n = count * V * g.plane;
#pragma unroll
    for (int i = 0; i < kPrefetch; ++i) {
      const int e = threadIdx.x + i * kTileThreads;
      if (e < n) {
        const auto [rest, pos] = g.plane_div.divmod(static_cast<unsigned int>(e));
        buffer[(rest / V) * g.plane + pos].v[rest % V] = values[i];
      }
    }
  }
};

// Streams image b's channels chunk by chunk through the two shared buffers and calls
// visit(pack_index, plane) for every pack, in channel order, with plane pointing at that
// pack's shared plane. Every thread of the block must call it (it synchronises the block).
template <typename scalar_t, typename Visit>
__device__ __forceinline__ void for_each_pack(const scalar_t* __restrict__ feat_b, int64_t C,
                                              const Geometry& g, const TilePixel& t,
                                              Pack<scalar_t>* buffers, Visit&& visit) {
  const int n_chunks = (g.total_packs + g.packs - 1) / g.packs;
  const int chunk_elems = g.packs * g.plane;
  ChunkLoader<scalar_t> loader;
  loader.fetch(feat_b, C, g, t, 0, min(g.packs, g.total_packs));
  loader.store(buffers, g, min(g.packs, g.total_packs));
  __syncthreads();
  for (int chunk = 0; chunk < n_chunks; ++chunk) {
    const int first = chunk * g.packs;
    const int count = min(g.packs, g.total_packs - first);
    const bool more = chunk + 1 < n_chunks;
    const int next_count = more ? min(g.packs, g.total_packs - first - g.packs) : 0;
    // issue the next chunk's global reads before computing on this one
    if (more) loader.fetch(feat_b, C, g, t, first + g.packs, next_count);
    const Pack<scalar_t>* current = buffers + (chunk & 1) * chunk_elems;
    for (int j = 0; j < count; ++j) visit(first + j, current + j * g.plane);
    // the other buffer was last read in the previous chunk, before the barrier that ended it
    if (more) loader.store(buffers + ((chunk + 1) & 1) * chunk_elems, g, next_count);
    __syncthreads();
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kTileThreads)
    forward_kernel(const scalar_t* __restrict__ feat, scalar_t* __restrict__ aff, int64_t C,
                   Geometry g, Offsets o) {
  using acc_t = opmath_t<scalar_t>;
  constexpr int V = pack_width<scalar_t>();
  extern __shared__ __align__(16) unsigned char shared_raw[];
  Pack<scalar_t>* buffers = reinterpret_cast<Pack<scalar_t>*>(shared_raw);
  const TilePixel t = tile_pixel(g);
  const int64_t b = blockIdx.y;
  const int k0 = blockIdx.z * kSlots;
  const int slots = min(kSlots, o.count - k0);
  const int64_t HW = static_cast<int64_t>(g.H) * g.W;

  int delta[kSlots];  // the neighbour's index in a shared plane, relative to the pixel's
  acc_t l1[kSlots];
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    delta[s] = s < slots ? o.dy[k0 + s] * g.sw + o.dx[k0 + s] : 0;
    l1[s] = acc_t(0);
  }
  for_each_pack(feat + b * C * HW, C, g, t, buffers, [&](int, const Pack<scalar_t>* plane) {
    const Pack<scalar_t> fp = plane[t.centre];
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      if (s < slots) {
        const Pack<scalar_t> fq = plane[t.centre + delta[s]];
#pragma unroll
        for (int v = 0; v < V; ++v)
          l1[s] += l1_term<acc_t>(static_cast<acc_t>(fp.v[v]), static_cast<acc_t>(fq.v[v]));
      }
    }
  });
  if (!t.inside) return;
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);
  const int64_t p = static_cast<int64_t>(t.y) * g.W + t.x;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    if (s < slots) {
      const int k = k0 + s;
      const bool valid =
          pair_in_region(t.y, t.x, o.dy[k], o.dx[k], g.H, g.W, o.radius, kRegionFull);
      aff[(b * o.count + k) * HW + p] =
          valid ? static_cast<scalar_t>(affinity_from_l1(l1[s], inv_c)) : scalar_t(0);
    }
  }
}

// out_t: scalar_t, or float when half/bf16 sums must be carried from pass to pass.
template <typename scalar_t, typename out_t>
__global__ void __launch_bounds__(kTileThreads)
    backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ feat,
                    const scalar_t* __restrict__ aff, out_t* __restrict__ grad_feat, int64_t C,
                    Geometry g, Offsets o) {
  using acc_t = opmath_t<scalar_t>;
  constexpr int V = pack_width<scalar_t>();
  extern __shared__ __align__(16) unsigned char shared_raw[];
  Pack<scalar_t>* buffers = reinterpret_cast<Pack<scalar_t>*>(shared_raw);
  const TilePixel t = tile_pixel(g);
  const int64_t b = blockIdx.y;
  const int64_t HW = static_cast<int64_t>(g.H) * g.W;
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);
  const scalar_t* grad_b = grad + b * o.count * HW;
  const scalar_t* aff_b = aff + b * o.count * HW;
  out_t* out_b = grad_feat + b * C * HW;
  const int64_t p = static_cast<int64_t>(t.y) * g.W + t.x;

  for (int k0 = 0; k0 < o.count; k0 += kSlots) {
    const int slots = min(kSlots, o.count - k0);
    int delta[kSlots];
    acc_t w_first[kSlots], w_second[kSlots];  // pairs (p, p + o_k) and (p - o_k, p)
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int k = k0 + (s < slots ? s : 0);
      const int dy = o.dy[k], dx = o.dx[k];
      delta[s] = dy * g.sw + dx;
      w_first[s] = acc_t(0);
      w_second[s] = acc_t(0);
      if (s < slots && t.inside) {
        if (pair_in_region(t.y, t.x, dy, dx, g.H, g.W, o.radius, kRegionFull)) {
          const int64_t i = k * HW + p;
          w_first[s] =
              pair_weight(static_cast<acc_t>(grad_b[i]), static_cast<acc_t>(aff_b[i]), inv_c);
        }
        const int qy = t.y - dy, qx = t.x - dx;
        if (qy >= 0 && qx >= 0 && qx < g.W) {
          const int64_t i = k * HW + static_cast<int64_t>(qy) * g.W + qx;
          w_second[s] =
              pair_weight(static_cast<acc_t>(grad_b[i]), static_cast<acc_t>(aff_b[i]), inv_c);
        }
      }
    }
    const bool first_pass = k0 == 0;
    for_each_pack(feat + b * C * HW, C, g, t, buffers, [&](int pack, const Pack<scalar_t>* plane) {
      const Pack<scalar_t> fp = plane[t.centre];
      acc_t sum[V];
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const int64_t c = static_cast<int64_t>(pack) * V + v;
        sum[v] =
            first_pass || !t.inside || c >= C ? acc_t(0) : static_cast<acc_t>(out_b[c * HW + p]);
      }
#pragma unroll
      for (int s = 0; s < kSlots; ++s) {
        if (s < slots) {
          const Pack<scalar_t> fq = plane[t.centre + delta[s]];
          const Pack<scalar_t> fr = plane[t.centre - delta[s]];
#pragma unroll
          for (int v = 0; v < V; ++v) {
            const acc_t f = static_cast<acc_t>(fp.v[v]);
            sum[v] += grad_term(w_first[s], f, static_cast<acc_t>(fq.v[v]));
            sum[v] += grad_term(w_second[s], f, static_cast<acc_t>(fr.v[v]));
          }
        }
      }
      if (!t.inside) return;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const int64_t c = static_cast<int64_t>(pack) * V + v;
        if (c < C) out_b[c * HW + p] = static_cast<out_t>(sum[v]);
      }
    });
  }
}

template <typename scalar_t>
size_t shared_bytes(const Geometry& g) {
  return 2 * static_cast<size_t>(g.packs) * g.plane * sizeof(Pack<scalar_t>);
}

dim3 tile_grid(const Geometry& g, int64_t B, int z = 1) {
  const int64_t tiles = static_cast<int64_t>(g.tiles_x) * ((g.H + kTileH - 1) / kTileH);
  AFFEXT_CHECK(tiles <= INT32_MAX && B <= 65535,
               "feat is too large for the CUDA affinity kernels: ", B, " images of ", g.H, "x", g.W,
               " (at most 65535 images)");
  return dim3(static_cast<unsigned int>(tiles), static_cast<unsigned int>(B), z);
}

}  // namespace

Tensor pairwise_affinity_cuda(const Tensor& feat_in, int64_t radius) {
  check_affinity_args(feat_in, radius);
  const Offsets o = offsets_for(radius);
  const torch::stable::accelerator::DeviceGuard guard(feat_in.get_device_index());
  const Tensor feat = torch::stable::contiguous(feat_in);
  const int64_t B = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  Tensor aff = torch::stable::new_empty(feat, {B, o.count, H, W});
  if (aff.numel() == 0) return aff;
  const cudaStream_t stream = current_stream();
  THO_DISPATCH_V2(
      feat.scalar_type(), "pairwise_affinity_cuda", AT_WRAP(([&] {
        constexpr int V = pack_width<scalar_t>();
        const Geometry g = make_geometry(C, H, W, static_cast<int>(radius), /*backward=*/false,
                                         sizeof(scalar_t), V);
        const dim3 grid = tile_grid(g, B, (o.count + kSlots - 1) / kSlots);
        forward_kernel<scalar_t><<<grid, kTileThreads, shared_bytes<scalar_t>(g), stream>>>(
            feat.const_data_ptr<scalar_t>(), aff.mutable_data_ptr<scalar_t>(), C, g, o);
        check_launch();
      })),  // parenthesised: the launches' <<<...>>> commas
      AT_FLOATING_TYPES, ScalarType::Half, ScalarType::BFloat16);
  return aff;
}

Tensor pairwise_affinity_backward_cuda(const Tensor& grad_in, const Tensor& feat_in,
                                       const Tensor& aff_in, int64_t radius) {
  const torch::stable::accelerator::DeviceGuard guard(feat_in.get_device_index());
  const BackwardArgs args = prepare_backward_args(grad_in, feat_in, aff_in, radius);
  const Offsets& o = args.offsets;
  const Tensor &grad = args.grad, &feat = args.feat, &aff = args.aff;
  const int64_t B = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  Tensor grad_feat = torch::stable::empty_like(feat);  // feat is contiguous
  if (grad_feat.numel() == 0) return grad_feat;
  const cudaStream_t stream = current_stream();
  THO_DISPATCH_V2(
      feat.scalar_type(), "pairwise_affinity_backward_cuda", AT_WRAP(([&] {
        using acc_t = opmath_t<scalar_t>;
        constexpr int V = pack_width<scalar_t>();
        const Geometry g = make_geometry(C, H, W, static_cast<int>(radius), /*backward=*/true,
                                         sizeof(scalar_t), V);
        const dim3 grid = tile_grid(g, B);
        const size_t shared = shared_bytes<scalar_t>(g);
        const bool carry_in_float = o.count > kSlots && !std::is_same_v<scalar_t, acc_t>;
        if (carry_in_float) {  // several passes: keep the running sums in float
          Tensor sums = torch::stable::new_empty(feat, feat.sizes(), ScalarType::Float);
          backward_kernel<scalar_t, acc_t><<<grid, kTileThreads, shared, stream>>>(
              grad.const_data_ptr<scalar_t>(), feat.const_data_ptr<scalar_t>(),
              aff.const_data_ptr<scalar_t>(), sums.mutable_data_ptr<acc_t>(), C, g, o);
          check_launch();
          torch::stable::copy_(grad_feat, sums);
        } else {
          backward_kernel<scalar_t, scalar_t><<<grid, kTileThreads, shared, stream>>>(
              grad.const_data_ptr<scalar_t>(), feat.const_data_ptr<scalar_t>(),
              aff.const_data_ptr<scalar_t>(), grad_feat.mutable_data_ptr<scalar_t>(), C, g, o);
          check_launch();
        }
      })),  // parenthesised: the launches' <<<...>>> commas
      AT_FLOATING_TYPES, ScalarType::Half, ScalarType::BFloat16);
  return grad_feat;
}

STABLE_TORCH_LIBRARY_IMPL(affext, CUDA, m) {
  m.impl("pairwise_affinity", TORCH_BOX(&pairwise_affinity_cuda));
  m.impl("pairwise_affinity_backward", TORCH_BOX(&pairwise_affinity_backward_cuda));
}

}  // namespace affext
