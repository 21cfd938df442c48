// CUDA dense CRF (the math in dense_crf.h, shared with the CPU kernel).
//
// Per image, each lattice is built without atomics and without a host synchronisation:
// every pixel's d + 1 vertex keys are sorted (cub's radix sort, stable), equal neighbours in
// the sorted list form one vertex (a scan numbers them 1..M), and the sorted order is the
// splat's gather list: a vertex sums its pixels in increasing entry order, as on the CPU.
// Blur neighbours are found by binary search in the sorted unique keys. M stays on the
// device: the kernels after the build loop over M from device memory with grid-stride loops
// on a fixed grid, so nothing waits for the host. Marginals are kept pixel-major, (N, C) with
// the C = S * n channels of all stacks that share the image side by side.
#include "common/stable.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cub/cub.cuh>
#include <vector>

#include "common/cuda_utils.cuh"
#include "dense_crf/dense_crf.h"
#include "dense_crf/dense_crf_args.h"

namespace affext {
namespace {

using crf::kBilateralDim;
using crf::kGaussianDim;

// Blocks of a grid-stride loop whose length is only known on the device (M * C).
inline unsigned int resident_blocks(int64_t upper_bound) {
  static std::atomic<int> sms_of[64];  // per device, 0 until asked (then the same value)
  const int device = torch::stable::accelerator::getCurrentDeviceIndex();
  int sms = device < 64 ? sms_of[device].load(std::memory_order_relaxed) : 0;
  if (sms == 0) {
    check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    if (device < 64) sms_of[device].store(sms, std::memory_order_relaxed);
  }
  return std::min<unsigned int>(blocks_for(upper_bound), static_cast<unsigned int>(sms) * 8u);
}

template <int D>
__global__ void embed_kernel(const uint8_t* __restrict__ rgb, int64_t N, int W, float sxy,
                             float srgb, int bits, uint64_t* __restrict__ keys,
                             int32_t* __restrict__ entry, float* __restrict__ weight) {
  constexpr int D1 = D + 1;
  for (int64_t p = grid_first(); p < N; p += grid_stride()) {
    const int x = static_cast<int>(p % W), y = static_cast<int>(p / W);
    float f[D];
    if constexpr (D == kBilateralDim)
      crf::bilateral_features(x, y, rgb + 3 * p, sxy, srgb, f);
    else
      crf::gaussian_features(x, y, sxy, f);
    crf::embed_point<D>(f, bits, keys + p * D1, weight + p * D1);
    for (int r = 0; r < D1; ++r) entry[p * D1 + r] = static_cast<int32_t>(p * D1 + r);
  }
}

__global__ void mark_kernel(const uint64_t* __restrict__ sorted, int64_t total,
                            int32_t* __restrict__ first) {
  for (int64_t i = grid_first(); i < total; i += grid_stride())
    first[i] = (i == 0 || sorted[i] != sorted[i - 1]) ? 1 : 0;
}

// vertex[entry] = id; start[id] = first sorted position of id; unique_key[id] = key;
// m[0] = M, start[M + 1] = total; the splat's terms in sorted order: pixel and weight.
__global__ void number_kernel(const uint64_t* __restrict__ sorted,
                              const int32_t* __restrict__ sorted_entry,
                              const int32_t* __restrict__ first, const int32_t* __restrict__ id,
                              const float* __restrict__ weight, int64_t total, int D1,
                              int32_t* __restrict__ vertex, int64_t* __restrict__ start,
                              uint64_t* __restrict__ unique_key, int32_t* __restrict__ splat_p,
                              float* __restrict__ splat_w, int32_t* __restrict__ m) {
  for (int64_t i = grid_first(); i < total; i += grid_stride()) {
    const int32_t v = id[i];
    const int32_t e = sorted_entry[i];
    vertex[e] = v;
    splat_p[i] = e / D1;
    splat_w[i] = weight[e];
    if (first[i]) {
      start[v] = i;
      unique_key[v] = sorted[i];
    }
    if (i == total - 1) {
      start[v + 1] = total;
      m[0] = v;
    }
  }
}

__device__ __forceinline__ int32_t find_vertex(const uint64_t* __restrict__ unique_key, int32_t M,
                                               uint64_t key) {
  int32_t lo = 1, hi = M;  // ids 1..M hold the keys in increasing order
  while (lo <= hi) {
    const int32_t mid = lo + ((hi - lo) >> 1);
    const uint64_t k = unique_key[mid];
    if (k == key) return mid;
    if (k < key)
      lo = mid + 1;
    else
      hi = mid - 1;
  }
  return 0;
}

// nbr[(j * (cap + 1) + v) * 2 + {0, 1}]: the neighbours of vertex v along axis j.
__global__ void neighbour_kernel(const uint64_t* __restrict__ unique_key,
                                 const int32_t* __restrict__ m, int d, int bits, int64_t cap,
                                 int32_t* __restrict__ nbr) {
  const int32_t M = m[0];
  const int64_t count = static_cast<int64_t>(M) * (d + 1);
  for (int64_t i = grid_first(); i < count; i += grid_stride()) {
    const int32_t v = static_cast<int32_t>(i % M) + 1;
    const int j = static_cast<int>(i / M);
    const uint64_t key = unique_key[v];
    int32_t* out = nbr + (j * (cap + 1) + v) * 2;
    out[0] = find_vertex(unique_key, M, crf::neighbour_key(key, d, bits, j, +1));
    out[1] = find_vertex(unique_key, M, crf::neighbour_key(key, d, bits, j, -1));
  }
}

// val[v, c] = sum over v's terms (increasing pixel order) of splat_w * in[pixel, c]
__global__ void splat_kernel(const float* __restrict__ in, const float* __restrict__ splat_w,
                             const int32_t* __restrict__ splat_p, const int64_t* __restrict__ start,
                             const int32_t* __restrict__ m, int64_t C, float* __restrict__ val) {
  const int64_t count = static_cast<int64_t>(m[0]) * C;
  for (int64_t i = grid_first(); i < count; i += grid_stride()) {
    const int64_t v = i / C + 1, c = i % C;
    float s = 0.f;
    for (int64_t k = start[v]; k < start[v + 1]; ++k)
      s += splat_w[k] * in[static_cast<int64_t>(splat_p[k]) * C + c];
    val[v * C + c] = s;
  }
}

__global__ void blur_kernel(const float* __restrict__ cur, const int32_t* __restrict__ nbr,
                            const int32_t* __restrict__ m, int64_t C, float* __restrict__ nxt) {
  const int64_t count = static_cast<int64_t>(m[0]) * C;
  for (int64_t i = grid_first(); i < count; i += grid_stride()) {
    const int64_t v = i / C + 1, c = i % C;
    const float a = cur[nbr[2 * v] * C + c], b = cur[nbr[2 * v + 1] * C + c];
    nxt[v * C + c] = cur[v * C + c] + 0.5f * (a + b);
  }
}

// out[p, c] = sum_r slice_w[p, r] val[vertex(p, r), c] (the normaliser's filter of ones)
__global__ void slice_kernel(const float* __restrict__ val, const float* __restrict__ slice_w,
                             const int32_t* __restrict__ vertex, int64_t N, int D1, int64_t C,
                             float* __restrict__ out) {
  for (int64_t i = grid_first(); i < N * C; i += grid_stride()) {
    const int64_t p = i / C, c = i % C;
    float s = 0.f;
    for (int r = 0; r < D1; ++r) s += slice_w[p * D1 + r] * val[vertex[p * D1 + r] * C + c];
    out[i] = s;
  }
}

// e[p, c] = logp[p, c] + both lattices' slices (their weights hold compat * alpha * w * norm),
// in the CPU's order: the Gaussian's vertices, then the bilateral's.
__global__ void energy_kernel(const float* __restrict__ logp, const float* __restrict__ val_g,
                              const float* __restrict__ slice_g, const int32_t* __restrict__ vert_g,
                              const float* __restrict__ val_b, const float* __restrict__ slice_b,
                              const int32_t* __restrict__ vert_b, int64_t N, int64_t C,
                              float* __restrict__ e) {
  constexpr int G1 = kGaussianDim + 1, B1 = kBilateralDim + 1;
  for (int64_t i = grid_first(); i < N * C; i += grid_stride()) {
    const int64_t p = i / C, c = i % C;
    float s = logp[i];
    for (int r = 0; r < G1; ++r) s += slice_g[p * G1 + r] * val_g[vert_g[p * G1 + r] * C + c];
    for (int r = 0; r < B1; ++r) s += slice_b[p * B1 + r] * val_b[vert_b[p * B1 + r] * C + c];
    e[i] = s;
  }
}

// Folds the normaliser into the weights: splat_w *= n[pixel]; slice_w = alpha w compat n.
__global__ void fold_kernel(const int32_t* __restrict__ splat_p, const float* __restrict__ weight,
                            const float* __restrict__ norm, int64_t total, int D1, float alpha,
                            float compat, float* __restrict__ splat_w,
                            float* __restrict__ slice_w) {
  for (int64_t i = grid_first(); i < total; i += grid_stride()) {
    splat_w[i] *= norm[splat_p[i]];
    slice_w[i] = weight[i] * alpha * (compat * norm[i / D1]);
  }
}

__global__ void scale_kernel(const float* __restrict__ w, float alpha, int64_t n,
                             float* __restrict__ out) {
  for (int64_t i = grid_first(); i < n; i += grid_stride()) out[i] = w[i] * alpha;
}

__global__ void norm_kernel(float* __restrict__ norm, int64_t N) {
  for (int64_t p = grid_first(); p < N; p += grid_stride())
    norm[p] = 1.0f / sqrtf(norm[p] + crf::kNormEps);
}

// logp = -U and q = softmax(-U), (N, C), per (pixel, stack)
__global__ void unary_kernel(const float* __restrict__ scores, int64_t N, int64_t S, int n,
                             float* __restrict__ logp, float* __restrict__ q) {
  const int64_t C = S * n;
  for (int64_t i = grid_first(); i < N * S; i += grid_stride()) {
    const int64_t o = (i / S) * C + (i % S) * n;
    crf::unary_pixel(scores + o, n, 1, logp + o, q + o);
  }
}

// q = softmax(e) per (pixel, stack)
__global__ void softmax_kernel(const float* __restrict__ e, int64_t N, int64_t S, int n,
                               float* __restrict__ q) {
  const int64_t C = S * n;
  for (int64_t i = grid_first(); i < N * S; i += grid_stride()) {
    const int64_t o = (i / S) * C + (i % S) * n;
    crf::softmax_pixel(e + o, n, q + o);
  }
}

// One lattice on the device; every tensor is sized by the upper bound cap = N (d + 1) of M.
struct DeviceLattice {
  int d = 0;
  int64_t N = 0, cap = 0;
  Tensor vertex, weight, slice_w, splat_p, splat_w, start, nbr, m;
  Tensor a, b;  // splat and blur scratch, (cap + 1) * C floats each

