// The torch API of the launchers, all built against PyTorch's stable ABI: the stable Tensor
// and ops, the header-only dtypes and dispatch macros, and the launchers' shared argument
// checks. Every source file includes this header first and no ATen / c10 header (torch's own
// c10/macros/Macros.h refuses to compile once TORCH_TARGET_VERSION is set).
#pragma once

// The oldest torch the library loads into: 2.13 (the stable API's version encoding).
#ifndef TORCH_TARGET_VERSION
#define TORCH_TARGET_VERSION (((0ULL + 2) << 56) | ((0ULL + 13) << 48))
#endif

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/Dispatch_v2.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <array>
#include <cstdint>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/neighborhood.h"

namespace affext {

using torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;
using IntList = torch::headeronly::IntHeaderOnlyArrayRef;

// The type a kernel accumulates scalar_t in: float for the half types, else scalar_t itself.
template <typename scalar_t>
using opmath_t = std::conditional_t<std::is_same_v<scalar_t, torch::headeronly::Half> ||
                                        std::is_same_v<scalar_t, torch::headeronly::BFloat16>,
                                    float, scalar_t>;

// The text of a check's message: its parts as an ostream writes them.
template <typename... Args>
std::string message(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

// Sizes as torch prints them: [1, 4, 9, 9].
struct Sizes {
  std::vector<int64_t> values;
};
inline Sizes sizes_of(const Tensor& t) {
  const auto s = t.sizes();
  return {std::vector<int64_t>(s.begin(), s.end())};
}
// An int[] argument, printed as sizes are.
inline Sizes ints_of(IntList list) { return {std::vector<int64_t>(list.begin(), list.end())}; }
inline std::ostream& operator<<(std::ostream& out, const Sizes& s) {
  out << "[";
  for (size_t i = 0; i < s.values.size(); ++i) out << (i ? ", " : "") << s.values[i];
  return out << "]";
}

// A device as torch prints it: cpu, cuda:0.
struct DeviceName {
  torch::stable::Device device;
};
inline std::ostream& operator<<(std::ostream& out, const DeviceName& d) {
  out << (d.device.is_cuda() ? "cuda" : d.device.is_cpu() ? "cpu" : "device");
  if (d.device.has_index()) out << ":" << static_cast<int>(d.device.index());
  return out;
}

// A failed argument check. Only std::runtime_error crosses the stable ABI (torch raises it
// as RuntimeError), so the Python wrappers (affext/ops/*.py) run the same checks first with
// their ValueError / TypeError; the message here is the same text, without a source location.
#define AFFEXT_CHECK(cond, ...) \
  if (!(cond)) throw std::runtime_error(::affext::message(__VA_ARGS__))

inline bool is_floating(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Double || t == ScalarType::Half ||
         t == ScalarType::BFloat16;
}

inline bool is_integer(ScalarType t) {
  return t == ScalarType::Byte || t == ScalarType::Char || t == ScalarType::Short ||
         t == ScalarType::Int || t == ScalarType::Long;
}

inline bool same_device(const Tensor& a, const Tensor& b) {
  const auto da = a.device(), db = b.device();
  return da.type() == db.type() && da.index() == db.index();
}

// The checks shared by the launchers; each message names the argument.
inline void check_radius(int64_t radius) {
  AFFEXT_CHECK(radius >= kMinRadius && radius <= kMaxRadius, "radius must be in [", kMinRadius,
               ", ", kMaxRadius, "], got ", radius);
}

inline void check_map_size(const char* name, int64_t H, int64_t W, int64_t radius) {
  AFFEXT_CHECK(H >= radius && W >= 2 * radius - 1, name, " is ", H, "x", W, " but radius ", radius,
               " needs a map of at least ", radius, "x", 2 * radius - 1);
}

inline void check_floating(const char* name, const Tensor& t) {
  AFFEXT_CHECK(is_floating(t.scalar_type()), name, " must be a floating-point tensor, got ",
               t.scalar_type());
}

inline void check_same_device(const char* a_name, const Tensor& a, const char* b_name,
                              const Tensor& b) {
  AFFEXT_CHECK(same_device(a, b), a_name, " is on ", DeviceName{a.device()}, " but ", b_name,
               " is on ", DeviceName{b.device()});
}

inline void check_dim(const char* name, const Tensor& t, int64_t dim, const char* shape) {
  AFFEXT_CHECK(t.dim() == dim, name, " must have shape ", shape, ", got ", sizes_of(t));
}

// float32 or float64 on the CPU (the kernels that take half dtypes on CUDA only).
inline void check_cpu_dtype(const char* name, const Tensor& t) {
  AFFEXT_CHECK(t.scalar_type() == ScalarType::Float || t.scalar_type() == ScalarType::Double,
               "on the CPU ", name, " must be float32 or float64, got ", t.scalar_type());
}

inline Offsets offsets_for(int64_t radius) {
  check_radius(radius);
  Offsets o = make_offsets(static_cast<int>(radius));
  STD_TORCH_CHECK(o.count <= kMaxOffsets);
  return o;
}

// torch.promote_types of two floating dtypes (float16 and bfloat16 together give float32).
inline ScalarType promote_floating(ScalarType a, ScalarType b) {
  if (a == b) return a;
  if (a == ScalarType::Double || b == ScalarType::Double) return ScalarType::Double;
  return ScalarType::Float;
}

// t in dtype (no copy when it already is).
inline Tensor to_dtype(const Tensor& t, ScalarType dtype) {
  return t.scalar_type() == dtype ? t : torch::stable::to(t, dtype);
}

// The value of a one-element tensor as T (int64_t or double), read on the CPU: a device sync
// for a CUDA tensor.
template <typename T>
T item(const Tensor& t) {
  static_assert(std::is_same_v<T, int64_t> || std::is_same_v<T, double>);
  constexpr ScalarType dtype = std::is_same_v<T, double> ? ScalarType::Double : ScalarType::Long;
  const Tensor cpu = torch::stable::to(t, dtype, std::nullopt,
                                       torch::stable::Device(torch::headeronly::DeviceType::CPU));
  return *cpu.const_data_ptr<T>();
}

// The smallest and the largest element of t (0-dim tensors on t's device): aten::aminmax
// through the stable dispatcher call (torch::stable has amax but no aminmax).
inline std::pair<Tensor, Tensor> aminmax(const Tensor& t) {
  std::array<StableIValue, 3> stack{torch::stable::detail::from(t),
                                    torch::stable::detail::from(std::optional<int64_t>()),
                                    torch::stable::detail::from(false)};
  STABLE_TORCH_ERROR_CODE_CHECK(
      torch_call_dispatcher("aten::aminmax", "", stack.data(), TORCH_ABI_VERSION));
  return {torch::stable::detail::to<Tensor>(stack[0]), torch::stable::detail::to<Tensor>(stack[1])};
}

}  // namespace affext
