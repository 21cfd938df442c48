// CPU dense CRF: the permutohedral lattices of an image built once, then `iterations` mean-field
// updates of every stack of scores that shares the image (the math in dense_crf.h).
//
// A lattice's vertices are numbered in order of first appearance in pixel order (ranges of
// pixels in parallel, each with a hash table, merged in range order), so that vertex numbers,
// and with them every sum, are the same whatever the thread count. splat is a gather (each
// vertex sums its pixels in increasing order from a CSR list), blur and slice read only, so
// the parallel loops write disjoint outputs and the result is the same bits for any number of
// threads. The filter is linear, so the channels of all stacks that share an image (psa's la
// and ha CRFs of one image) go through one lattice pass together; only the softmax is per
// stack.
#include "common/stable.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/parallel.h"
#include "dense_crf/dense_crf.h"
#include "dense_crf/dense_crf_args.h"

namespace affext {
namespace {

using crf::KeyPacking;

constexpr int64_t kGrain = 2048;   // pixels or vertices per task in the build
constexpr int64_t kMaxRanges = 8;  // pixel ranges numbered in parallel

// Vertices of a lattice by key: ids 1..M in order of first appearance (0: no vertex).
class VertexTable {
 public:
  explicit VertexTable(int64_t expected) {
    int64_t cap = 1024;
    while (cap < 2 * expected) cap <<= 1;
    resize(cap);
  }
  int32_t insert(uint64_t key) {
    if (2 * (count_ + 1) > static_cast<int64_t>(ids_.size())) grow();
    int64_t h = slot(key);
    while (ids_[h] != 0) {
      if (keys_[h] == key) return ids_[h];
      h = (h + 1) & mask_;
    }
    keys_[h] = key;
    ids_[h] = static_cast<int32_t>(++count_);
    return ids_[h];
  }
  int32_t find(uint64_t key) const {
    int64_t h = slot(key);
    while (ids_[h] != 0) {
      if (keys_[h] == key) return ids_[h];
      h = (h + 1) & mask_;
    }
    return 0;
  }
  int64_t size() const { return count_; }

 private:
  int64_t slot(uint64_t key) const {
    return static_cast<int64_t>((key * 0x9E3779B97F4A7C15ull) >> shift_);
  }
  void resize(int64_t cap) {
    keys_.assign(cap, 0);
    ids_.assign(cap, 0);
    mask_ = cap - 1;
    shift_ = 64;
    for (int64_t c = cap; c > 1; c >>= 1) --shift_;
  }
  void grow() {
    std::vector<uint64_t> keys = std::move(keys_);
    std::vector<int32_t> ids = std::move(ids_);
    resize(2 * static_cast<int64_t>(keys.size()));
    for (size_t i = 0; i < keys.size(); ++i) {
      if (ids[i] == 0) continue;
      int64_t h = slot(keys[i]);
      while (ids_[h] != 0) h = (h + 1) & mask_;
      keys_[h] = keys[i];
      ids_[h] = ids[i];
    }
  }
  std::vector<uint64_t> keys_;
  std::vector<int32_t> ids_;
  int64_t count_ = 0, mask_ = 0;
  int shift_ = 64;
};

// One lattice over the N pixels of an image.
struct Lattice {
  int d = 0;
  int64_t N = 0, M = 0;
  std::vector<int32_t> vertex;   // (N, d + 1): the vertex of each pixel's remainder r
  std::vector<float> weight;     // (N, d + 1): its barycentric weight
  std::vector<int64_t> start;    // (M + 2): vertex v's splat terms at [start[v], start[v + 1])
  std::vector<int32_t> splat_p;  // per term: the pixel, in increasing (pixel, r) order
  std::vector<float> splat_w;    // per term: the weight (times the pixel's normaliser, later)
  std::vector<float> slice_w;    // (N, d + 1): alpha * weight (times compat * normaliser, later)
  std::vector<int32_t> nbr;      // (d + 1, M + 1, 2): neighbours along each axis (0: none)
  std::vector<float> norm;       // (N): 1 / sqrt(L 1 + 1e-20)
};

// The first phase of a lattice's build, parallel over pixels: each pixel's d + 1 vertex keys
// (packed) and barycentric weights.
template <int D>
void embed_pixels(Lattice& lat, std::vector<uint64_t>& keys, int64_t H, int64_t W,
                  const uint8_t* rgb, float sxy, float srgb, int bits) {
  constexpr int D1 = D + 1;
  const int64_t N = H * W;
  lat.d = D;
  lat.N = N;
  keys.resize(N * D1);
  lat.weight.resize(N * D1);
  parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
    float f[D];
    for (int64_t p = begin; p < end; ++p) {
      const int x = static_cast<int>(p % W), y = static_cast<int>(p / W);
      if constexpr (D == crf::kBilateralDim)
        crf::bilateral_features(x, y, rgb + 3 * p, sxy, srgb, f);
      else
        crf::gaussian_features(x, y, sxy, f);
      crf::embed_point<D>(f, bits, &keys[p * D1], &lat.weight[p * D1]);
    }
  });
}

