// The intra-op thread pool as the kernels see it: one place that names torch's parallel_for
// and thread count, so that a kernel's loops do not depend on which torch API provides them.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#include <utility>

namespace affext {

// f(begin, end) over chunks of [begin, end) of at least `grain` items, on torch's threads.
template <typename F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, F&& f) {
  at::parallel_for(begin, end, grain, std::forward<F>(f));
}

inline int64_t num_threads() { return at::get_num_threads(); }

}  // namespace affext
