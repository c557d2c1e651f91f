// Host-side argument validation shared by the nvae_fast CUDA ops.
//
// Every failed check throws c10::Error (RuntimeError in Python) whose message starts with the op's
// qualified name and names the offending argument. Structural checks (rank, dtype, shape, memory
// format) come before the device check, so a CPU call reports a wrong shape the same way a CUDA call
// does, and only then that the op needs tensors on its device (runtime.h).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <initializer_list>
#include <utility>

#include "runtime.h"

namespace nvae_fast {

// Memory order of a 4-D activation: NCHW (torch.contiguous_format) or NHWC (torch.channels_last).
enum class Layout { NCHW, NHWC };

inline at::MemoryFormat memory_format(Layout layout) {
  return layout == Layout::NHWC ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

inline bool is_float(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

// Accumulation dtype: float64 for float64 inputs, float32 for the others.
inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_defined(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is an undefined tensor");
}

inline void check_float(const char* op, const char* name, const at::Tensor& t) {
  check_defined(op, name, t);
  TORCH_CHECK(is_float(t.scalar_type()), op, ": ", name, " must be float16, bfloat16, float32 or float64, got ",
              t.scalar_type());
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim, const char* shape) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D ", shape, ", got shape ", t.sizes());
}

inline void check_dtype(const char* op, const char* name, const at::Tensor& t, at::ScalarType want, const char* why) {
  TORCH_CHECK(t.scalar_type() == want, op, ": ", name, " must be ", want, " (", why, "), got ", t.scalar_type());
}

inline void check_same_shape(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                             const at::Tensor& ref) {
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " must have the shape of ", ref_name, " ", ref.sizes(),
              ", got ", t.sizes());
}

// A contiguous 1-D tensor of `length` elements of dtype `dtype` (per-channel parameters, statistics).
inline void check_vector(const char* op, const char* name, const at::Tensor& t, int64_t length, at::ScalarType dtype,
                         const char* what) {
  check_defined(op, name, t);
  TORCH_CHECK(t.dim() == 1 && t.numel() == length, op, ": ", name, " must be 1-D with ", length, " elements (",
              what, "), got shape ", t.sizes());
  check_dtype(op, name, t, dtype, "the accumulation dtype of the activations");
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// NCHW when `t` is contiguous, NHWC when it is channels_last-contiguous; anything else is rejected
// (the python glue in nvae_fast.cuda makes such tensors contiguous first).
inline Layout layout_of(const char* op, const char* name, const at::Tensor& t) {
  if (t.is_contiguous()) return Layout::NCHW;
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast), op, ": ", name,
              " must be contiguous in NCHW (torch.contiguous_format) or NHWC (torch.channels_last) memory "
              "format, got strides ",
              t.strides());
  return Layout::NHWC;
}

inline void check_layout(const char* op, const char* name, const at::Tensor& t, Layout layout, const char* ref_name) {
  TORCH_CHECK(t.is_contiguous(memory_format(layout)), op, ": ", name, " must be contiguous in the memory format of ",
              ref_name, " (", layout == Layout::NHWC ? "channels_last" : "contiguous_format", "), got strides ",
              t.strides());
}

struct ActShape {
  Layout layout;
  int64_t N, C, HW;
};

// A 4-D (N, C, H, W) activation of a float dtype in NCHW or NHWC memory format.
inline ActShape check_activation(const char* op, const char* name, const at::Tensor& x) {
  check_float(op, name, x);
  check_dim(op, name, x, 4, "(N, C, H, W)");
  const Layout layout = layout_of(op, name, x);
  return ActShape{layout, x.size(0), x.size(1), x.size(2) * x.size(3)};
}

using NamedTensor = std::pair<const char*, const at::Tensor*>;

// All tensors on the same device as the first one, a device that the kernels run on (runtime.h).
inline void check_device(const char* op, std::initializer_list<NamedTensor> tensors) {
  const NamedTensor& first = *tensors.begin();
  TORCH_CHECK(on_kernel_device(*first.second), op, ": ", first.first, " must be ", kKernelDevice,
              ", got a tensor on ", first.second->device());
  for (const NamedTensor& t : tensors) {
    TORCH_CHECK(t.second->device() == first.second->device(), op, ": ", t.first, " is on ", t.second->device(),
                " but ", first.first, " is on ", first.second->device());
  }
}

}  // namespace nvae_fast