// The numbering phase: vertex ids in order of first appearance in pixel order (so that the
// numbering is fixed), and the splat's terms grouped by vertex in increasing pixel order (a
// counting sort). Over `parts` ranges of pixels in parallel: the first range numbers into
// `table` itself, each later one into a table of its own in the same way; the later ranges'
// vertex lists are then merged into `table` in range order (a key an earlier range has keeps
// its id) and their ids mapped to the merged ones. The ids are those of one pass over all the
// pixels, for any number of ranges. `table` starts empty; the blur's lookups use it after.
template <int D>
void number_vertices(Lattice& lat, const std::vector<uint64_t>& keys,
                     std::vector<uint64_t>& vertex_key, VertexTable& table, int64_t parts) {
  constexpr int D1 = D + 1;
  const int64_t N = lat.N;
  // (at most kMaxRanges: each range's counts take M + 1 slots)
  parts = std::max<int64_t>(1, std::min({parts, N / (4 * kGrain), kMaxRanges}));
  const auto first = [&](int64_t part) { return N * part / parts * D1; };  // its first term
  lat.vertex.resize(N * D1);
  // ids 1.. in a range's own order of first appearance; vkeys[id] its key (vkeys[0] unused)
  const auto number_range = [&](int64_t part, VertexTable& t, std::vector<uint64_t>& vkeys) {
    const int64_t e0 = first(part), e1 = first(part + 1);
    vkeys.assign(1, 0);
    for (int64_t e = e0; e < e1; ++e) {
      // neighbouring pixels mostly share their simplex: the previous pixel's vertex first
      if (e - e0 >= D1 && keys[e] == keys[e - D1]) {
        lat.vertex[e] = lat.vertex[e - D1];
        continue;
      }
      const int32_t id = t.insert(keys[e]);
      if (id == static_cast<int32_t>(vkeys.size())) vkeys.push_back(keys[e]);
      lat.vertex[e] = id;
    }
  };
  std::vector<std::vector<uint64_t>> range_keys(parts);
  parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part) {
      if (part == 0) {
        number_range(0, table, vertex_key);
      } else {
        VertexTable own((first(part + 1) - first(part)) / D1 / 8);
        number_range(part, own, range_keys[part]);
      }
    }
  });
  std::vector<std::vector<int32_t>> to_id(parts);
  for (int64_t part = 1; part < parts; ++part) {
    const std::vector<uint64_t>& rk = range_keys[part];
    to_id[part].assign(rk.size(), 0);
    for (size_t i = 1; i < rk.size(); ++i) {
      const int32_t id = table.insert(rk[i]);
      if (id == static_cast<int32_t>(vertex_key.size())) vertex_key.push_back(rk[i]);
      to_id[part][i] = id;
    }
  }
  const int64_t M = table.size();
  lat.M = M;
  // per range: the ids mapped, then each vertex's terms counted
  std::vector<std::vector<int64_t>> cursor(parts, std::vector<int64_t>(M + 1, 0));
  parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part) {
      int64_t* count = cursor[part].data();
      for (int64_t e = first(part); e < first(part + 1); ++e) {
        if (part > 0) lat.vertex[e] = to_id[part][lat.vertex[e]];
        ++count[lat.vertex[e]];
      }
    }
  });
  // vertex v's terms: range 0's, then range 1's, ... (each range's in its pixel order)
  lat.start.assign(M + 2, 0);
  int64_t pos = 0;
  for (int64_t v = 1; v <= M; ++v) {
    lat.start[v] = pos;
    for (int64_t part = 0; part < parts; ++part) {
      const int64_t c = cursor[part][v];
      cursor[part][v] = pos;
      pos += c;
    }
  }
  lat.start[M + 1] = pos;
  lat.splat_p.resize(N * D1);
  lat.splat_w.resize(N * D1);
  parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part) {
      int64_t* fill = cursor[part].data();
      for (int64_t e = first(part); e < first(part + 1); ++e) {
        const int64_t i = fill[lat.vertex[e]]++;
        lat.splat_p[i] = static_cast<int32_t>(e / D1);
        lat.splat_w[i] = lat.weight[e];
      }
    }
  });
}

// The last phase, parallel over vertices and pixels: blur neighbours and slice weights.
template <int D>
void link_vertices(Lattice& lat, const VertexTable& table, const std::vector<uint64_t>& vertex_key,
                   int bits) {
  constexpr int D1 = D + 1;
  const int64_t M = lat.M;
  lat.nbr.assign(static_cast<size_t>(D1) * (M + 1) * 2, 0);
  parallel_for(1, M + 1, kGrain, [&](int64_t begin, int64_t end) {
    for (int j = 0; j < D1; ++j) {
      int32_t* nb = &lat.nbr[static_cast<size_t>(j) * (M + 1) * 2];
      for (int64_t v = begin; v < end; ++v) {
        nb[2 * v] = table.find(crf::neighbour_key(vertex_key[v], D, bits, j, +1));
        nb[2 * v + 1] = table.find(crf::neighbour_key(vertex_key[v], D, bits, j, -1));
      }
    }
  });
  const float alpha = crf::slice_alpha(D);
  lat.slice_w.resize(lat.N * D1);
  parallel_for(0, lat.N * D1, kGrain * D1, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) lat.slice_w[e] = lat.weight[e] * alpha;
  });
}

