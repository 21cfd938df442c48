// CPU kernels of the pair loss. The forward works by (batch, row) chunks: each chunk sums its
// pairs into its own slot in double and the slots are added in chunk order afterwards, so the
// result does not depend on the number of threads; pair_loss_parts then gives the losses.
#include "common/stable.h"

#include <vector>

#include "common/parallel.h"
#include "pair_loss/pair_loss.h"

namespace affext {

namespace {

template <typename scalar_t>
void forward_kernel(const scalar_t* aff, const uint8_t* labels, double* stats, int64_t B, int H,
                    int W, int radius, int region, const Offsets& o) {
  using acc_t = scalar_t;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int K = o.count;
  std::vector<double> partial(static_cast<size_t>(B) * H * kPairStats, 0.0);
  parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H;
      const int y = static_cast<int>(row % H);
      const uint8_t* lb = labels + b * HW;
      double sum[3] = {0, 0, 0};
      int64_t count[3] = {0, 0, 0};
      for (int k = 0; k < K; ++k) {
        const scalar_t* a = aff + ((b * K + k) * H + y) * W;
        for (int x = 0; x < W; ++x) {
          const int cls = pair_class_at(lb, y, x, o.dy[k], o.dx[k], H, W, radius, region);
          if (cls == kPairNone) continue;
          sum[cls] += pair_term<acc_t>(cls, a[x]);
          ++count[cls];
        }
      }
      double* out = partial.data() + row * kPairStats;
      for (int c = 0; c < 3; ++c) {
        out[c] = sum[c];
        out[3 + c] = static_cast<double>(count[c]);
      }
    }
  });
  for (int s = 0; s < kPairStats; ++s) stats[s] = 0;
  for (int64_t row = 0; row < B * H; ++row)
    for (int s = 0; s < kPairStats; ++s) stats[s] += partial[row * kPairStats + s];
}

template <typename scalar_t>
void backward_kernel(const double* sum_grad, const scalar_t* aff, const uint8_t* labels,
                     scalar_t* grad_aff, int64_t B, int H, int W, int radius, int region,
                     const Offsets& o) {
  using acc_t = scalar_t;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int K = o.count;
  const acc_t g[3] = {static_cast<acc_t>(sum_grad[0]), static_cast<acc_t>(sum_grad[1]),
                      static_cast<acc_t>(sum_grad[2])};
  parallel_for(0, B * K * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int y = static_cast<int>(row % H);
      const int k = static_cast<int>((row / H) % K);
      const int64_t b = row / (static_cast<int64_t>(K) * H);
      const uint8_t* lb = labels + b * HW;
      const scalar_t* a = aff + row * W;
      scalar_t* out = grad_aff + row * W;
      for (int x = 0; x < W; ++x) {
        const int cls = pair_class_at(lb, y, x, o.dy[k], o.dx[k], H, W, radius, region);
        out[x] = cls == kPairNone ? scalar_t(0) : g[cls] * pair_term_grad<acc_t>(cls, a[x]);
      }
    }
  });
}

}  // namespace

PairLossOutputs pair_loss_cpu(const Tensor& aff_in, const Tensor& labels_in, int64_t radius,
                              int64_t region) {
  const PairLossArgs args = prepare_pair_loss_args(aff_in, labels_in, radius, region);
  const Tensor &aff = args.aff, &labels = args.labels;
  check_cpu_dtype("aff", aff);
  const int64_t B = aff.size(0), H = aff.size(2), W = aff.size(3);
  double stats[kPairStats] = {0, 0, 0, 0, 0, 0};
  if (aff.numel() > 0) {
    THO_DISPATCH_V2(aff.scalar_type(), "pair_loss_cpu", AT_WRAP([&] {
                      forward_kernel<scalar_t>(
                          aff.const_data_ptr<scalar_t>(), labels.const_data_ptr<uint8_t>(), stats,
                          B, static_cast<int>(H), static_cast<int>(W), static_cast<int>(radius),
                          static_cast<int>(region), args.offsets);
                    }),
                    AT_FLOATING_TYPES);
  }
  double parts[kLossParts];
  pair_loss_parts(stats, parts);
  PairLossOutputs out = make_pair_loss_outputs(aff);
  const Tensor* part_tensors[kLossParts] = {&std::get<0>(out), &std::get<1>(out), &std::get<2>(out),
                                            &std::get<3>(out)};
  for (int i = 0; i < kLossParts; ++i) torch::stable::fill_(*part_tensors[i], parts[i]);
  int64_t* counts = std::get<4>(out).mutable_data_ptr<int64_t>();
  for (int c = 0; c < 3; ++c) counts[c] = static_cast<int64_t>(stats[3 + c]);
  return out;
}

