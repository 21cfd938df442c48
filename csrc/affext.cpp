// Op schemas of the affext namespace, and the two ops that describe the library; kernels live
// in their own folders and register themselves with STABLE_TORCH_LIBRARY_IMPL. The library is
// built against PyTorch's stable ABI and has no Python module: affext/_extension.py loads it
// with torch.ops.load_library.
#include "common/stable.h"

#include <string>
#include <vector>

#ifndef AFFEXT_CUDA_ARCHS
#define AFFEXT_CUDA_ARCHS ""
#endif
#ifndef AFFEXT_CUDA_VERSION
#define AFFEXT_CUDA_VERSION ""
#endif

STABLE_TORCH_LIBRARY(affext, m) {
  // Section 3: aff[b, k, y, x] = exp(-mean_c |feat[b,c,y,x] - feat[b,c,y+dy_k,x+dx_k]|).
  m.def("pairwise_affinity(Tensor feat, int radius) -> Tensor");
  m.def("pairwise_affinity_backward(Tensor grad, Tensor feat, Tensor aff, int radius) -> Tensor");
  // Section 5: vec(cam) T^iterations, T = A^beta D^-1 over the pairs of the region
  // (0: psa's from-region, 1: every pair inside the map). No autograd.
  m.def(
      "random_walk(Tensor cam, Tensor aff, float beta, int iterations, int radius, "
      "int region) -> Tensor");
  // Section 4: the balanced loss of the pairs of region (0 psa, 1 full) classified from
  // labels: loss, bg_loss, fg_loss, neg_loss (0-dim, aff's dtype; float64 sums inside) and the
  // (3,) int64 counts [bg, fg, neg]. The backward takes the four losses' gradients (None for
  // a loss that has none) and the counts; the gradient flows into aff.
  m.def(
      "pair_loss(Tensor aff, Tensor labels, int radius, int region) -> (Tensor loss, Tensor "
      "bg_loss, Tensor fg_loss, Tensor neg_loss, Tensor counts)");
  m.def(
      "pair_loss_backward(Tensor? grad_loss, Tensor? grad_bg_loss, Tensor? grad_fg_loss, "
      "Tensor? grad_neg_loss, Tensor counts, Tensor aff, Tensor labels, int radius, int region) "
      "-> Tensor");
  // Section 4: (B, K, H, W) uint8 pair classes: 0 bg_pos, 1 fg_pos, 2 neg, 3 none.
  m.def("pair_classes(Tensor labels, int radius, int region) -> Tensor");
  // Section 2: dense CRF marginals of each (n, H, W) stack of scores on its image (pydensecrf's
  // DenseCRF2D with a Gaussian and a bilateral Potts term, unary -log(clip(score, 1e-5, 1)),
  // mean field). image (B, H, W, 3) uint8, or (1, H, W, 3) shared by every stack. No autograd.
  m.def(
      "dense_crf(Tensor image, Tensor scores, int iterations, float gaussian_sxy, "
      "float gaussian_compat, float bilateral_sxy, float bilateral_srgb, float bilateral_compat, "
      "bool validate) -> Tensor");
  // Section 10 (PAR): the (B, 8 len(dilations), H, W) weights of each pixel's ring neighbours
  // from the images (float32, float64 for float64 images), then num_iter steps
  // masks <- sum_k weights_k masks[neighbour k], and their adjoint (the gradient in masks).
  m.def("par_weights(Tensor imgs, int[] dilations, float w1, float w2) -> Tensor");
  m.def("par_refine(Tensor masks, Tensor weights, int[] dilations, int num_iter) -> Tensor");
  m.def(
      "par_refine_backward(Tensor grad, Tensor weights, int[] dilations, int num_iter) -> "
      "Tensor");
  // The library itself: how it was built ("key=value" lines: cuda, cuda_version, cuda_arch,
  // openmp, torch; affext/_extension.py reads them), and the kernels' neighbourhood offsets of
  // a radius as [dy_0, dx_0, dy_1, dx_1, ...] (a test ties them to affext/neighborhood.py).
  m.def("build_info() -> str");
  m.def("neighborhood_offsets(int radius) -> int[]");
}

namespace {

std::string build_info() {
#ifdef AFFEXT_WITH_CUDA
  const bool cuda = true;
#else
  const bool cuda = false;
#endif
  return affext::message("cuda=", cuda ? 1 : 0, "\ncuda_version=", AFFEXT_CUDA_VERSION,
                         "\ncuda_arch=", AFFEXT_CUDA_ARCHS, "\nopenmp=", AFFEXT_OPENMP,
                         "\ntorch=", AFFEXT_TORCH_VERSION);
}

std::vector<int64_t> neighborhood_offsets(int64_t radius) {
  const affext::Offsets o = affext::offsets_for(radius);
  std::vector<int64_t> out;
  for (int k = 0; k < o.count; ++k) {
    out.push_back(o.dy[k]);
    out.push_back(o.dx[k]);
  }
  return out;
}

}  // namespace

// No tensor arguments: the ops run on no device.
STABLE_TORCH_LIBRARY_IMPL(affext, CompositeExplicitAutograd, m) {
  m.impl("build_info", TORCH_BOX(&build_info));
  m.impl("neighborhood_offsets", TORCH_BOX(&neighborhood_offsets));
}