// Parallel loops: a region only where there is enough work to pay for waking the threads (a
// region costs microseconds on an idle machine, milliseconds where other processes hold the
// cores).
constexpr int64_t kMinParallelWork = 1 << 20;

inline bool too_small_to_share(int64_t items, int64_t work_per_item) {
  return items * work_per_item < kMinParallelWork;
}

template <typename F>
void maybe_parallel(int64_t begin, int64_t end, int64_t work_per_item, const F& f) {
  if (too_small_to_share(end - begin, work_per_item)) {
    f(begin, end);
    return;
  }
  parallel_for(begin, end, std::max<int64_t>(1, kMinParallelWork / 4 / work_per_item), f);
}

// Channels are processed in groups of kLanes (rows padded with zeros to a multiple of it), up
// to kMaxGroups groups at a time: a chunk's sums stay in registers and the loops have a width
// fixed at compile time, so they vectorise.
constexpr int64_t kLanes = 4;
constexpr int kMaxGroups = 8;

// L floats as L / kLanes vectors of the compiler's vector extension (GCC and Clang): the
// weighted sums below run in vector lanes at any width, where the auto-vectoriser gives up on
// the wider ones. Without -mfma, w * x + acc is a multiply and an add, as in scalar code, so
// the bits are those of the plain loops.
typedef float Lanes4 __attribute__((vector_size(16)));

template <int L>
struct LaneRow {
  static_assert(L % kLanes == 0, "rows of whole vectors");
  Lanes4 v[L / kLanes];
  void load(const float* src) { std::memcpy(v, src, sizeof v); }
  void store(float* dst) const { std::memcpy(dst, v, sizeof v); }
  void zero() {
    for (auto& x : v) x = Lanes4{0.f, 0.f, 0.f, 0.f};
  }
  // this += w * src (src: L floats)
  void add_scaled(float w, const float* src) {
    for (int k = 0; k < L / kLanes; ++k) {
      Lanes4 x;
      std::memcpy(&x, src + k * kLanes, sizeof x);
      v[k] += w * x;
    }
  }
};

// f(std::integral_constant<int, G>, c0) for each chunk of G * kLanes channels from c0.
template <typename F>
void for_channel_chunks(int64_t Cp, const F& f) {
  for (int64_t c0 = 0; c0 < Cp; c0 += kMaxGroups * kLanes) {
    switch (std::min<int64_t>(kMaxGroups, (Cp - c0) / kLanes)) {
      case 1:
        f(std::integral_constant<int, 1>{}, c0);
        break;
      case 2:
        f(std::integral_constant<int, 2>{}, c0);
        break;
      case 3:
        f(std::integral_constant<int, 3>{}, c0);
        break;
      case 4:
        f(std::integral_constant<int, 4>{}, c0);
        break;
      case 5:
        f(std::integral_constant<int, 5>{}, c0);
        break;
      case 6:
        f(std::integral_constant<int, 6>{}, c0);
        break;
      case 7:
        f(std::integral_constant<int, 7>{}, c0);
        break;
      default:
        f(std::integral_constant<int, 8>{}, c0);
        break;
    }
  }
}

// a[v] = sum over v's terms (increasing pixel order) of splat_w * in[pixel], v in [begin, end),
// for the channels [c0, c0 + G * kLanes) of rows `stride` floats apart.
template <int G>
void splat_chunk(const Lattice& lat, const float* __restrict__ in, int64_t stride, int64_t c0,
                 float* __restrict__ a, int64_t begin, int64_t end) {
  constexpr int L = G * kLanes;
  const int64_t* start = lat.start.data();
  const int32_t* pix = lat.splat_p.data();
  const float* wt = lat.splat_w.data();
  for (int64_t v = begin; v < end; ++v) {
    LaneRow<L> acc;
    acc.zero();
    for (int64_t i = start[v]; i < start[v + 1]; ++i)
      acc.add_scaled(wt[i], in + static_cast<int64_t>(pix[i]) * stride + c0);
    acc.store(a + v * stride + c0);
  }
}

void splat_range(const Lattice& lat, const float* in, int64_t Cp, float* a, int64_t begin,
                 int64_t end) {
  for_channel_chunks(Cp, [&](auto G, int64_t c0) {
    splat_chunk<decltype(G)::value>(lat, in, Cp, c0, a, begin, end);
  });
}

// A blur pass's work per vertex (three rows of Cp floats).
constexpr int64_t blur_work(int64_t Cp) { return 3 * Cp; }

