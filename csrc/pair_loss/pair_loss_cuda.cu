// CUDA kernels of the pair loss: the launch layer around pair_loss.h's math.
// Forward, one kernel, deterministic without floating-point atomics: a fixed grid in which
// each thread sums a fixed set of pairs (grid-stride) in double and each block reduces its
// threads in a fixed tree into one partial; the block that finishes last (an integer counter)
// adds the partials in block order and writes the losses and counts. The result does not
// depend on which block finishes last. Backward: one thread per pair, the gradients of the
// class sums formed on the device from the forward's counts. With uint8 labels there is no
// host synchronisation (other integer dtypes are range-checked first, prepare_labels): the
// op can be captured in a CUDA graph.
// Cost at B=8, 56x56, r=5: 850k pairs, 3.4 MB of affinities and 25 KB of labels read: a few
// microseconds of memory traffic; the op is bound by its two launches (and autograd's).
#include "common/stable.h"

#include <algorithm>

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

// Sums the pairs of this block into partials[blockIdx.x]; the last block to finish adds all
// partials in order and writes the outputs. finished: a zeroed counter.
template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ aff, const uint8_t* __restrict__ labels,
                               double* __restrict__ partials, unsigned int* __restrict__ finished,
                               scalar_t* __restrict__ loss, scalar_t* __restrict__ bg_loss,
                               scalar_t* __restrict__ fg_loss, scalar_t* __restrict__ neg_loss,
                               int64_t* __restrict__ counts, int64_t B, int H, int W, int radius,
                               int region, Offsets o) {
  using acc_t = opmath_t<scalar_t>;
  __shared__ double values[kPairStats][kThreads];
  __shared__ bool last;
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
  if (threadIdx.x < kPairStats) {
    partials[blockIdx.x * kPairStats + threadIdx.x] = values[threadIdx.x][0];
    __threadfence();  // the partial is visible to every block before the counter moves
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(finished, 1u) == gridDim.x - 1;
    // Acquire side of the writers' fences (PTX memory model): the last block's reads of the
    // partials below are ordered after the ticket that saw every other block's increment;
    // the barrier then extends the order to the block's other threads.
    if (last) __threadfence();
  }
  __syncthreads();
  if (!last) return;
  // The last block: thread t adds partials t, t + kThreads, ... in order, then the block tree.
  for (int s = 0; s < kPairStats; ++s) {
    double acc = 0;
    for (unsigned int j = threadIdx.x; j < gridDim.x; j += kThreads)
      acc += __ldcg(partials + j * kPairStats + s);  // from L2: other blocks wrote them
    values[s][threadIdx.x] = acc;
  }
  block_reduce(values);
  if (threadIdx.x == 0) {
    double stats[kPairStats], parts[kLossParts];
    for (int s = 0; s < kPairStats; ++s) stats[s] = values[s][0];
    pair_loss_parts(stats, parts);
    *loss = static_cast<scalar_t>(parts[kPartLoss]);
    *bg_loss = static_cast<scalar_t>(parts[kPartBg]);
    *fg_loss = static_cast<scalar_t>(parts[kPartFg]);
    *neg_loss = static_cast<scalar_t>(parts[kPartNeg]);
    for (int c = 0; c < 3; ++c) counts[c] = static_cast<int64_t>(stats[3 + c]);
  }
}

// The gradients of the four loss outputs (nullptr: none) and the forward's counts.
template <typename scalar_t>
struct LossGrads {
  const scalar_t* parts[kLossParts];
  const int64_t* counts;
};

