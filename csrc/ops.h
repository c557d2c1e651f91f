// Host entry points of the nvae_fast CUDA ops, registered in bindings.cpp as torch.ops.nvae_fast.*.
// Shapes, dtypes and the math of each op are documented next to its definition in the .cu file and in
// the schema strings of bindings.cpp.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace nvae_fast {

// bn_swish.cu
std::tuple<at::Tensor, at::Tensor> bn_swish_stats(const at::Tensor& x);
at::Tensor bn_swish_normalize(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                              const at::Tensor& weight, const at::Tensor& bias);
std::tuple<at::Tensor, at::Tensor> bn_swish_backward_reduce(const at::Tensor& dy, const at::Tensor& x,
                                                            const at::Tensor& mean, const at::Tensor& invstd,
                                                            const at::Tensor& weight, const at::Tensor& bias);
at::Tensor bn_swish_backward_dx(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                const at::Tensor& invstd, const at::Tensor& weight, const at::Tensor& bias,
                                const at::Tensor& sum_dz, const at::Tensor& sum_dz_xhat, std::optional<int64_t> count);
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_swish_train_forward(const at::Tensor& x, const at::Tensor& weight,
                                                                      const at::Tensor& bias,
                                                                      const std::optional<at::Tensor>& running_mean,
                                                                      const std::optional<at::Tensor>& running_var,
                                                                      double momentum, double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_swish_backward(const at::Tensor& dy, const at::Tensor& x,
                                                                 const at::Tensor& mean, const at::Tensor& invstd,
                                                                 const at::Tensor& weight, const at::Tensor& bias,
                                                                 std::optional<int64_t> count);

// depthwise_conv2d.cu
at::Tensor dwconv2d_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding);
at::Tensor dwconv2d_backward_input(const at::Tensor& dy, const at::Tensor& weight, at::IntArrayRef input_hw,
                                   at::IntArrayRef stride, at::IntArrayRef padding);
std::tuple<at::Tensor, at::Tensor> dwconv2d_backward_weight(const at::Tensor& dy, const at::Tensor& x,
                                                            at::IntArrayRef kernel_hw, at::IntArrayRef stride,
                                                            at::IntArrayRef padding);

// squeeze_excite.cu
std::vector<int64_t> se_plan(const at::Tensor& x);
std::tuple<at::Tensor, at::Tensor, at::Tensor> se_forward(const at::Tensor& x, const at::Tensor& w1,
                                                          const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                                                          const std::optional<at::Tensor>& b2, int64_t activation);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_backward(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& gate, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    int64_t activation);

// power_iteration.cu
void power_iteration_update(at::TensorList mats, at::TensorList us, at::TensorList vs, int64_t n_iter);
at::Tensor power_iteration_sigmas(at::TensorList mats, at::TensorList us, at::TensorList vs);
std::tuple<at::Tensor, at::Tensor> power_iteration_forward(at::TensorList weights, at::TensorList us,
                                                           at::TensorList vs, int64_t n_iter);
std::vector<int64_t> power_iteration_layout(at::TensorList weights);
at::Tensor power_iteration_backward_packed(const at::Tensor& grad, const at::Tensor& saved,
                                          at::IntArrayRef layout);
std::vector<at::Tensor> power_iteration_unpack(const at::Tensor& packed, at::IntArrayRef layout);
at::Tensor power_iteration_plan(at::TensorList weights, at::TensorList us, at::TensorList vs);

}  // namespace nvae_fast