  // splat then blur of in (N, C); returns the vertex values (row 0 zero).
  float* splat_blur(const float* in, int64_t C, cudaStream_t stream) {
    const int64_t need = (cap + 1) * C;
    if (a.numel() < need) {
      a = torch::stable::new_zeros(weight, {need});
      b = torch::stable::new_zeros(weight, {need});
    } else {
      // row 0 is the missing neighbour: zero in this call's layout
      check_cuda(cudaMemsetAsync(a.mutable_data_ptr<float>(), 0, C * sizeof(float), stream));
      check_cuda(cudaMemsetAsync(b.mutable_data_ptr<float>(), 0, C * sizeof(float), stream));
    }
    const unsigned int grid = resident_blocks(cap * C);
    float* cur = a.mutable_data_ptr<float>();
    float* nxt = b.mutable_data_ptr<float>();
    splat_kernel<<<grid, kThreads, 0, stream>>>(
        in, splat_w.mutable_data_ptr<float>(), splat_p.mutable_data_ptr<int32_t>(),
        start.mutable_data_ptr<int64_t>(), m.mutable_data_ptr<int32_t>(), C, cur);
    check_launch();
    for (int j = 0; j <= d; ++j) {
      blur_kernel<<<grid, kThreads, 0, stream>>>(
          cur, nbr.mutable_data_ptr<int32_t>() + j * (cap + 1) * 2, m.mutable_data_ptr<int32_t>(),
          C, nxt);
      check_launch();
      std::swap(cur, nxt);
    }
    return cur;
  }
};

template <int D>
DeviceLattice build_lattice(const uint8_t* rgb, int64_t H, int64_t W, float sxy, float srgb,
                            int bits, float compat, const Tensor& like, cudaStream_t stream) {
  constexpr int D1 = D + 1;
  const int64_t N = H * W, total = N * D1;
  // New tensors on like's device: float32, int32, int64, bytes.
  const auto fempty = [&](int64_t size) {
    return torch::stable::new_empty(like, {size}, ScalarType::Float);
  };
  const auto iempty = [&](int64_t size) {
    return torch::stable::new_empty(like, {size}, ScalarType::Int);
  };
  const auto lempty = [&](int64_t size) {
    return torch::stable::new_empty(like, {size}, ScalarType::Long);
  };
  const auto bempty = [&](int64_t size) {
    return torch::stable::new_empty(like, {size}, ScalarType::Byte);
  };
  DeviceLattice lat;
  lat.d = D;
  lat.N = N;
  lat.cap = total;
  Tensor keys = lempty(total), sorted = lempty(total);
  Tensor entry = iempty(total), sorted_entry = iempty(total);
  lat.weight = fempty(total);
  embed_kernel<D><<<blocks_for(N), kThreads, 0, stream>>>(
      rgb, N, static_cast<int>(W), sxy, srgb, bits,
      reinterpret_cast<uint64_t*>(keys.mutable_data_ptr<int64_t>()),
      entry.mutable_data_ptr<int32_t>(), lat.weight.mutable_data_ptr<float>());
  check_launch();
  // Sort the entries by key (stable: equal keys keep increasing entry order).
  const int n_items = static_cast<int>(total);
  const uint64_t* k_in = reinterpret_cast<const uint64_t*>(keys.mutable_data_ptr<int64_t>());
  uint64_t* k_out = reinterpret_cast<uint64_t*>(sorted.mutable_data_ptr<int64_t>());
  size_t temp_bytes = 0;
  check_cuda(cub::DeviceRadixSort::SortPairs(
      nullptr, temp_bytes, k_in, k_out, entry.mutable_data_ptr<int32_t>(),
      sorted_entry.mutable_data_ptr<int32_t>(), n_items, 0, D * bits, stream));
  Tensor temp = bempty(static_cast<int64_t>(temp_bytes));
  check_cuda(cub::DeviceRadixSort::SortPairs(
      temp.mutable_data_ptr(), temp_bytes, k_in, k_out, entry.mutable_data_ptr<int32_t>(),
      sorted_entry.mutable_data_ptr<int32_t>(), n_items, 0, D * bits, stream));
  // Number the vertices 1..M in key order.
  Tensor first = iempty(total), id = iempty(total);
  mark_kernel<<<blocks_for(total), kThreads, 0, stream>>>(k_out, total,
                                                          first.mutable_data_ptr<int32_t>());
  check_launch();
  size_t scan_bytes = 0;
  check_cuda(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, first.mutable_data_ptr<int32_t>(),
                                           id.mutable_data_ptr<int32_t>(), n_items, stream));
  Tensor scan_temp = bempty(static_cast<int64_t>(scan_bytes));
  check_cuda(cub::DeviceScan::InclusiveSum(scan_temp.mutable_data_ptr(), scan_bytes,
                                           first.mutable_data_ptr<int32_t>(),
                                           id.mutable_data_ptr<int32_t>(), n_items, stream));
  lat.vertex = iempty(total);
  lat.start = lempty(total + 2);
  lat.m = iempty(1);
  lat.splat_p = iempty(total);
  lat.splat_w = fempty(total);
  Tensor unique_key = lempty(total + 1);
  number_kernel<<<blocks_for(total), kThreads, 0, stream>>>(
      k_out, sorted_entry.mutable_data_ptr<int32_t>(), first.mutable_data_ptr<int32_t>(),
      id.mutable_data_ptr<int32_t>(), lat.weight.mutable_data_ptr<float>(), total, D1,
      lat.vertex.mutable_data_ptr<int32_t>(), lat.start.mutable_data_ptr<int64_t>(),
      reinterpret_cast<uint64_t*>(unique_key.mutable_data_ptr<int64_t>()),
      lat.splat_p.mutable_data_ptr<int32_t>(), lat.splat_w.mutable_data_ptr<float>(),
      lat.m.mutable_data_ptr<int32_t>());
  check_launch();
  lat.nbr = iempty(D1 * (total + 1) * 2);
  neighbour_kernel<<<resident_blocks(total * D1), kThreads, 0, stream>>>(
      reinterpret_cast<const uint64_t*>(unique_key.mutable_data_ptr<int64_t>()),
      lat.m.mutable_data_ptr<int32_t>(), D, bits, total, lat.nbr.mutable_data_ptr<int32_t>());
  check_launch();
  // The symmetric normaliser n = 1 / sqrt(L 1 + 1e-20), from the filtered ones, then folded
  // into the weights (splat of n q, compat n times the slice), as on the CPU.
  const float alpha = crf::slice_alpha(D);
  lat.slice_w = fempty(total);
  scale_kernel<<<blocks_for(total), kThreads, 0, stream>>>(
      lat.weight.mutable_data_ptr<float>(), alpha, total, lat.slice_w.mutable_data_ptr<float>());
  check_launch();
  Tensor ones = torch::stable::fill_(fempty(N), 1.0), norm = fempty(N);
  const float* val = lat.splat_blur(ones.mutable_data_ptr<float>(), 1, stream);
  slice_kernel<<<blocks_for(N), kThreads, 0, stream>>>(val, lat.slice_w.mutable_data_ptr<float>(),
                                                       lat.vertex.mutable_data_ptr<int32_t>(), N,
                                                       D1, 1, norm.mutable_data_ptr<float>());
  check_launch();
  norm_kernel<<<blocks_for(N), kThreads, 0, stream>>>(norm.mutable_data_ptr<float>(), N);
  check_launch();
  fold_kernel<<<blocks_for(total), kThreads, 0, stream>>>(
      lat.splat_p.mutable_data_ptr<int32_t>(), lat.weight.mutable_data_ptr<float>(),
      norm.mutable_data_ptr<float>(), total, D1, alpha, compat,
      lat.splat_w.mutable_data_ptr<float>(), lat.slice_w.mutable_data_ptr<float>());
  check_launch();
  return lat;
}

// Mean field for the S stacks of n labels sharing one image; scores and q are (N, S * n).
void crf_group(const uint8_t* rgb, const Tensor& scores, Tensor& q, int64_t S, int64_t n, int64_t H,
               int64_t W, int64_t iterations, float gsxy, float gcompat, float bsxy, float bsrgb,
               float bcompat, const CrfPackings& packing, cudaStream_t stream) {
  const int64_t N = H * W, C = S * n;
  DeviceLattice g = build_lattice<kGaussianDim>(rgb, H, W, gsxy, 0.f, packing.gaussian.bits,
                                                gcompat, scores, stream);
  DeviceLattice b = build_lattice<kBilateralDim>(rgb, H, W, bsxy, bsrgb, packing.bilateral.bits,
                                                 bcompat, scores, stream);
  Tensor logp = torch::stable::new_empty(scores, {N, C}),
         e = torch::stable::new_empty(scores, {N, C});
  const unsigned int grid = blocks_for(N * S);
  unary_kernel<<<grid, kThreads, 0, stream>>>(scores.mutable_data_ptr<float>(), N, S,
                                              static_cast<int>(n), logp.mutable_data_ptr<float>(),
                                              q.mutable_data_ptr<float>());
  check_launch();
  for (int64_t it = 0; it < iterations; ++it) {
    const float* val_g = g.splat_blur(q.mutable_data_ptr<float>(), C, stream);
    const float* val_b = b.splat_blur(q.mutable_data_ptr<float>(), C, stream);
    energy_kernel<<<blocks_for(N * C), kThreads, 0, stream>>>(
        logp.mutable_data_ptr<float>(), val_g, g.slice_w.mutable_data_ptr<float>(),
        g.vertex.mutable_data_ptr<int32_t>(), val_b, b.slice_w.mutable_data_ptr<float>(),
        b.vertex.mutable_data_ptr<int32_t>(), N, C, e.mutable_data_ptr<float>());
    check_launch();
    softmax_kernel<<<grid, kThreads, 0, stream>>>(e.mutable_data_ptr<float>(), N, S,
                                                  static_cast<int>(n), q.mutable_data_ptr<float>());
    check_launch();
  }
}

}  // namespace

