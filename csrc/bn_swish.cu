// Fused BatchNorm + Swish kernels (torch.ops.nvae_fast.bn_swish_*).
//
// x: (N, C, H, W), NCHW or NHWC, float16/bfloat16/float32/float64; per-channel tensors (C,) in the
// accumulation dtype (float32, float64 for float64 x). With scale = weight * invstd and
// shift = bias - mean * scale, z = x * scale + shift, xhat = (x - mean) * invstd, s = sigmoid(z):
//
//   stats:            mean_c = E[x], var_c = E[(x - mean_c)^2] over N, H, W (Welford + Chan merges)
//   normalize:        y = z s
//   backward_reduce:  dz = dy s (1 + z (1 - s));  sum_dz_c = sum dz,  sum_dz_xhat_c = sum dz xhat
//   backward_dx:      training (count = n): dx = scale (dz - sum_dz / n - xhat sum_dz_xhat / n)
//                     eval (count = None):  dx = scale dz
// The sums are deterministic two-phase reductions (reduce.cuh).

#include <limits>

#include "checks.h"
#include "elementwise.cuh"
#include "ops.h"
#include "reduce.cuh"

namespace nvae_fast {
namespace {

template <typename acc_t>
struct BNParams {
  const acc_t* mean;
  const acc_t* invstd;
  const acc_t* weight;
  const acc_t* bias;

  __device__ __forceinline__ void affine(int64_t c, acc_t& scale, acc_t& shift) const {
    scale = weight[c] * invstd[c];
    shift = bias[c] - mean[c] * scale;
  }
};

// d silu(z) / dz times dy.
template <typename acc_t>
__device__ __forceinline__ acc_t swish_grad(acc_t dy, acc_t z) {
  const acc_t s = sigmoid(z);
  return dy * s * (acc_t(1) + z * (acc_t(1) - s));
}

template <typename T>
struct BNStats {
  using scalar_t = T;
  using acc_t = AccT<T>;
  using Acc = WelfordAcc<acc_t>;
  static constexpr int kInputs = 1;
  struct Chan {};

  acc_t* mean;
  acc_t* var;

  __device__ __forceinline__ Chan load(int64_t) const { return Chan{}; }

  template <int V>
  __device__ __forceinline__ void add_same(Acc& acc, const Chan&, const acc_t (&x)[V], const acc_t (&)[V]) const {
    acc.template add_block<V>(x);
  }

  // One value per channel; every channel has seen the same number of values, so one reciprocal serves all.
  template <int V>
  __device__ __forceinline__ void add_across(Acc (&acc)[V], const Chan (&)[V], const acc_t (&x)[V],
                                             const acc_t (&)[V]) const {
    const acc_t n = acc[0].n + acc_t(1);
    const acc_t inv = acc_t(1) / n;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const acc_t d = x[k] - acc[k].mean;
      acc[k].mean += d * inv;
      acc[k].m2 += d * (x[k] - acc[k].mean);
      acc[k].n = n;
    }
  }

  __device__ __forceinline__ void finalize(const Acc& acc, int64_t c) const {
    const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
    mean[c] = acc.n > acc_t(0) ? acc.mean : nan;
    var[c] = acc.n > acc_t(0) ? acc.m2 / acc.n : nan;
  }
};

// Inputs (dy, x).
template <typename T>
struct BNBackwardReduce : SumPolicy<BNBackwardReduce<T>, SumAcc<AccT<T>, 2>, AccT<T>, 2> {
  using scalar_t = T;
  using acc_t = AccT<T>;
  using Acc = SumAcc<acc_t, 2>;
  static constexpr int kInputs = 2;
  struct Chan {
    acc_t scale, shift, mean, invstd;
  };

  BNParams<acc_t> prm;
  acc_t* sum_dz;
  acc_t* sum_dz_xhat;

