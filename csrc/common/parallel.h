// The intra-op thread pool as the kernels see it: one place that names torch's parallel_for
// and thread count, so that a kernel's loops do not depend on which torch API provides them.
// A file built against the stable ABI (common/stable.h included first, TORCH_TARGET_VERSION
// set) gets the stable shim's pool; the others ATen's (the same pool inside torch).
#pragma once

#include <cstdint>
#include <utility>

#ifdef TORCH_TARGET_VERSION
#include <torch/csrc/stable/ops.h>

namespace affext {
inline namespace stable_abi {

// f(begin, end) over chunks of [begin, end) of at least `grain` items, on torch's threads.
template <typename F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  torch::stable::parallel_for(begin, end, grain, f);
}

inline int64_t num_threads() { return static_cast<int64_t>(torch::stable::get_num_threads()); }

}  // namespace stable_abi
}  // namespace affext

#else
#include <ATen/Parallel.h>

namespace affext {

// f(begin, end) over chunks of [begin, end) of at least `grain` items, on torch's threads.
template <typename F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, F&& f) {
  at::parallel_for(begin, end, grain, std::forward<F>(f));
}

inline int64_t num_threads() { return at::get_num_threads(); }

}  // namespace affext
#endif
