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
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cub/cub.cuh>
#include <vector>

#include "common/checks.h"
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
  const int device = c10::cuda::current_device();
  int sms = device < 64 ? sms_of[device].load(std::memory_order_relaxed) : 0;
  if (sms == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
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
  at::Tensor vertex, weight, slice_w, splat_p, splat_w, start, nbr, m;
  at::Tensor a, b;  // splat and blur scratch, (cap + 1) * C floats each

  // splat then blur of in (N, C); returns the vertex values (row 0 zero).
  float* splat_blur(const float* in, int64_t C, cudaStream_t stream) {
    const int64_t need = (cap + 1) * C;
    if (a.numel() < need) {
      a = at::zeros({need}, weight.options());
      b = at::zeros({need}, weight.options());
    } else {
      // row 0 is the missing neighbour: zero in this call's layout
      C10_CUDA_CHECK(cudaMemsetAsync(a.data_ptr<float>(), 0, C * sizeof(float), stream));
      C10_CUDA_CHECK(cudaMemsetAsync(b.data_ptr<float>(), 0, C * sizeof(float), stream));
    }
    const unsigned int grid = resident_blocks(cap * C);
    float* cur = a.data_ptr<float>();
    float* nxt = b.data_ptr<float>();
    splat_kernel<<<grid, kThreads, 0, stream>>>(
        in, splat_w.data_ptr<float>(), splat_p.data_ptr<int32_t>(), start.data_ptr<int64_t>(),
        m.data_ptr<int32_t>(), C, cur);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    for (int j = 0; j <= d; ++j) {
      blur_kernel<<<grid, kThreads, 0, stream>>>(cur, nbr.data_ptr<int32_t>() + j * (cap + 1) * 2,
                                                 m.data_ptr<int32_t>(), C, nxt);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      std::swap(cur, nxt);
    }
    return cur;
  }
};

