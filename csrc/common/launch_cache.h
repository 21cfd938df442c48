// A small thread-safe memo for launch set-up that does not change while a process runs (device
// attributes, occupancy of a kernel at a shared-memory size, one-time function attributes):
// plain host code, no CUDA, so the CPU tests check it (tests/cpp/test_launch_plan.cpp).
#pragma once

#include <map>
#include <mutex>
#include <utility>

namespace affext {

template <typename Key, typename Value>
class LaunchCache {
 public:
  // The value of key, computed by make() under the lock the first time (so two threads never
  // run make() for one key at once, and one that sets a CUDA function attribute is ordered
  // before every launch that relies on it). A make() that throws caches nothing.
  template <typename Make>
  Value get(const Key& key, Make&& make) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = values_.find(key);
    if (it == values_.end()) it = values_.emplace(key, make()).first;
    return it->second;
  }

  // Replaces (or adds) the value of key.
  void set(const Key& key, Value value) {
    std::lock_guard<std::mutex> lock(mutex_);
    values_[key] = std::move(value);
  }

  size_t size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return values_.size();
  }

 private:
  std::mutex mutex_;
  std::map<Key, Value> values_;
};

}  // namespace affext