// [1/2, 1, 1/2] along each lattice axis in turn; the result ends in a (b is scratch).
void blur(const Lattice& lat, int64_t Cp, float* a, float* b) {
  const int64_t M = lat.M;
  float* cur = a;
  float* nxt = b;
  for (int j = 0; j <= lat.d; ++j) {
    const int32_t* nb = &lat.nbr[static_cast<size_t>(j) * (M + 1) * 2];
    maybe_parallel(1, M + 1, blur_work(Cp), [&](int64_t begin, int64_t end) {
      const float* __restrict__ src = cur;
      float* __restrict__ dst = nxt;
      for (int64_t v = begin; v < end; ++v) {
        const float* n1 = src + nb[2 * v] * Cp;
        const float* n2 = src + nb[2 * v + 1] * Cp;
        const float* o = src + v * Cp;
        float* out = dst + v * Cp;
        for (int64_t c = 0; c < Cp; ++c) out[c] = o[c] + 0.5f * (n1[c] + n2[c]);
      }
    });
    std::swap(cur, nxt);
  }
  if (cur != a) std::copy(cur + Cp, cur + (M + 1) * Cp, a + Cp);
}

// out[c] += sum_r slice_w[p, r] val[vertex(p, r), c] for one pixel p and one channel chunk
template <int D, int G>
inline void slice_chunk(const Lattice& lat, const float* __restrict__ val, int64_t stride,
                        int64_t c0, int64_t p, float* __restrict__ out) {
  constexpr int D1 = D + 1, L = G * kLanes;
  LaneRow<L> acc;
  acc.load(out + c0);
  for (int r = 0; r < D1; ++r)
    acc.add_scaled(lat.slice_w[p * D1 + r],
                   val + static_cast<int64_t>(lat.vertex[p * D1 + r]) * stride + c0);
  acc.store(out + c0);
}

// Scratch of one lattice's filter: two (M + 1, Cp) buffers, row 0 the missing vertex (zero).
struct FilterBuffers {
  std::vector<float> a, b;
  FilterBuffers() = default;
  FilterBuffers(const Lattice& lat, int64_t Cp) { fit(lat, Cp); }
  // sized for lat and Cp channels, row 0 zero; the other rows are written before they are read
  void fit(const Lattice& lat, int64_t Cp) {
    a.resize((lat.M + 1) * Cp);
    b.resize((lat.M + 1) * Cp);
    std::fill(a.begin(), a.begin() + Cp, 0.f);
    std::fill(b.begin(), b.begin() + Cp, 0.f);
  }
};

// The symmetric normaliser n = 1 / sqrt(L 1 + 1e-20), then folded into the weights: the splat
// of n * q and compat * n * slice become one multiply each.
template <int D>
void normalise(Lattice& lat, float compat) {
  constexpr int D1 = D + 1;
  const int64_t N = lat.N, M = lat.M;
  FilterBuffers buf(lat, kLanes);
  // the splat of all ones: each vertex's weights summed in its terms' order (w * 1 is w)
  parallel_for(1, M + 1, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) {
      float sum = 0.f;
      for (int64_t i = lat.start[v]; i < lat.start[v + 1]; ++i) sum += lat.splat_w[i];
      std::fill(&buf.a[v * kLanes], &buf.a[v * kLanes] + kLanes, sum);
    }
  });
  blur(lat, kLanes, buf.a.data(), buf.b.data());
  lat.norm.resize(N);
  parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      float l1[kLanes] = {0.f};
      slice_chunk<D, 1>(lat, buf.a.data(), kLanes, 0, p, l1);
      lat.norm[p] = 1.0f / std::sqrt(l1[0] + crf::kNormEps);
    }
  });
  parallel_for(0, N * D1, kGrain * D1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) lat.splat_w[i] *= lat.norm[lat.splat_p[i]];
    for (int64_t e = begin; e < end; ++e) lat.slice_w[e] *= compat * lat.norm[e / D1];
  });
}