template <int D>
DeviceLattice build_lattice(const uint8_t* rgb, int64_t H, int64_t W, float sxy, float srgb,
                            int bits, float compat, const at::TensorOptions& fopt,
                            cudaStream_t stream) {
  constexpr int D1 = D + 1;
  const int64_t N = H * W, total = N * D1;
  const auto iopt = fopt.dtype(at::kInt);
  const auto lopt = fopt.dtype(at::kLong);
  DeviceLattice lat;
  lat.d = D;
  lat.N = N;
  lat.cap = total;
  at::Tensor keys = at::empty({total}, lopt), sorted = at::empty({total}, lopt);
  at::Tensor entry = at::empty({total}, iopt), sorted_entry = at::empty({total}, iopt);
  lat.weight = at::empty({total}, fopt);
  embed_kernel<D><<<blocks_for(N), kThreads, 0, stream>>>(
      rgb, N, static_cast<int>(W), sxy, srgb, bits,
      reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>()), entry.data_ptr<int32_t>(),
      lat.weight.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Sort the entries by key (stable: equal keys keep increasing entry order).
  const int n_items = static_cast<int>(total);
  const uint64_t* k_in = reinterpret_cast<const uint64_t*>(keys.data_ptr<int64_t>());
  uint64_t* k_out = reinterpret_cast<uint64_t*>(sorted.data_ptr<int64_t>());
  size_t temp_bytes = 0;
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, temp_bytes, k_in, k_out, entry.data_ptr<int32_t>(), sorted_entry.data_ptr<int32_t>(),
      n_items, 0, D * bits, stream));
  at::Tensor temp = at::empty({static_cast<int64_t>(temp_bytes)}, fopt.dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      temp.data_ptr(), temp_bytes, k_in, k_out, entry.data_ptr<int32_t>(),
      sorted_entry.data_ptr<int32_t>(), n_items, 0, D * bits, stream));
  // Number the vertices 1..M in key order.
  at::Tensor first = at::empty({total}, iopt), id = at::empty({total}, iopt);
  mark_kernel<<<blocks_for(total), kThreads, 0, stream>>>(k_out, total, first.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  size_t scan_bytes = 0;
  C10_CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, first.data_ptr<int32_t>(),
                                               id.data_ptr<int32_t>(), n_items, stream));
  at::Tensor scan_temp = at::empty({static_cast<int64_t>(scan_bytes)}, fopt.dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceScan::InclusiveSum(scan_temp.data_ptr(), scan_bytes,
                                               first.data_ptr<int32_t>(), id.data_ptr<int32_t>(),
                                               n_items, stream));
  lat.vertex = at::empty({total}, iopt);
  lat.start = at::empty({total + 2}, lopt);
  lat.m = at::empty({1}, iopt);
  lat.splat_p = at::empty({total}, iopt);
  lat.splat_w = at::empty({total}, fopt);
  at::Tensor unique_key = at::empty({total + 1}, lopt);
  number_kernel<<<blocks_for(total), kThreads, 0, stream>>>(
      k_out, sorted_entry.data_ptr<int32_t>(), first.data_ptr<int32_t>(), id.data_ptr<int32_t>(),
      lat.weight.data_ptr<float>(), total, D1, lat.vertex.data_ptr<int32_t>(),
      lat.start.data_ptr<int64_t>(), reinterpret_cast<uint64_t*>(unique_key.data_ptr<int64_t>()),
      lat.splat_p.data_ptr<int32_t>(), lat.splat_w.data_ptr<float>(), lat.m.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  lat.nbr = at::empty({D1 * (total + 1) * 2}, iopt);
  neighbour_kernel<<<resident_blocks(total * D1), kThreads, 0, stream>>>(
      reinterpret_cast<const uint64_t*>(unique_key.data_ptr<int64_t>()), lat.m.data_ptr<int32_t>(),
      D, bits, total, lat.nbr.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // The symmetric normaliser n = 1 / sqrt(L 1 + 1e-20), from the filtered ones, then folded
  // into the weights (splat of n q, compat n times the slice), as on the CPU.
  const float alpha = crf::slice_alpha(D);
  lat.slice_w = at::empty({total}, fopt);
  scale_kernel<<<blocks_for(total), kThreads, 0, stream>>>(lat.weight.data_ptr<float>(), alpha,
                                                           total, lat.slice_w.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor ones = at::ones({N}, fopt), norm = at::empty({N}, fopt);
  const float* val = lat.splat_blur(ones.data_ptr<float>(), 1, stream);
  slice_kernel<<<blocks_for(N), kThreads, 0, stream>>>(val, lat.slice_w.data_ptr<float>(),
                                                       lat.vertex.data_ptr<int32_t>(), N, D1, 1,
                                                       norm.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  norm_kernel<<<blocks_for(N), kThreads, 0, stream>>>(norm.data_ptr<float>(), N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  fold_kernel<<<blocks_for(total), kThreads, 0, stream>>>(
      lat.splat_p.data_ptr<int32_t>(), lat.weight.data_ptr<float>(), norm.data_ptr<float>(), total,
      D1, alpha, compat, lat.splat_w.data_ptr<float>(), lat.slice_w.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return lat;
}

// Mean field for the S stacks of n labels sharing one image; scores and q are (N, S * n).
void crf_group(const uint8_t* rgb, const at::Tensor& scores, at::Tensor& q, int64_t S, int64_t n,
               int64_t H, int64_t W, int64_t iterations, float gsxy, float gcompat, float bsxy,
               float bsrgb, float bcompat, const CrfPackings& packing, cudaStream_t stream) {
  const int64_t N = H * W, C = S * n;
  const auto fopt = scores.options();
  DeviceLattice g = build_lattice<kGaussianDim>(rgb, H, W, gsxy, 0.f, packing.gaussian.bits,
                                                gcompat, fopt, stream);
  DeviceLattice b = build_lattice<kBilateralDim>(rgb, H, W, bsxy, bsrgb, packing.bilateral.bits,
                                                 bcompat, fopt, stream);
  at::Tensor logp = at::empty({N, C}, fopt), e = at::empty({N, C}, fopt);
  const unsigned int grid = blocks_for(N * S);
  unary_kernel<<<grid, kThreads, 0, stream>>>(scores.data_ptr<float>(), N, S, static_cast<int>(n),
                                              logp.data_ptr<float>(), q.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  for (int64_t it = 0; it < iterations; ++it) {
    const float* val_g = g.splat_blur(q.data_ptr<float>(), C, stream);
    const float* val_b = b.splat_blur(q.data_ptr<float>(), C, stream);
    energy_kernel<<<blocks_for(N * C), kThreads, 0, stream>>>(
        logp.data_ptr<float>(), val_g, g.slice_w.data_ptr<float>(), g.vertex.data_ptr<int32_t>(),
        val_b, b.slice_w.data_ptr<float>(), b.vertex.data_ptr<int32_t>(), N, C,
        e.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    softmax_kernel<<<grid, kThreads, 0, stream>>>(e.data_ptr<float>(), N, S, static_cast<int>(n),
                                                  q.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

at::Tensor dense_crf_cuda(const at::Tensor& image_in, const at::Tensor& scores_in,
                          int64_t iterations, double gaussian_sxy, double gaussian_compat,
                          double bilateral_sxy, double bilateral_srgb, double bilateral_compat,
                          bool validate) {
  check_dense_crf_args(image_in, scores_in, iterations, gaussian_sxy, gaussian_compat,
                       bilateral_sxy, bilateral_srgb, bilateral_compat);
  c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.detach().to(at::kFloat).contiguous();
  const at::Tensor image = image_in.detach().contiguous();
  if (validate) check_dense_crf_values(scores);
  const int64_t B = scores.size(0), n = scores.size(1), H = scores.size(2), W = scores.size(3);
  if (scores.numel() == 0) return at::empty_like(scores);
  const CrfPackings packing = crf_packings(H, W, gaussian_sxy, bilateral_sxy, bilateral_srgb);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t N = H * W;
  const bool shared = image.size(0) == 1;
  const int64_t groups = shared ? 1 : B, S = shared ? B : 1;
  std::vector<at::Tensor> outs;
  for (int64_t i = 0; i < groups; ++i) {
    // (S, n, H, W) -> pixel-major (N, S * n)
    const at::Tensor sc = scores.narrow(0, i * S, S).reshape({S * n, N}).t().contiguous();
    at::Tensor q = at::empty({N, S * n}, sc.options());
    crf_group(image[i].data_ptr<uint8_t>(), sc, q, S, n, H, W, iterations,
              static_cast<float>(gaussian_sxy), static_cast<float>(gaussian_compat),
              static_cast<float>(bilateral_sxy), static_cast<float>(bilateral_srgb),
              static_cast<float>(bilateral_compat), packing, stream);
    outs.push_back(q.t().reshape({S, n, H, W}));
  }
  return at::cat(outs, 0).contiguous();
}

TORCH_LIBRARY_IMPL(affext, CUDA, m) { m.impl("dense_crf", &dense_crf_cuda); }

}  // namespace affext
