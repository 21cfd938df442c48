// CUDA kernels of the pair loss: the launch layer around pair_loss.h's math.
// Forward, deterministic without atomics: a fixed grid in which each thread sums a fixed set
// of pairs (grid-stride) in double, each block reduces its threads in a fixed tree and writes
// one partial; a second single-block kernel adds the partials in a fixed order.
// Backward and pair classes: one thread per pair.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "pair_loss/pair_loss.h"

namespace affext {
namespace {

// Partials of the forward; enough blocks to fill a GPU, few enough to add in one block.
constexpr int kMaxPartials = 1024;

// Sums the kPairStats values of all threads of the block into thread 0's slot, in a fixed
// tree order. values: shared [kPairStats][kThreads].
__device__ void block_reduce(double (*values)[kThreads]) {
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    __syncthreads();
    if (threadIdx.x < stride)
      for (int s = 0; s < kPairStats; ++s)
        values[s][threadIdx.x] += values[s][threadIdx.x + stride];
  }
  __syncthreads();
}

template <typename scalar_t>
__global__ void partial_kernel(const scalar_t* __restrict__ aff, const uint8_t* __restrict__ labels,
                               double* __restrict__ partials, int64_t B, int H, int W, int radius,
                               int region, Offsets o) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ double values[kPairStats][kThreads];
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t total = B * o.count * HW;
  double sum[3] = {0, 0, 0}, count[3] = {0, 0, 0};
  for (int64_t i = grid_first(); i < total; i += grid_stride()) {
    const auto [b, k, p, y, x] = pair_index(i, HW, W, o.count);
    const int cls = pair_class_at(labels + b * HW, y, x, o.dy[k], o.dx[k], H, W, radius, region);
    if (cls == kPairNone) continue;
    sum[cls] += pair_term<acc_t>(cls, static_cast<acc_t>(aff[i]));
    count[cls] += 1;
  }
  for (int c = 0; c < 3; ++c) {
    values[c][threadIdx.x] = sum[c];
    values[3 + c][threadIdx.x] = count[c];
  }
  block_reduce(values);
  if (threadIdx.x < kPairStats)
    partials[blockIdx.x * kPairStats + threadIdx.x] = values[threadIdx.x][0];
}

// One block: thread t adds partials t, t + kThreads, ... in order, then the block tree.
__global__ void finish_kernel(const double* __restrict__ partials, int n_partials,
                              double* __restrict__ stats) {
  __shared__ double values[kPairStats][kThreads];
  for (int s = 0; s < kPairStats; ++s) {
    double acc = 0;
    for (int j = threadIdx.x; j < n_partials; j += kThreads) acc += partials[j * kPairStats + s];
    values[s][threadIdx.x] = acc;
  }
  block_reduce(values);
  if (threadIdx.x < kPairStats) stats[threadIdx.x] = values[threadIdx.x][0];
}

template <typename scalar_t>
__global__ void backward_kernel(const double* __restrict__ grad_stats,
                                const scalar_t* __restrict__ aff,
                                const uint8_t* __restrict__ labels, scalar_t* __restrict__ grad_aff,
                                int64_t B, int H, int W, int radius, int region, Offsets o) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t total = B * o.count * HW;
  for (int64_t i = grid_first(); i < total; i += grid_stride()) {
    const auto [b, k, p, y, x] = pair_index(i, HW, W, o.count);
    const int cls = pair_class_at(labels + b * HW, y, x, o.dy[k], o.dx[k], H, W, radius, region);
    grad_aff[i] =
        cls == kPairNone
            ? scalar_t(0)
            : static_cast<scalar_t>(static_cast<acc_t>(grad_stats[cls]) *
                                    pair_term_grad<acc_t>(cls, static_cast<acc_t>(aff[i])));
  }
}