Tensor pair_loss_backward_cpu(const std::optional<Tensor>& grad_loss,
                              const std::optional<Tensor>& grad_bg_loss,
                              const std::optional<Tensor>& grad_fg_loss,
                              const std::optional<Tensor>& grad_neg_loss, const Tensor& counts_in,
                              const Tensor& aff_in, const Tensor& labels_in, int64_t radius,
                              int64_t region) {
  const PairLossArgs args = prepare_pair_loss_args(aff_in, labels_in, radius, region);
  const Tensor &aff = args.aff, &labels = args.labels;
  check_cpu_dtype("aff", aff);
  const PairLossGrads grads =
      prepare_pair_loss_grads(grad_loss, grad_bg_loss, grad_fg_loss, grad_neg_loss, counts_in, aff);
  double grad_parts[kLossParts];
  for (int i = 0; i < kLossParts; ++i)
    grad_parts[i] = grads.parts[i].defined() ? item<double>(grads.parts[i]) : 0.0;
  const int64_t* counts = grads.counts.const_data_ptr<int64_t>();
  double sum_grad[3];
  for (int c = 0; c < 3; ++c)
    sum_grad[c] = class_sum_grad(c, grad_parts[kPartLoss], grad_parts[kPartBg + c],
                                 static_cast<double>(counts[c]));
  const int64_t B = aff.size(0), H = aff.size(2), W = aff.size(3);
  Tensor grad_aff = torch::stable::empty_like(aff);  // aff is contiguous
  if (aff.numel() == 0) return grad_aff;
  THO_DISPATCH_V2(aff.scalar_type(), "pair_loss_backward_cpu", AT_WRAP([&] {
                    backward_kernel<scalar_t>(
                        sum_grad, aff.const_data_ptr<scalar_t>(), labels.const_data_ptr<uint8_t>(),
                        grad_aff.mutable_data_ptr<scalar_t>(), B, static_cast<int>(H),
                        static_cast<int>(W), static_cast<int>(radius), static_cast<int>(region),
                        args.offsets);
                  }),
                  AT_FLOATING_TYPES);
  return grad_aff;
}

Tensor pair_classes_cpu(const Tensor& labels_in, int64_t radius, int64_t region) {
  const Tensor labels = prepare_labels(labels_in, radius, region);
  const Offsets o = offsets_for(radius);
  const int64_t B = labels.size(0), H = labels.size(1), W = labels.size(2), K = o.count;
  Tensor classes = torch::stable::new_empty(labels, {B, K, H, W}, ScalarType::Byte);
  if (classes.numel() == 0) return classes;
  const uint8_t* lab = labels.const_data_ptr<uint8_t>();
  uint8_t* out = classes.mutable_data_ptr<uint8_t>();
  parallel_for(0, B * K * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int y = static_cast<int>(row % H);
      const int k = static_cast<int>((row / H) % K);
      const uint8_t* lb = lab + (row / (K * H)) * H * W;
      for (int x = 0; x < W; ++x)
        out[row * W + x] = static_cast<uint8_t>(
            pair_class_at(lb, y, x, o.dy[k], o.dx[k], static_cast<int>(H), static_cast<int>(W),
                          static_cast<int>(radius), static_cast<int>(region)));
    }
  });
  return classes;
}

STABLE_TORCH_LIBRARY_IMPL(affext, CPU, m) {
  m.impl("pair_loss", TORCH_BOX(&pair_loss_cpu));
  m.impl("pair_loss_backward", TORCH_BOX(&pair_loss_backward_cpu));
  m.impl("pair_classes", TORCH_BOX(&pair_classes_cpu));
}

}  // namespace affext