// The mean-field update of the pixels [begin, end): e = logp + (both slices), then the
// softmax of each stack's n labels, into q. Rows of Cp = L floats (the stacks' labels side by
// side, then zero padding). The width is fixed at compile time, so that the slices' sums and
// the exponentials run in vector lanes; the max and the sum of a stack are scalar, in label
// order (the bits of crf::softmax_pixel).
template <int L>
void update_fixed(const Lattice& g, const float* __restrict__ vg, const Lattice& b,
                  const float* __restrict__ vb, const float* __restrict__ logp, int64_t S,
                  int64_t n, int64_t begin, int64_t end, float* __restrict__ q) {
  constexpr int Dg = crf::kGaussianDim + 1, Db = crf::kBilateralDim + 1;
  // pixels per block: the exponentials of a block run as one loop over its P * L lanes
  constexpr int64_t kBlock = 32;
  const int C = static_cast<int>(S * n);
  int stack_of[L];  // a lane's stack; padding lanes: none (-1)
  for (int k = 0; k < L; ++k) stack_of[k] = k < C ? static_cast<int>(k / n) : -1;
  const int32_t* gv = g.vertex.data();
  const float* gw = g.slice_w.data();
  const int32_t* bv = b.vertex.data();
  const float* bw = b.slice_w.data();
  alignas(64) float e[kBlock * L], x[kBlock * L], shift[kBlock * L], div[kBlock * L];
  for (int64_t p0 = begin; p0 < end; p0 += kBlock) {
    const int64_t P = std::min(kBlock, end - p0);
    for (int64_t i = 0; i < P; ++i) {
      const int64_t p = p0 + i;
      LaneRow<L> sum;
      sum.load(logp + p * L);
      for (int r = 0; r < Dg; ++r)
        sum.add_scaled(gw[p * Dg + r], vg + static_cast<int64_t>(gv[p * Dg + r]) * L);
      for (int r = 0; r < Db; ++r)
        sum.add_scaled(bw[p * Db + r], vb + static_cast<int64_t>(bv[p * Db + r]) * L);
      float* ei = e + i * L;
      sum.store(ei);
      float top[L];
      for (int64_t st = 0; st < S; ++st) {
        float t = -INFINITY;
        for (int64_t l = st * n; l < (st + 1) * n; ++l) t = ei[l] > t ? ei[l] : t;
        top[st] = t;
      }
      // padding lanes hold e = 0: exp(0) = 1, divided by +inf below, stays 0
      for (int k = 0; k < L; ++k) shift[i * L + k] = stack_of[k] >= 0 ? top[stack_of[k]] : 0.f;
    }
    for (int64_t j = 0; j < P * L; ++j) x[j] = crf::exp_nonpositive(e[j] - shift[j]);
    for (int64_t i = 0; i < P; ++i) {
      float sum[L];
      for (int64_t st = 0; st < S; ++st) {
        float s = 0.f;
        for (int64_t l = st * n; l < (st + 1) * n; ++l) s += x[i * L + l];
        sum[st] = s;
      }
      for (int k = 0; k < L; ++k) div[i * L + k] = stack_of[k] >= 0 ? sum[stack_of[k]] : INFINITY;
    }
    for (int64_t j = 0; j < P * L; ++j) q[p0 * L + j] = x[j] / div[j];
  }
}

// Any width: the slices chunk by chunk into a row, then the softmax of each stack.
void update_any(const Lattice& g, const float* vg, const Lattice& b, const float* vb,
                const float* logp, int64_t S, int64_t n, int64_t Cp, int64_t begin, int64_t end,
                float* q) {
  std::vector<float> e(Cp);
  for (int64_t p = begin; p < end; ++p) {
    std::copy(&logp[p * Cp], &logp[p * Cp] + Cp, e.data());
    for_channel_chunks(Cp, [&](auto G, int64_t c0) {
      slice_chunk<crf::kGaussianDim, decltype(G)::value>(g, vg, Cp, c0, p, e.data());
      slice_chunk<crf::kBilateralDim, decltype(G)::value>(b, vb, Cp, c0, p, e.data());
    });
    for (int64_t st = 0; st < S; ++st) crf::softmax_pixel(&e[st * n], n, &q[p * Cp + st * n]);
  }
}

// e = logp + compat_g n_g L_g(n_g q) + compat_b n_b L_b(n_b q), q = softmax(e) per stack.
void update_pixels(const Lattice& g, const float* vg, const Lattice& b, const float* vb,
                   const float* logp, int64_t S, int64_t n, int64_t Cp, int64_t begin, int64_t end,
                   float* q) {
  switch (Cp) {
    case 4:
      return update_fixed<4>(g, vg, b, vb, logp, S, n, begin, end, q);
    case 8:
      return update_fixed<8>(g, vg, b, vb, logp, S, n, begin, end, q);
    case 12:
      return update_fixed<12>(g, vg, b, vb, logp, S, n, begin, end, q);
    case 16:
      return update_fixed<16>(g, vg, b, vb, logp, S, n, begin, end, q);
    case 20:
      return update_fixed<20>(g, vg, b, vb, logp, S, n, begin, end, q);
    case 24:
      return update_fixed<24>(g, vg, b, vb, logp, S, n, begin, end, q);
    default:
      return update_any(g, vg, b, vb, logp, S, n, Cp, begin, end, q);
  }
}

// The scratch of one image's mean field, kept between calls (WorkspaceLease): the
// bilateral lattice and its build's keys, the marginals and the filters' buffers. Reused
// vectors keep their pages, where fresh ones (about 250 bytes a pixel with la + ha) cost a
// page fault every 4 KiB (at 375 x 500 with la + ha: the build 54 -> 25 ms, the marginals'
// set-up 22 -> 11 ms).
struct Workspace {
  Lattice b;
  std::vector<uint64_t> b_keys, b_vertex_key;
  std::vector<float> logp, q;
  FilterBuffers fg, fb;
  // the bytes its vectors hold
  int64_t bytes() const {
    const auto of = [](const auto& v) {
      return static_cast<int64_t>(v.capacity() *
                                  sizeof(typename std::decay_t<decltype(v)>::value_type));
    };
    return of(b.vertex) + of(b.weight) + of(b.start) + of(b.splat_p) + of(b.splat_w) +
           of(b.slice_w) + of(b.nbr) + of(b.norm) + of(b_keys) + of(b_vertex_key) + of(logp) +
           of(q) + of(fg.a) + of(fg.b) + of(fb.a) + of(fb.b);
  }
};