__global__ void classes_kernel(const uint8_t* __restrict__ labels, uint8_t* __restrict__ out,
                               int64_t B, int H, int W, int radius, int region, Offsets o) {
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t total = B * o.count * HW;
  for (int64_t i = grid_first(); i < total; i += grid_stride()) {
    const auto [b, k, p, y, x] = pair_index(i, HW, W, o.count);
    out[i] = static_cast<uint8_t>(
        pair_class_at(labels + b * HW, y, x, o.dy[k], o.dx[k], H, W, radius, region));
  }
}

}  // namespace

at::Tensor pair_loss_cuda(const at::Tensor& aff_in, const at::Tensor& labels_in, int64_t radius,
                          int64_t region) {
  c10::cuda::CUDAGuard guard(aff_in.device());
  const PairLossArgs args = prepare_pair_loss_args(aff_in, labels_in, radius, region);
  const at::Tensor &aff = args.aff, &labels = args.labels;
  const int64_t B = aff.size(0), H = aff.size(2), W = aff.size(3);
  at::Tensor stats = at::zeros({kPairStats}, aff.options().dtype(at::kDouble));
  if (aff.numel() == 0) return stats;
  const int blocks = static_cast<int>(std::min<int64_t>(blocks_for(aff.numel()), kMaxPartials));
  at::Tensor partials = at::empty({blocks, kPairStats}, stats.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, aff.scalar_type(), "pair_loss_cuda", [&] {
        partial_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
            aff.data_ptr<scalar_t>(), labels.data_ptr<uint8_t>(), partials.data_ptr<double>(), B,
            static_cast<int>(H), static_cast<int>(W), static_cast<int>(radius),
            static_cast<int>(region), args.offsets);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  finish_kernel<<<1, kThreads, 0, stream>>>(partials.data_ptr<double>(), blocks,
                                            stats.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return stats;
}

at::Tensor pair_loss_backward_cuda(const at::Tensor& grad_stats_in, const at::Tensor& aff_in,
                                   const at::Tensor& labels_in, int64_t radius, int64_t region) {
  c10::cuda::CUDAGuard guard(aff_in.device());
  const PairLossArgs args = prepare_pair_loss_args(aff_in, labels_in, radius, region);
  const at::Tensor &aff = args.aff, &labels = args.labels;
  const at::Tensor grad_stats = prepare_grad_stats(grad_stats_in, aff.device());
  const int64_t B = aff.size(0), H = aff.size(2), W = aff.size(3);
  at::Tensor grad_aff = at::empty_like(aff);
  if (aff.numel() == 0) return grad_aff;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, aff.scalar_type(), "pair_loss_backward_cuda", [&] {
        backward_kernel<scalar_t><<<blocks_for(aff.numel()), kThreads, 0, stream>>>(
            grad_stats.data_ptr<double>(), aff.data_ptr<scalar_t>(), labels.data_ptr<uint8_t>(),
            grad_aff.data_ptr<scalar_t>(), B, static_cast<int>(H), static_cast<int>(W),
            static_cast<int>(radius), static_cast<int>(region), args.offsets);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_aff;
}

at::Tensor pair_classes_cuda(const at::Tensor& labels_in, int64_t radius, int64_t region) {
  c10::cuda::CUDAGuard guard(labels_in.device());
  const at::Tensor labels = prepare_labels(labels_in, radius, region);
  const Offsets o = offsets_for(radius);
  const int64_t B = labels.size(0), H = labels.size(1), W = labels.size(2);
  at::Tensor classes = at::empty({B, o.count, H, W}, labels.options().dtype(at::kByte));
  if (classes.numel() == 0) return classes;
  auto stream = c10::cuda::getCurrentCUDAStream();
  classes_kernel<<<blocks_for(classes.numel()), kThreads, 0, stream>>>(
      labels.data_ptr<uint8_t>(), classes.data_ptr<uint8_t>(), B, static_cast<int>(H),
      static_cast<int>(W), static_cast<int>(radius), static_cast<int>(region), o);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return classes;
}

TORCH_LIBRARY_IMPL(affext, CUDA, m) {
  m.impl("pair_loss", &pair_loss_cuda);
  m.impl("pair_loss_backward", &pair_loss_backward_cuda);
  m.impl("pair_classes", &pair_classes_cuda);
}

}  // namespace affext