  __device__ __forceinline__ Chan load(int64_t c) const {
    Chan ch;
    prm.affine(c, ch.scale, ch.shift);
    ch.mean = prm.mean[c];
    ch.invstd = prm.invstd[c];
    return ch;
  }
  __device__ __forceinline__ void contrib(const Chan& ch, acc_t dy, acc_t x, acc_t (&out)[2]) const {
    const acc_t dz = swish_grad(dy, x * ch.scale + ch.shift);
    out[0] = dz;
    out[1] = dz * ((x - ch.mean) * ch.invstd);
  }
  __device__ __forceinline__ void finalize(const Acc& acc, int64_t c) const {
    sum_dz[c] = acc.s[0];
    sum_dz_xhat[c] = acc.s[1];
  }
};

template <typename T>
struct BNNormalize {
  using scalar_t = T;
  using acc_t = AccT<T>;
  static constexpr int kInputs = 1;
  struct Chan {
    acc_t scale, shift;
  };

  BNParams<acc_t> prm;

  __device__ __forceinline__ Chan load(int64_t, int64_t c) const {
    Chan ch;
    prm.affine(c, ch.scale, ch.shift);
    return ch;
  }
  __device__ __forceinline__ acc_t apply(const Chan& ch, acc_t x, acc_t) const {
    const acc_t z = x * ch.scale + ch.shift;
    return z * sigmoid(z);
  }
};

// Inputs (dy, x).
template <typename T>
struct BNBackwardDx {
  using scalar_t = T;
  using acc_t = AccT<T>;
  static constexpr int kInputs = 2;
  struct Chan {
    acc_t scale, shift, mean, invstd, mean_dz, mean_dz_xhat;
  };

  BNParams<acc_t> prm;
  const acc_t* sum_dz;
  const acc_t* sum_dz_xhat;
  acc_t inv_count;  // 1 / n in training
  bool training;    // false: dx = scale dz

