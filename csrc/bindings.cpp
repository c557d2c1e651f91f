// Registers the CUDA kernels as torch.ops.nvae_fast.* and defines the Python module nvae_fast._C.
// The CPU emulation build (-DNVAE_FAST_EMULATE, nvae_fast.cuda.emulation) registers the same ops as
// torch.ops.nvae_fast_emu.*, for CPU tensors, with the same fake implementations.
//
// Each op family is a library fragment whose fake (meta) implementations are registered by the Python
// module named by set_python_module (nvae_fast.cuda._library, for the kernel sets nvae_fast.cuda.<op>;
// importing it imports them all), so torch.compile can trace them. The kernels are
// registered for CUDA and, as argument checkers, for CPU: a CPU call validates shapes and dtypes with
// the same messages and then reports that the op needs CUDA tensors, instead of the dispatcher's
// generic "no kernel for CPU" error.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

#ifdef NVAE_FAST_EMULATE
#define NVAE_FAST_LIBRARY nvae_fast_emu
#else
#define NVAE_FAST_LIBRARY nvae_fast
#endif
#define NVAE_FAST_STRING(name) NVAE_FAST_STRING_OF(name)
#define NVAE_FAST_STRING_OF(name) #name

namespace {

void register_kernels(torch::Library& m) {
  m.impl("bn_swish_stats", &nvae_fast::bn_swish_stats);
  m.impl("bn_swish_normalize", &nvae_fast::bn_swish_normalize);
  m.impl("bn_swish_backward_reduce", &nvae_fast::bn_swish_backward_reduce);
  m.impl("bn_swish_backward_dx", &nvae_fast::bn_swish_backward_dx);
  m.impl("bn_swish_train_forward", &nvae_fast::bn_swish_train_forward);
  m.impl("bn_swish_backward", &nvae_fast::bn_swish_backward);
  m.impl("dwconv2d_forward", &nvae_fast::dwconv2d_forward);
  m.impl("dwconv2d_backward_input", &nvae_fast::dwconv2d_backward_input);
  m.impl("dwconv2d_backward_weight", &nvae_fast::dwconv2d_backward_weight);
  m.impl("se_plan", &nvae_fast::se_plan);
  m.impl("se_forward", &nvae_fast::se_forward);
  m.impl("se_backward", &nvae_fast::se_backward);
  m.impl("power_iteration_update", &nvae_fast::power_iteration_update);
  m.impl("power_iteration_sigmas", &nvae_fast::power_iteration_sigmas);
  m.impl("power_iteration_forward", &nvae_fast::power_iteration_forward);
  m.impl("power_iteration_backward_packed", &nvae_fast::power_iteration_backward_packed);
  m.impl("power_iteration_layout", &nvae_fast::power_iteration_layout);
  m.impl("power_iteration_plan", &nvae_fast::power_iteration_plan);
}

// dW_i of every weight, in its shape: the packed gradient kernel, then views of its buffer. Views of one
// buffer may not be the outputs of a kernel-backed custom op, so this op is CompositeImplicitAutograd:
// tracing sees the packed op and the views.
std::vector<at::Tensor> power_iteration_backward(const at::Tensor& grad, const at::Tensor& saved,
                                                 at::IntArrayRef layout) {
  static const auto packed =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow(NVAE_FAST_STRING(NVAE_FAST_LIBRARY) "::power_iteration_backward_packed", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef)>();
  return nvae_fast::power_iteration_unpack(packed.call(grad, saved, layout), layout);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(NVAE_FAST_LIBRARY, m) {
  m.set_python_module("nvae_fast.cuda._library");
  m.def("bn_swish_stats(Tensor x) -> (Tensor mean, Tensor var)");
  m.def("bn_swish_normalize(Tensor x, Tensor mean, Tensor invstd, Tensor weight, Tensor bias) -> Tensor");
  m.def(
      "bn_swish_backward_reduce(Tensor dy, Tensor x, Tensor mean, Tensor invstd, Tensor weight, Tensor bias) "
      "-> (Tensor sum_dz, Tensor sum_dz_xhat)");
  m.def(
      "bn_swish_backward_dx(Tensor dy, Tensor x, Tensor mean, Tensor invstd, Tensor weight, Tensor bias, "
      "Tensor sum_dz, Tensor sum_dz_xhat, int? count) -> Tensor");
  m.def(
      "bn_swish_train_forward(Tensor x, Tensor weight, Tensor bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, float momentum, float eps) -> (Tensor y, Tensor mean, Tensor invstd)");
  m.def(
      "bn_swish_backward(Tensor dy, Tensor x, Tensor mean, Tensor invstd, Tensor weight, Tensor bias, int? count) "
      "-> (Tensor dx, Tensor sum_dz, Tensor sum_dz_xhat)");
}

TORCH_LIBRARY_FRAGMENT(NVAE_FAST_LIBRARY, m) {
  m.set_python_module("nvae_fast.cuda._library");
  m.def("dwconv2d_forward(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding) -> Tensor");
  m.def(
      "dwconv2d_backward_input(Tensor dy, Tensor weight, SymInt[2] input_hw, int[2] stride, int[2] padding) "
      "-> Tensor");
  m.def(
      "dwconv2d_backward_weight(Tensor dy, Tensor x, SymInt[2] kernel_hw, int[2] stride, int[2] padding) "
      "-> (Tensor dweight, Tensor dbias)");
}

TORCH_LIBRARY_FRAGMENT(NVAE_FAST_LIBRARY, m) {
  m.set_python_module("nvae_fast.cuda._library");
  m.def("se_plan(Tensor x) -> int[]");
  m.def("se_forward(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, int activation) -> (Tensor, Tensor, Tensor)");
  m.def(
      "se_backward(Tensor dy, Tensor x, Tensor mean, Tensor gate, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "int activation) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_FRAGMENT(NVAE_FAST_LIBRARY, m) {
  m.set_python_module("nvae_fast.cuda._library");
  m.def("power_iteration_update(Tensor[] mats, Tensor(a!)[] us, Tensor(b!)[] vs, int n_iter) -> ()");
  m.def("power_iteration_sigmas(Tensor[] mats, Tensor[] us, Tensor[] vs) -> Tensor");
  m.def("power_iteration_forward(Tensor[] weights, Tensor(a!)[] us, Tensor(b!)[] vs, int n_iter) -> (Tensor, Tensor)");
  m.def("power_iteration_layout(Tensor[] weights) -> int[]");
  m.def("power_iteration_backward_packed(Tensor grad, Tensor saved, int[] layout) -> Tensor");
  m.def("power_iteration_backward(Tensor grad, Tensor saved, int[] layout) -> Tensor[]");
  m.def("power_iteration_plan(Tensor[] weights, Tensor[] us, Tensor[] vs) -> Tensor");
}

TORCH_LIBRARY_IMPL(NVAE_FAST_LIBRARY, CompositeImplicitAutograd, m) {
  m.impl("power_iteration_backward", &power_iteration_backward);
}

#ifdef NVAE_FAST_EMULATE
TORCH_LIBRARY_IMPL(nvae_fast_emu, CPU, m) { register_kernels(m); }
#else
TORCH_LIBRARY_IMPL(nvae_fast, CUDA, m) { register_kernels(m); }

TORCH_LIBRARY_IMPL(nvae_fast, CPU, m) { register_kernels(m); }

// `import nvae_fast._C` loads this library (and with it the registrations above); the module itself
// has no attributes.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "CUDA kernels of nvae_fast, as torch.ops.nvae_fast.*",
                               -1, nullptr};
  return PyModule_Create(&module);
}
#endif