// Idle workspaces are kept up to this many bytes in all (about five 375 x 500 images with
// la + ha): an image larger than that frees its own, and its build's scratch early.
constexpr int64_t kKeptWorkspaceBytes = int64_t(256) << 20;

struct CrfSettings {
  int64_t iterations;
  float gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat;
  CrfPackings packing;
};

// The lattices of an image, phase by phase, each parallel over pixels, vertices or ranges of
// pixels (`threads` of them: 1 where the caller runs one image a thread). g is null when the
// Gaussian lattice is at hand.
void build_lattices(int64_t H, int64_t W, const uint8_t* rgb, const CrfSettings& s, Lattice* g,
                    Workspace& ws, int64_t threads) {
  const int64_t N = H * W;
  Lattice* b = &ws.b;
  std::vector<uint64_t>& b_keys = ws.b_keys;
  std::vector<uint64_t>& b_vertex_key = ws.b_vertex_key;
  std::vector<uint64_t> g_keys, g_vertex_key;
  if (g)
    embed_pixels<crf::kGaussianDim>(*g, g_keys, H, W, rgb, s.gaussian_sxy, 0.f,
                                    s.packing.gaussian.bits);
  embed_pixels<crf::kBilateralDim>(*b, b_keys, H, W, rgb, s.bilateral_sxy, s.bilateral_srgb,
                                   s.packing.bilateral.bits);
  // A lattice has far fewer vertices than terms: the tables grow as needed from a size that
  // stays in cache.
  VertexTable g_table(g ? N / 8 : 0), b_table(N / 8);
  if (g && threads == 2) {
    // two lattices on two threads: one each, in a single range
    parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
      for (int64_t which = begin; which < end; ++which) {
        if (which == 0)
          number_vertices<crf::kBilateralDim>(*b, b_keys, b_vertex_key, b_table, 1);
        else
          number_vertices<crf::kGaussianDim>(*g, g_keys, g_vertex_key, g_table, 1);
      }
    });
  } else {
    number_vertices<crf::kBilateralDim>(*b, b_keys, b_vertex_key, b_table, threads);
    if (g) number_vertices<crf::kGaussianDim>(*g, g_keys, g_vertex_key, g_table, threads);
  }
  std::vector<uint64_t>().swap(g_keys);
  if (g) {
    link_vertices<crf::kGaussianDim>(*g, g_table, g_vertex_key, s.packing.gaussian.bits);
    normalise<crf::kGaussianDim>(*g, s.gaussian_compat);
  }
  link_vertices<crf::kBilateralDim>(*b, b_table, b_vertex_key, s.packing.bilateral.bits);
  normalise<crf::kBilateralDim>(*b, s.bilateral_compat);
  // What the filter no longer needs: the Gaussian lattice's, and the workspace's where it is
  // too large to be kept (a small one keeps its pages for the next call).
  const auto release_build_scratch = [](Lattice& lat) {
    std::vector<float>().swap(lat.weight);
    std::vector<float>().swap(lat.norm);
  };
  if (g) release_build_scratch(*g);
  if (ws.bytes() > kKeptWorkspaceBytes) {
    release_build_scratch(*b);
    std::vector<uint64_t>().swap(b_keys);
  }
}

// Workspaces not in use, at most one a thread of torch's pool and kKeptWorkspaceBytes in
// all: a run over many images reuses them (each holds its last image's memory, ~50 MB at
// 375 x 500 with la + ha).
std::mutex workspace_mutex;
std::vector<std::unique_ptr<Workspace>> idle_workspaces;
int64_t idle_bytes = 0;

struct WorkspaceLease {
  std::unique_ptr<Workspace> ws;
  WorkspaceLease() {
    {
      std::lock_guard<std::mutex> lock(workspace_mutex);
      if (!idle_workspaces.empty()) {
        ws = std::move(idle_workspaces.back());
        idle_workspaces.pop_back();
        idle_bytes -= ws->bytes();
      }
    }
    if (!ws) ws = std::make_unique<Workspace>();
  }
  ~WorkspaceLease() {
    try {
      const int64_t bytes = ws->bytes();
      const int64_t threads = num_threads();
      std::lock_guard<std::mutex> lock(workspace_mutex);
      if (static_cast<int64_t>(idle_workspaces.size()) < threads &&
          idle_bytes + bytes <= kKeptWorkspaceBytes) {
        idle_workspaces.push_back(std::move(ws));
        idle_bytes += bytes;
      }
    } catch (...) {  // (nothing may leave a destructor) the workspace is freed instead
    }
  }
  WorkspaceLease(const WorkspaceLease&) = delete;
  WorkspaceLease& operator=(const WorkspaceLease&) = delete;
};

// The Gaussian lattice depends on the image's size and the Gaussian settings alone, not on its
// pixels: the lattices of the last kKeptGaussians sizes are kept (~10 MB each at 375 x 500),
// so that a run over images of a few sizes builds the bilateral lattice alone.
constexpr size_t kKeptGaussians = 2;