  __device__ __forceinline__ Chan load(int64_t, int64_t c) const {
    Chan ch;
    prm.affine(c, ch.scale, ch.shift);
    ch.mean = prm.mean[c];
    ch.invstd = prm.invstd[c];
    ch.mean_dz = training ? sum_dz[c] * inv_count : acc_t(0);
    ch.mean_dz_xhat = training ? sum_dz_xhat[c] * inv_count : acc_t(0);
    return ch;
  }
  __device__ __forceinline__ acc_t apply(const Chan& ch, acc_t dy, acc_t x) const {
    acc_t dz = swish_grad(dy, x * ch.scale + ch.shift);
    if (training) dz -= ch.mean_dz + (x - ch.mean) * ch.invstd * ch.mean_dz_xhat;
    return dz * ch.scale;
  }
};

void check_params(const char* op, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                  const at::Tensor& weight, const at::Tensor& bias) {
  const int64_t c = x.size(1);
  const at::ScalarType acc = acc_dtype(x.scalar_type());
  check_vector(op, "mean", mean, c, acc, "one per channel of x");
  check_vector(op, "invstd", invstd, c, acc, "one per channel of x");
  check_vector(op, "weight", weight, c, acc, "one per channel of x");
  check_vector(op, "bias", bias, c, acc, "one per channel of x");
}

// dy: x's shape, dtype and memory format.
void check_grad(const char* op, const at::Tensor& dy, const at::Tensor& x, Layout layout) {
  check_float(op, "dy", dy);
  check_same_shape(op, "dy", dy, "x", x);
  check_dtype(op, "dy", dy, x.scalar_type(), "the dtype of x");
  check_layout(op, "dy", dy, layout, "x");
}

template <typename acc_t>
BNParams<acc_t> params(const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& weight,
                       const at::Tensor& bias) {
  return BNParams<acc_t>{mean.data_ptr<acc_t>(), invstd.data_ptr<acc_t>(), weight.data_ptr<acc_t>(),
                         bias.data_ptr<acc_t>()};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> bn_swish_stats(const at::Tensor& x) {
  constexpr const char* op = "nvae_fast::bn_swish_stats";
  const ActShape s = check_activation(op, "x", x);
  check_device(op, {{"x", &x}});
  const DeviceGuard guard(x.device());
  const auto opts = x.options().dtype(acc_dtype(x.scalar_type()));
  at::Tensor mean = at::empty({s.C}, opts);
  at::Tensor var = at::empty({s.C}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_swish_stats", [&] {
    using acc_t = AccT<scalar_t>;
    const BNStats<scalar_t> p{mean.data_ptr<acc_t>(), var.data_ptr<acc_t>()};
    launch_channel_reduce<kThreads>(p, s.layout, x, x, s.N, s.C, s.HW, /*per_sample=*/false);
  });
  return {mean, var};
}

at::Tensor bn_swish_normalize(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                              const at::Tensor& weight, const at::Tensor& bias) {
  constexpr const char* op = "nvae_fast::bn_swish_normalize";
  const ActShape s = check_activation(op, "x", x);
  check_params(op, x, mean, invstd, weight, bias);
  check_device(op, {{"x", &x}, {"mean", &mean}, {"invstd", &invstd}, {"weight", &weight}, {"bias", &bias}});
  const DeviceGuard guard(x.device());
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_swish_normalize", [&] {
    using acc_t = AccT<scalar_t>;
    const BNNormalize<scalar_t> p{params<acc_t>(mean, invstd, weight, bias)};
    launch_channel_map(p, s.layout, x, x, y, s.N, s.C, s.HW);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> bn_swish_backward_reduce(const at::Tensor& dy, const at::Tensor& x,
                                                            const at::Tensor& mean, const at::Tensor& invstd,
                                                            const at::Tensor& weight, const at::Tensor& bias) {
  constexpr const char* op = "nvae_fast::bn_swish_backward_reduce";
  const ActShape s = check_activation(op, "x", x);
  check_grad(op, dy, x, s.layout);
  check_params(op, x, mean, invstd, weight, bias);
  check_device(op, {{"x", &x}, {"dy", &dy}, {"mean", &mean}, {"invstd", &invstd}, {"weight", &weight},
                    {"bias", &bias}});
  const DeviceGuard guard(x.device());
  const auto opts = x.options().dtype(acc_dtype(x.scalar_type()));
  at::Tensor sum_dz = at::empty({s.C}, opts);
  at::Tensor sum_dz_xhat = at::empty({s.C}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_swish_backward_reduce", [&] {
    using acc_t = AccT<scalar_t>;
    BNBackwardReduce<scalar_t> p;
    p.prm = params<acc_t>(mean, invstd, weight, bias);
    p.sum_dz = sum_dz.data_ptr<acc_t>();
    p.sum_dz_xhat = sum_dz_xhat.data_ptr<acc_t>();
    launch_channel_reduce<kThreads>(p, s.layout, dy, x, s.N, s.C, s.HW, /*per_sample=*/false);
  });
  return {sum_dz, sum_dz_xhat};
}

at::Tensor bn_swish_backward_dx(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                const at::Tensor& invstd, const at::Tensor& weight, const at::Tensor& bias,
                                const at::Tensor& sum_dz, const at::Tensor& sum_dz_xhat, std::optional<int64_t> count) {
  constexpr const char* op = "nvae_fast::bn_swish_backward_dx";
  const ActShape s = check_activation(op, "x", x);
  check_grad(op, dy, x, s.layout);
  check_params(op, x, mean, invstd, weight, bias);
  const at::ScalarType acc = acc_dtype(x.scalar_type());
  check_vector(op, "sum_dz", sum_dz, s.C, acc, "one per channel of x");
  check_vector(op, "sum_dz_xhat", sum_dz_xhat, s.C, acc, "one per channel of x");
  TORCH_CHECK(!count.has_value() || *count > 0, op, ": count must be positive (the number of values per channel), got ",
              count.value_or(0));
  check_device(op, {{"x", &x}, {"dy", &dy}, {"mean", &mean}, {"invstd", &invstd}, {"weight", &weight},
                    {"bias", &bias}, {"sum_dz", &sum_dz}, {"sum_dz_xhat", &sum_dz_xhat}});
  const DeviceGuard guard(x.device());
  at::Tensor dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_swish_backward_dx", [&] {
    using acc_t = AccT<scalar_t>;
    BNBackwardDx<scalar_t> p;
    p.prm = params<acc_t>(mean, invstd, weight, bias);
    p.sum_dz = sum_dz.data_ptr<acc_t>();
    p.sum_dz_xhat = sum_dz_xhat.data_ptr<acc_t>();
    p.inv_count = static_cast<acc_t>(1.0 / static_cast<double>(count.value_or(1)));
    p.training = count.has_value();
    launch_channel_map(p, s.layout, dy, x, dx, s.N, s.C, s.HW);
  });
  return dx;
}

}  // namespace nvae_fast