Tensor dense_crf_cuda(const Tensor& image_in, const Tensor& scores_in, int64_t iterations,
                      double gaussian_sxy, double gaussian_compat, double bilateral_sxy,
                      double bilateral_srgb, double bilateral_compat, bool validate) {
  check_dense_crf_args(image_in, scores_in, iterations, gaussian_sxy, gaussian_compat,
                       bilateral_sxy, bilateral_srgb, bilateral_compat);
  const torch::stable::accelerator::DeviceGuard guard(scores_in.get_device_index());
  // A kernel runs below autograd: these copies record no graph (no detach needed).
  const Tensor scores = torch::stable::contiguous(to_dtype(scores_in, ScalarType::Float));
  const Tensor image = torch::stable::contiguous(image_in);
  if (validate) check_dense_crf_values(scores);
  const int64_t B = scores.size(0), n = scores.size(1), H = scores.size(2), W = scores.size(3);
  Tensor out = torch::stable::empty_like(scores);  // scores is contiguous
  if (scores.numel() == 0) return out;
  const CrfPackings packing = crf_packings(H, W, gaussian_sxy, bilateral_sxy, bilateral_srgb);
  const cudaStream_t stream = current_stream();
  const int64_t N = H * W;
  const bool shared = image.size(0) == 1;
  const int64_t groups = shared ? 1 : B, S = shared ? B : 1;
  const uint8_t* rgb = image.const_data_ptr<uint8_t>();
  Tensor stacks = scores;  // the same tensor (torch::stable::narrow takes a non-const one)
  for (int64_t i = 0; i < groups; ++i) {
    // (S, n, H, W) -> pixel-major (N, S * n)
    const Tensor sc = torch::stable::contiguous(torch::stable::transpose(
        torch::stable::reshape(torch::stable::narrow(stacks, 0, i * S, S), {S * n, N}), 0, 1));
    Tensor q = torch::stable::new_empty(sc, {N, S * n});
    crf_group(rgb + i * N * 3, sc, q, S, n, H, W, iterations, static_cast<float>(gaussian_sxy),
              static_cast<float>(gaussian_compat), static_cast<float>(bilateral_sxy),
              static_cast<float>(bilateral_srgb), static_cast<float>(bilateral_compat), packing,
              stream);
    // back to (S, n, H, W), into this group's stacks of the output (at::cat's result before)
    Tensor dst = torch::stable::narrow(out, 0, i * S, S);
    torch::stable::copy_(dst,
                         torch::stable::reshape(torch::stable::transpose(q, 0, 1), {S, n, H, W}));
  }
  return out;
}

STABLE_TORCH_LIBRARY_IMPL(affext, CUDA, m) { m.impl("dense_crf", TORCH_BOX(&dense_crf_cuda)); }

}  // namespace affext