struct GaussianKey {
  int64_t H, W;
  float sxy, compat;
  bool operator==(const GaussianKey& o) const {
    return H == o.H && W == o.W && sxy == o.sxy && compat == o.compat;
  }
};

std::mutex kept_mutex;
std::vector<std::pair<GaussianKey, std::shared_ptr<const Lattice>>> kept;  // most recent first

std::shared_ptr<const Lattice> cached_gaussian(int64_t H, int64_t W, const CrfSettings& s) {
  const GaussianKey key{H, W, s.gaussian_sxy, s.gaussian_compat};
  std::lock_guard<std::mutex> lock(kept_mutex);
  for (size_t i = 0; i < kept.size(); ++i) {
    if (!(kept[i].first == key)) continue;
    std::rotate(kept.begin(), kept.begin() + i, kept.begin() + i + 1);
    return kept.front().second;
  }
  return nullptr;
}

void keep_gaussian(int64_t H, int64_t W, const CrfSettings& s, std::shared_ptr<const Lattice> g) {
  const GaussianKey key{H, W, s.gaussian_sxy, s.gaussian_compat};
  std::lock_guard<std::mutex> lock(kept_mutex);
  for (const auto& entry : kept)
    if (entry.first == key) return;  // built by another thread meanwhile
  kept.insert(kept.begin(), {key, std::move(g)});
  if (kept.size() > kKeptGaussians) kept.pop_back();
}

// The splat of both lattices as one range of vertices, [1, g.M] then g.M + [1, b.M], cut into
// pieces of about equal work (a bilateral vertex has about three times the terms of a
// Gaussian one): cuts[k] is piece k's first vertex, cuts.back() one past the last. One piece
// where the work is too small to share.
std::vector<int64_t> splat_pieces(const Lattice& g, const Lattice& b, int64_t Cp) {
  const int64_t Mg = g.M, total_v = g.M + b.M;
  const int64_t g_terms = g.start[Mg + 1] - g.start[1];
  const auto terms_before = [&](int64_t v) {  // terms of the vertices before v
    return v <= Mg + 1 ? g.start[v] - g.start[1] : g_terms + b.start[v - Mg] - b.start[1];
  };
  const int64_t total = terms_before(total_v + 1) + total_v;  // a vertex's store counts one
  const int64_t pieces = std::min<int64_t>(
      {total * Cp * 4 / kMinParallelWork, 8 * num_threads(), std::max<int64_t>(1, total_v)});
  std::vector<int64_t> cuts(1, 1);
  for (int64_t k = 1; k < std::max<int64_t>(1, pieces); ++k) {
    const int64_t target = total * k / pieces;
    int64_t lo = cuts.back(), hi = total_v + 1;  // first v with terms_before(v) + v - 1 >= target
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (terms_before(mid) + mid - 1 >= target)
        hi = mid;
      else
        lo = mid + 1;
    }
    if (lo > cuts.back()) cuts.push_back(lo);
  }
  cuts.push_back(total_v + 1);
  return cuts;
}

