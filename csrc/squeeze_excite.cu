// Squeeze-excitation kernels (torch.ops.nvae_fast.se_*): the memory-bound passes over x and dy; the
// tiny (N, C) MLP of the gate stays in PyTorch.
//
// x, dy: (N, C, H, W), NCHW or NHWC, float16/bfloat16/float32/float64; gate, dmean: (N, C) in the
// accumulation dtype (float32, float64 for float64 x).
//
//   pool:             m[n, c] = sum_{h,w} x[n, c, h, w] / (H W)
//   scale:            y = x gate[n, c]
//   backward_reduce:  dg[n, c] = sum_{h,w} dy x
//   backward_dx:      dx = dy gate[n, c] + dmean[n, c] / (H W)
// The sums are deterministic reductions over each (n, c) plane (reduce.cuh).

#include "checks.h"
#include "elementwise.cuh"
#include "ops.h"
#include "reduce.cuh"

namespace nvae_fast {
namespace {

struct NoChan {};

// out[n, c] = scale * sum over the plane of a (kInputs == 1) or of a b (kInputs == 2).
template <typename T, int Inputs>
struct PlaneSum : SumPolicy<PlaneSum<T, Inputs>, SumAcc<AccT<T>, 1>, AccT<T>, 1> {
  using scalar_t = T;
  using acc_t = AccT<T>;
  using Acc = SumAcc<acc_t, 1>;
  using Chan = NoChan;
  static constexpr int kInputs = Inputs;

  acc_t* out;
  acc_t scale;

  __device__ __forceinline__ Chan load(int64_t) const { return Chan{}; }
  __device__ __forceinline__ void contrib(const Chan&, acc_t a, acc_t b, acc_t (&terms)[1]) const {
    terms[0] = Inputs == 1 ? a : a * b;
  }
  __device__ __forceinline__ void finalize(const Acc& acc, int64_t o) const { out[o] = acc.s[0] * scale; }
};

// y = a gate[n, c] + shift[n, c] * inv_hw (shift == nullptr: no shift term).
template <typename T>
struct GateMap {
  using scalar_t = T;
  using acc_t = AccT<T>;
  static constexpr int kInputs = 1;
  struct Chan {
    acc_t gate, shift;
  };

  const acc_t* gate;
  const acc_t* shift;
  acc_t inv_hw;
  int64_t C;

  __device__ __forceinline__ Chan load(int64_t n, int64_t c) const {
    const int64_t i = n * C + c;
    return Chan{gate[i], shift != nullptr ? shift[i] * inv_hw : acc_t(0)};
  }
  __device__ __forceinline__ acc_t apply(const Chan& ch, acc_t a, acc_t) const { return a * ch.gate + ch.shift; }
};

// (N, C), contiguous, accumulation dtype of x.
void check_per_sample(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x, const char* x_name) {
  check_float(op, name, t);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == x.size(0) && t.size(1) == x.size(1), op, ": ", name,
              " must have shape (N, C) = (", x.size(0), ", ", x.size(1), ") (from ", x_name, "), got ", t.sizes());
  check_dtype(op, name, t, acc_dtype(x.scalar_type()), "the accumulation dtype of the activations");
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// 1 / n rounded once to acc_t.
template <typename acc_t>
acc_t reciprocal(int64_t n) {
  return static_cast<acc_t>(1.0 / static_cast<double>(n));
}

}  // namespace

at::Tensor se_pool(const at::Tensor& x) {
  constexpr const char* op = "nvae_fast::se_pool";
  const ActShape s = check_activation(op, "x", x);
  TORCH_CHECK(s.HW > 0, op, ": x must have a non-empty spatial extent, got shape ", x.sizes());
  check_device(op, {{"x", &x}});
  const DeviceGuard guard(x.device());
  at::Tensor m = at::empty({s.N, s.C}, x.options().dtype(acc_dtype(x.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_pool", [&] {
    using acc_t = AccT<scalar_t>;
    PlaneSum<scalar_t, 1> p;
    p.out = m.data_ptr<acc_t>();
    p.scale = reciprocal<acc_t>(s.HW);
    launch_channel_reduce<32>(p, s.layout, x, x, s.N, s.C, s.HW, /*per_sample=*/true);
  });
  return m;
}

at::Tensor se_scale(const at::Tensor& x, const at::Tensor& gate) {
  constexpr const char* op = "nvae_fast::se_scale";
  const ActShape s = check_activation(op, "x", x);
  check_per_sample(op, "gate", gate, x, "x");
  check_device(op, {{"x", &x}, {"gate", &gate}});
  const DeviceGuard guard(x.device());
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_scale", [&] {
    using acc_t = AccT<scalar_t>;
    const GateMap<scalar_t> p{gate.data_ptr<acc_t>(), nullptr, acc_t(0), s.C};
    launch_channel_map(p, s.layout, x, x, y, s.N, s.C, s.HW);
  });
  return y;
}

at::Tensor se_backward_reduce(const at::Tensor& dy, const at::Tensor& x) {
  constexpr const char* op = "nvae_fast::se_backward_reduce";
  const ActShape s = check_activation(op, "x", x);
  check_float(op, "dy", dy);
  check_same_shape(op, "dy", dy, "x", x);
  check_dtype(op, "dy", dy, x.scalar_type(), "the dtype of x");
  check_layout(op, "dy", dy, s.layout, "x");
  check_device(op, {{"x", &x}, {"dy", &dy}});
  const DeviceGuard guard(x.device());
  at::Tensor dg = at::empty({s.N, s.C}, x.options().dtype(acc_dtype(x.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_backward_reduce", [&] {
    using acc_t = AccT<scalar_t>;
    PlaneSum<scalar_t, 2> p;
    p.out = dg.data_ptr<acc_t>();
    p.scale = acc_t(1);
    launch_channel_reduce<32>(p, s.layout, dy, x, s.N, s.C, s.HW, /*per_sample=*/true);
  });
  return dg;
}

at::Tensor se_backward_dx(const at::Tensor& dy, const at::Tensor& gate, const at::Tensor& dmean) {
  constexpr const char* op = "nvae_fast::se_backward_dx";
  const ActShape s = check_activation(op, "dy", dy);
  TORCH_CHECK(s.HW > 0, op, ": dy must have a non-empty spatial extent, got shape ", dy.sizes());
  check_per_sample(op, "gate", gate, dy, "dy");
  check_per_sample(op, "dmean", dmean, dy, "dy");
  check_device(op, {{"dy", &dy}, {"gate", &gate}, {"dmean", &dmean}});
  const DeviceGuard guard(dy.device());
  at::Tensor dx = at::empty_like(dy);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "se_backward_dx", [&] {
    using acc_t = AccT<scalar_t>;
    const GateMap<scalar_t> p{gate.data_ptr<acc_t>(), dmean.data_ptr<acc_t>(), reciprocal<acc_t>(s.HW), s.C};
    launch_channel_map(p, s.layout, dy, dy, dx, s.N, s.C, s.HW);
  });
  return dx;
}

}  // namespace nvae_fast
