// Argument checks for the torch bindings (cpu_ops.cpp, cuda_ops.cpp). Error messages are assembled
// here from strings only and handed to TORCH_CHECK whole: on the lent GPU box (torch 2.11) a
// TORCH_CHECK that streamed integers or shapes crashed the process, while the same code ran on torch
// 2.13. Shapes print as "[3, 128]", as streaming an IntArrayRef would.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <type_traits>

namespace qk::binding {

inline std::string piece(const char* v) { return v; }
inline std::string piece(const std::string& v) { return v; }
inline std::string piece(c10::ScalarType v) { return c10::toString(v); }
inline std::string piece(const c10::Device& v) { return v.str(); }
inline std::string piece(double v) { return std::to_string(v); }
template <typename I, typename = std::enable_if_t<std::is_integral_v<I>>>
inline std::string piece(I v) {
  return std::to_string(v);
}
template <typename... A>
std::string cat(const A&... a) {
  std::string s;
  ((s += piece(a)), ...);
  return s;
}

inline std::string shape(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

}  // namespace qk::binding

#define QK_CHECK(cond, ...)                                          \
  do {                                                               \
    if (!(cond)) {                                                   \
      const std::string qk_msg_ = ::qk::binding::cat(__VA_ARGS__);   \
      TORCH_CHECK(false, qk_msg_);                                   \
    }                                                                \
  } while (0)
