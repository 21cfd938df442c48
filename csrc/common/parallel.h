// The intra-op thread pool as the kernels see it: one place that names torch's parallel_for
// and thread count (the stable ABI's, torch's own pool), so that a kernel's loops do not
// depend on which torch API provides them.
#pragma once

#include <torch/csrc/stable/ops.h>

#include <cstdint>

namespace affext {

// f(begin, end) over chunks of [begin, end) of at least `grain` items, on torch's threads.
template <typename F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  torch::stable::parallel_for(begin, end, grain, f);
}

inline int64_t num_threads() { return static_cast<int64_t>(torch::stable::get_num_threads()); }

}  // namespace affext