// Mean field for the S stacks of n labels that share one image.
// scores: S stacks of (n, H, W); out likewise. Per iteration three kinds of parallel loop:
// the splat of both lattices (over their vertices), the blurs (over vertices, one axis at a
// time, serial when small), and per pixel the two slices and the update. `threads`: those the
// lattice build may split its ranges over (1 inside a parallel loop over images).
void crf_group(const uint8_t* rgb, const float* scores, float* out, int64_t S, int64_t n, int64_t H,
               int64_t W, const CrfSettings& s, int64_t threads) {
  const int64_t N = H * W, C = S * n, Cp = (C + kLanes - 1) / kLanes * kLanes;
  std::shared_ptr<const Lattice> g = cached_gaussian(H, W, s);
  WorkspaceLease lease;
  Workspace& ws = *lease.ws;
  const Lattice& b = ws.b;
  if (g) {
    build_lattices(H, W, rgb, s, nullptr, ws, threads);
  } else {
    auto fresh = std::make_shared<Lattice>();
    build_lattices(H, W, rgb, s, fresh.get(), ws, threads);
    keep_gaussian(H, W, s, fresh);
    g = std::move(fresh);
  }
  // Pixel-major working layout: (N, Cp), the stacks' labels side by side, zero padding (every
  // element written below).
  ws.logp.resize(N * Cp);
  ws.q.resize(N * Cp);
  float* const logp = ws.logp.data();
  float* const q = ws.q.data();
  maybe_parallel(0, N, 4 * C, [&](int64_t begin, int64_t end) {
    std::vector<float> col(C);
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t c = 0; c < C; ++c) col[c] = scores[c * N + p];
      for (int64_t st = 0; st < S; ++st)
        crf::unary_pixel(&col[st * n], n, 1, &logp[p * Cp + st * n], &q[p * Cp + st * n]);
      for (int64_t c = C; c < Cp; ++c) logp[p * Cp + c] = q[p * Cp + c] = 0.f;
    }
  });
  const Lattice& gl = *g;
  FilterBuffers& fg = ws.fg;
  FilterBuffers& fb = ws.fb;
  fg.fit(gl, Cp);
  fb.fit(b, Cp);
  const int64_t Mg = gl.M;
  const std::vector<int64_t> cuts = splat_pieces(gl, b, Cp);
  const int64_t pieces = static_cast<int64_t>(cuts.size()) - 1;
  // the two lattices' blurs side by side where each runs on one thread (blur's own test)
  const bool blurs_apart = too_small_to_share(std::max(gl.M, b.M), blur_work(Cp));
  for (int64_t it = 0; it < s.iterations; ++it) {
    const auto splat_pieces_range = [&](int64_t begin, int64_t end) {
      const int64_t first = cuts[begin], last = cuts[end];
      const int64_t gb = std::min(first, Mg + 1), ge = std::min(last, Mg + 1);
      if (gb < ge) splat_range(gl, q, Cp, fg.a.data(), gb, ge);
      const int64_t bb = std::max(first, Mg + 1) - Mg, be = std::max(last, Mg + 1) - Mg;
      if (bb < be) splat_range(b, q, Cp, fb.a.data(), bb, be);
    };
    parallel_for(0, pieces, 1, splat_pieces_range);  // one piece: run in this thread
    if (blurs_apart) {
      parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
        for (int64_t which = begin; which < end; ++which) {
          if (which == 0)
            blur(b, Cp, fb.a.data(), fb.b.data());
          else
            blur(gl, Cp, fg.a.data(), fg.b.data());
        }
      });
    } else {
      blur(gl, Cp, fg.a.data(), fg.b.data());
      blur(b, Cp, fb.a.data(), fb.b.data());
    }
    maybe_parallel(0, N, 12 * Cp, [&](int64_t begin, int64_t end) {
      update_pixels(gl, fg.a.data(), b, fb.a.data(), logp, S, n, Cp, begin, end, q);
    });
  }
  // back to (C, H, W), by blocks of pixels (each block's rows of q read once, from L1)
  constexpr int64_t kOutBlock = 256;
  maybe_parallel(0, (N + kOutBlock - 1) / kOutBlock, kOutBlock * C,
                 [&](int64_t begin, int64_t end) {
                   for (int64_t blk = begin; blk < end; ++blk) {
                     const int64_t p0 = blk * kOutBlock, p1 = std::min(N, p0 + kOutBlock);
                     for (int64_t c = 0; c < C; ++c)
                       for (int64_t p = p0; p < p1; ++p) out[c * N + p] = q[p * Cp + c];
                   }
                 });
}

}  // namespace

Tensor dense_crf_cpu(const Tensor& image_in, const Tensor& scores_in, int64_t iterations,
                     double gaussian_sxy, double gaussian_compat, double bilateral_sxy,
                     double bilateral_srgb, double bilateral_compat, bool validate) {
  check_dense_crf_args(image_in, scores_in, iterations, gaussian_sxy, gaussian_compat,
                       bilateral_sxy, bilateral_srgb, bilateral_compat);
  // A kernel runs below autograd: these copies record no graph (no detach needed).
  const Tensor scores = torch::stable::contiguous(to_dtype(scores_in, ScalarType::Float));
  const Tensor image = torch::stable::contiguous(image_in);
  if (validate) check_dense_crf_values(scores);
  const int64_t B = scores.size(0), n = scores.size(1), H = scores.size(2), W = scores.size(3);
  Tensor out = torch::stable::empty_like(scores);  // scores is contiguous
  if (scores.numel() == 0) return out;
  const CrfSettings s{iterations,
                      static_cast<float>(gaussian_sxy),
                      static_cast<float>(gaussian_compat),
                      static_cast<float>(bilateral_sxy),
                      static_cast<float>(bilateral_srgb),
                      static_cast<float>(bilateral_compat),
                      crf_packings(H, W, gaussian_sxy, bilateral_sxy, bilateral_srgb)};
  const uint8_t* rgb = image.const_data_ptr<uint8_t>();
  const float* sc = scores.const_data_ptr<float>();
  float* o = out.mutable_data_ptr<float>();
  const int64_t plane = n * H * W;
  if (image.size(0) == 1) {
    // one image for every stack: one pair of lattices, all stacks' channels together
    crf_group(rgb, sc, o, B, n, H, W, s, num_threads());
  } else if (B >= num_threads() && B > 1) {
    // enough images to keep every thread busy: one image per thread at a time
    parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        crf_group(rgb + i * H * W * 3, sc + i * plane, o + i * plane, 1, n, H, W, s, 1);
    });
  } else {
    for (int64_t i = 0; i < B; ++i)
      crf_group(rgb + i * H * W * 3, sc + i * plane, o + i * plane, 1, n, H, W, s, num_threads());
  }
  return out;
}

STABLE_TORCH_LIBRARY_IMPL(affext, CPU, m) { m.impl("dense_crf", TORCH_BOX(&dense_crf_cpu)); }

}  // namespace affext