template <typename scalar_t>
__global__ void backward_kernel(LossGrads<scalar_t> grads, const scalar_t* __restrict__ aff,
                                const uint8_t* __restrict__ labels, scalar_t* __restrict__ grad_aff,
                                int64_t B, int H, int W, int radius, int region, Offsets o) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int64_t total = B * o.count * HW;
  double grad_parts[kLossParts];
  for (int i = 0; i < kLossParts; ++i)
    grad_parts[i] = grads.parts[i] ? static_cast<double>(static_cast<acc_t>(*grads.parts[i])) : 0;
  acc_t sum_grad[3];
  for (int c = 0; c < 3; ++c)
    sum_grad[c] = static_cast<acc_t>(class_sum_grad(
        c, grad_parts[kPartLoss], grad_parts[kPartBg + c], static_cast<double>(grads.counts[c])));
  for (int64_t i = grid_first(); i < total; i += grid_stride()) {
    const auto [b, k, p, y, x] = pair_index(i, HW, W, o.count);
    const int cls = pair_class_at(labels + b * HW, y, x, o.dy[k], o.dx[k], H, W, radius, region);
    grad_aff[i] = cls == kPairNone
                      ? scalar_t(0)
                      : static_cast<scalar_t>(
                            sum_grad[cls] * pair_term_grad<acc_t>(cls, static_cast<acc_t>(aff[i])));
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

PairLossOutputs pair_loss_cuda(const Tensor& aff_in, const Tensor& labels_in, int64_t radius,
                               int64_t region) {
  const torch::stable::accelerator::DeviceGuard guard(aff_in.get_device_index());
  const PairLossArgs args = prepare_pair_loss_args(aff_in, labels_in, radius, region);
  const Tensor &aff = args.aff, &labels = args.labels;
  const int64_t B = aff.size(0), H = aff.size(2), W = aff.size(3);
  PairLossOutputs out = make_pair_loss_outputs(aff);
  // An empty batch still runs one block: it writes the losses (0) and counts (0).
  const int blocks = static_cast<int>(
      std::min<int64_t>(blocks_for(std::max<int64_t>(aff.numel(), 1)), kMaxPartials));
  Tensor partials = torch::stable::new_empty(aff, {blocks, kPairStats}, ScalarType::Double);
  Tensor finished = torch::stable::new_zeros(aff, {1}, ScalarType::Int);
  const cudaStream_t stream = current_stream();
  THO_DISPATCH_V2(aff.scalar_type(), "pair_loss_cuda", AT_WRAP(([&] {
                    forward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
                        aff.const_data_ptr<scalar_t>(), labels.const_data_ptr<uint8_t>(),
                        partials.mutable_data_ptr<double>(),
                        reinterpret_cast<unsigned int*>(finished.mutable_data_ptr<int>()),
                        std::get<0>(out).mutable_data_ptr<scalar_t>(),
                        std::get<1>(out).mutable_data_ptr<scalar_t>(),
                        std::get<2>(out).mutable_data_ptr<scalar_t>(),
                        std::get<3>(out).mutable_data_ptr<scalar_t>(),
                        std::get<4>(out).mutable_data_ptr<int64_t>(), B, static_cast<int>(H),
                        static_cast<int>(W), static_cast<int>(radius), static_cast<int>(region),
                        args.offsets);
                    check_launch();
                  })),  // parenthesised: the launch's <<<...>>> commas
                  AT_FLOATING_TYPES, ScalarType::Half, ScalarType::BFloat16);
  return out;
}

Tensor pair_loss_backward_cuda(const std::optional<Tensor>& grad_loss,
                               const std::optional<Tensor>& grad_bg_loss,
                               const std::optional<Tensor>& grad_fg_loss,
                               const std::optional<Tensor>& grad_neg_loss, const Tensor& counts,
                               const Tensor& aff_in, const Tensor& labels_in, int64_t radius,
                               int64_t region) {
  const torch::stable::accelerator::DeviceGuard guard(aff_in.get_device_index());
  const PairLossArgs args = prepare_pair_loss_args(aff_in, labels_in, radius, region);
  const Tensor &aff = args.aff, &labels = args.labels;
  const PairLossGrads grads =
      prepare_pair_loss_grads(grad_loss, grad_bg_loss, grad_fg_loss, grad_neg_loss, counts, aff);
  const int64_t B = aff.size(0), H = aff.size(2), W = aff.size(3);
  Tensor grad_aff = torch::stable::empty_like(aff);  // aff is contiguous
  if (aff.numel() == 0) return grad_aff;
  const cudaStream_t stream = current_stream();
  THO_DISPATCH_V2(
      aff.scalar_type(), "pair_loss_backward_cuda", AT_WRAP(([&] {
        LossGrads<scalar_t> g{};
        for (int i = 0; i < kLossParts; ++i)
          g.parts[i] =
              grads.parts[i].defined() ? grads.parts[i].const_data_ptr<scalar_t>() : nullptr;
        g.counts = grads.counts.const_data_ptr<int64_t>();
        backward_kernel<scalar_t><<<blocks_for(aff.numel()), kThreads, 0, stream>>>(
            g, aff.const_data_ptr<scalar_t>(), labels.const_data_ptr<uint8_t>(),
            grad_aff.mutable_data_ptr<scalar_t>(), B, static_cast<int>(H), static_cast<int>(W),
            static_cast<int>(radius), static_cast<int>(region), args.offsets);
        check_launch();
      })),  // parenthesised: the launch's <<<...>>> commas
      AT_FLOATING_TYPES, ScalarType::Half, ScalarType::BFloat16);
  return grad_aff;
}

Tensor pair_classes_cuda(const Tensor& labels_in, int64_t radius, int64_t region) {
  const torch::stable::accelerator::DeviceGuard guard(labels_in.get_device_index());
  const Tensor labels = prepare_labels(labels_in, radius, region);
  const Offsets o = offsets_for(radius);
  const int64_t B = labels.size(0), H = labels.size(1), W = labels.size(2);
  Tensor classes = torch::stable::new_empty(labels, {B, o.count, H, W}, ScalarType::Byte);
  if (classes.numel() == 0) return classes;
  const cudaStream_t stream = current_stream();
  classes_kernel<<<blocks_for(classes.numel()), kThreads, 0, stream>>>(
      labels.const_data_ptr<uint8_t>(), classes.mutable_data_ptr<uint8_t>(), B, static_cast<int>(H),
      static_cast<int>(W), static_cast<int>(radius), static_cast<int>(region), o);
  check_launch();
  return classes;
}

STABLE_TORCH_LIBRARY_IMPL(affext, CUDA, m) {
  m.impl("pair_loss", TORCH_BOX(&pair_loss_cuda));
  m.impl("pair_loss_backward", TORCH_BOX(&pair_loss_backward_cuda));
  m.impl("pair_classes", TORCH_BOX(&pair_classes_cuda));
}

}  // namespace affext
