// CPU kernels of the pairwise affinity. Work is split by (batch, row); within a row the
// innermost loop runs along x over contiguous memory, so the compiler vectorises it.
#include "common/stable.h"

#include <algorithm>
#include <vector>

#include "affinity/affinity.h"
#include "common/parallel.h"

namespace affext {

namespace {

// Valid x range [x0, x1) for a neighbour at column offset dx on a row of width W.
inline void column_range(int64_t W, int dx, int64_t& x0, int64_t& x1) {
  x0 = std::max<int64_t>(0, -dx);
  x1 = std::min<int64_t>(W, W - dx);
}

template <typename scalar_t>
void forward_kernel(const scalar_t* feat, scalar_t* aff, int64_t B, int64_t C, int64_t H, int64_t W,
                    const Offsets& o) {
  using acc_t = scalar_t;
  const int64_t HW = H * W;
  const int K = o.count;
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);
  parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> l1(static_cast<size_t>(K) * W);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, y = row % H;
      std::fill(l1.begin(), l1.end(), acc_t(0));
      const scalar_t* fb = feat + b * C * HW;
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* src = fb + c * HW + y * W;
        for (int k = 0; k < K; ++k) {
          const int dy = o.dy[k], dx = o.dx[k];
          if (y + dy >= H) continue;
          int64_t x0, x1;
          column_range(W, dx, x0, x1);
          const scalar_t* dst = src + dy * W + dx;
          acc_t* acc = l1.data() + static_cast<int64_t>(k) * W;
          for (int64_t x = x0; x < x1; ++x) acc[x] += l1_term<acc_t>(src[x], dst[x]);
        }
      }
      for (int k = 0; k < K; ++k) {
        const int dy = o.dy[k], dx = o.dx[k];
        scalar_t* out = aff + ((b * K + k) * H + y) * W;
        const acc_t* acc = l1.data() + static_cast<int64_t>(k) * W;
        int64_t x0, x1;
        column_range(W, dx, x0, x1);
        if (y + dy >= H) x1 = x0;  // whole row outside the map
        for (int64_t x = 0; x < W; ++x)
          out[x] = (x >= x0 && x < x1) ? affinity_from_l1(acc[x], inv_c) : scalar_t(0);
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* grad, const scalar_t* feat, const scalar_t* aff,
                     scalar_t* grad_feat, int64_t B, int64_t C, int64_t H, int64_t W,
                     const Offsets& o) {
  using acc_t = scalar_t;
  const int64_t HW = H * W;
  const int K = o.count;
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);
  // Pass 1: one weight per pair, w = grad * aff / C (zero for pairs outside the map).
  std::vector<acc_t> weight(static_cast<size_t>(B) * K * HW);
  parallel_for(0, B * K * HW, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) weight[i] = pair_weight<acc_t>(grad[i], aff[i], inv_c);
  });
  // Pass 2: each pixel gathers from the pairs it belongs to, as first and as second pixel,
  // in a fixed order: deterministic, no atomics.
  parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> g(W);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, y = row % H;
      const acc_t* wb = weight.data() + b * K * HW;
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* fc = feat + (b * C + c) * HW;
        const scalar_t* src = fc + y * W;
        std::fill(g.begin(), g.end(), acc_t(0));
        for (int k = 0; k < K; ++k) {
          const int dy = o.dy[k], dx = o.dx[k];
          int64_t x0, x1;
          if (y + dy < H) {  // pixel is the first of pair (p, p + o_k)
            column_range(W, dx, x0, x1);
            const scalar_t* nb = src + dy * W + dx;
            const acc_t* w = wb + (static_cast<int64_t>(k) * H + y) * W;
            for (int64_t x = x0; x < x1; ++x) g[x] += grad_term<acc_t>(w[x], src[x], nb[x]);
          }
          if (y - dy >= 0) {  // pixel is the second of pair (p - o_k, p)
            column_range(W, -dx, x0, x1);
            const scalar_t* nb = src - dy * W - dx;
            const acc_t* w = wb + (static_cast<int64_t>(k) * H + (y - dy)) * W - dx;
            for (int64_t x = x0; x < x1; ++x) g[x] += grad_term<acc_t>(w[x], src[x], nb[x]);
          }
        }
        scalar_t* out = grad_feat + (b * C + c) * HW + y * W;
        for (int64_t x = 0; x < W; ++x) out[x] = static_cast<scalar_t>(g[x]);
      }
    }
  });
}

}  // namespace

Tensor pairwise_affinity_cpu(const Tensor& feat_in, int64_t radius) {
  check_affinity_args(feat_in, radius);
  check_cpu_dtype("feat", feat_in);
  const Offsets o = offsets_for(radius);
  const Tensor feat = torch::stable::contiguous(feat_in);
  const int64_t B = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  Tensor aff = torch::stable::new_empty(feat, {B, o.count, H, W});
  if (B == 0) return aff;
  THO_DISPATCH_V2(feat.scalar_type(), "pairwise_affinity_cpu", AT_WRAP([&] {
                    forward_kernel<scalar_t>(feat.const_data_ptr<scalar_t>(),
                                             aff.mutable_data_ptr<scalar_t>(), B, C, H, W, o);
                  }),
                  AT_FLOATING_TYPES);
  return aff;
}

Tensor pairwise_affinity_backward_cpu(const Tensor& grad_in, const Tensor& feat_in,
                                      const Tensor& aff_in, int64_t radius) {
  const BackwardArgs args = prepare_backward_args(grad_in, feat_in, aff_in, radius);
  const Offsets& o = args.offsets;
  const Tensor &grad = args.grad, &feat = args.feat, &aff = args.aff;
  check_cpu_dtype("feat", feat);
  const int64_t B = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  Tensor grad_feat = torch::stable::empty_like(feat);
  if (B == 0) return grad_feat;
  THO_DISPATCH_V2(feat.scalar_type(), "pairwise_affinity_backward_cpu", AT_WRAP([&] {
                    backward_kernel<scalar_t>(
                        grad.const_data_ptr<scalar_t>(), feat.const_data_ptr<scalar_t>(),
                        aff.const_data_ptr<scalar_t>(), grad_feat.mutable_data_ptr<scalar_t>(), B,
                        C, H, W, o);
                  }),
                  AT_FLOATING_TYPES);
  return grad_feat;
}

STABLE_TORCH_LIBRARY_IMPL(affext, CPU, m) {
  m.impl("pairwise_affinity", TORCH_BOX(&pairwise_affinity_cpu));
  m.impl("pairwise_affinity_backward", TORCH_BOX(&pairwise_affinity_backward_cpu));
}

}  // namespace affext
