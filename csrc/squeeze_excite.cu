// Squeeze-excitation kernels (torch.ops.nvae_fast.se_*): the whole op in two launches per direction.
//
// x, dy: (N, C, H, W), NCHW or NHWC, float16/bfloat16/float32/float64; w1 (Ch, C), b1 (Ch) or none,
// w2 (C, Ch), b2 (C) or none, all in one dtype: x's or the accumulation dtype acc_t (float32, float64
// for float64 x); mean, gate (N, C) in acc_t.
//
// Forward (se_forward):
//   1. se_reduce_kernel<forward>: grid (B, N). The blocks of sample n sum x over P pixel parts of the
//      plane (NHWC: in groups of 32-channel columns) into part[n, p, c]; the last block of sample n to
//      finish (an atomic ticket per sample) adds the P parts in order, m = sum / (H W), and runs the
//      gate MLP of that sample: q = w1 m + b1, a = act(q), gate = sigmoid(w2 a + b2).
//   2. se_map_kernel: y = x gate[n, c], samples last to first (the ones step 1 read last are still in L2).
// Backward (se_backward):
//   1. se_reduce_kernel<backward>: the same grid sums dy x into part[n, p, c]; the last block of sample n
//      forms dg = sum_p part, dp = dg g (1 - g), q and a again from the saved mean, da = dp w2,
//      dq = da act'(q), dm = dq w1, and stores dp, dq, a, dm of the sample; the last of those blocks over
//      all samples (a second ticket) reduces dw1 = dq^T m, db1 = sum_n dq, dw2 = dp^T a, db2 = sum_n dp
//      in sample order.
//   2. se_map_kernel: dx = dy gate[n, c] + dm[n, c] / (H W).
// Every sum runs in a fixed order (no floating-point atomics): results are bitwise reproducible for a
// given shape and device. The tickets (N + 1 counters) are zeroed by a memset before the first kernel.

#include <vector>

#include "checks.h"
#include "ops.h"
#include "reduce.cuh"
#include "tickets.cuh"

namespace nvae_fast {
namespace {

constexpr int kWarps = kThreads / 32;
constexpr int kRows = kThreads / 32;  // NHWC: pixel rows a block reads at once (32 channels wide)

enum Activation : int64_t { kReLU = 0, kSiLU = 1 };

// act(q) and act'(q).
template <typename acc_t>
__device__ __forceinline__ acc_t act_value(int64_t act, acc_t q) {
  return act == kReLU ? (q > acc_t(0) ? q : acc_t(0)) : q * sigmoid(q);
}
template <typename acc_t>
__device__ __forceinline__ acc_t act_grad(int64_t act, acc_t q) {
  if (act == kReLU) return q > acc_t(0) ? acc_t(1) : acc_t(0);
  const acc_t s = sigmoid(q);
  return s * (acc_t(1) + q * (acc_t(1) - s));
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(kFullMask, v, d);
  return v;
}

// The split of every sample's H * W pixels: P parts of `chunk` pixels, B blocks per sample; NHWC also
// splits the channels into `channel_blocks` groups of 32-channel columns (B = parts * channel_blocks).
struct Plan {
  int64_t parts, chunk, blocks, channel_blocks;
};

Plan make_plan(Layout layout, int64_t N, int64_t C, int64_t HW) {
  Plan p{};
  if (layout == Layout::NCHW) {
    // Work items (c, part), one warp each: enough warps to fill the device, parts of >= 128 pixels.
    const int64_t warps = static_cast<int64_t>(multiprocessors()) * 64;
    p.parts = clamp64(ceil_div(warps, N * C), 1, ceil_div(HW, 128));
    p.chunk = ceil_div(HW, p.parts);
    p.parts = ceil_div(HW, p.chunk);
    p.blocks = clamp64(ceil_div(C * p.parts, kWarps), 1, ceil_div(target_blocks(), N));
    p.channel_blocks = 1;
  } else {
    // Parts of >= 4 rows of kRows pixels, then as many channel groups as the device still needs.
    p.parts = clamp64(ceil_div(target_blocks(), N), 1, ceil_div(HW, kRows * 4));
    p.chunk = ceil_div(HW, p.parts);
    p.parts = ceil_div(HW, p.chunk);
    p.channel_blocks = clamp64(ceil_div(target_blocks(), N * p.parts), 1, ceil_div(C, 32));
    p.blocks = p.parts * p.channel_blocks;
  }
  return p;
}

template <typename T, typename W>
struct SEArgs {
  using acc_t = AccT<T>;
  const T* x;
  const T* dy;  // backward only
  const W* w1;
  const W* b1;  // may be null
  const W* w2;
  const W* b2;  // may be null
  acc_t* part;  // (N, P, C)
  unsigned* tickets;  // N + 1, zero on entry
  acc_t* mean;  // (N, C): written by forward, read by backward
  acc_t* gate;  // (N, C): written by forward, read by backward
  acc_t* dp;    // (N, C)   backward scratch
  acc_t* dq;    // (N, Ch)  backward scratch
  acc_t* act;   // (N, Ch)  backward scratch: a
  acc_t* dm;    // (N, C)   backward: read by the dx pass
  W* dw1;
  W* db1;
  W* dw2;
  W* db2;
  int64_t N, C, Ch, HW, parts, chunk, activation;
};

// part[n, p, c] = sum over part p of sample n's plane c of x (Backward: of dy x).
template <typename T, typename W, Layout L, bool Backward>
__device__ __forceinline__ void partial_sums(const SEArgs<T, W>& a, int64_t n) {
  using acc_t = AccT<T>;
  const int64_t C = a.C, HW = a.HW, P = a.parts;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if constexpr (L == Layout::NCHW) {
    for (int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + warp; item < C * P;
         item += static_cast<int64_t>(gridDim.x) * kWarps) {
      const int64_t c = item / P, p = item - c * P;
      const int64_t base = (n * C + c) * HW;
      const int64_t end = min(HW, (p + 1) * a.chunk);
      acc_t s = acc_t(0);
      for (int64_t i = p * a.chunk + lane; i < end; i += 32) {
        const acc_t v = static_cast<acc_t>(a.x[base + i]);
        s += Backward ? v * static_cast<acc_t>(a.dy[base + i]) : v;
      }
      s = warp_sum(s);
      if (lane == 0) a.part[(n * P + p) * C + c] = s;
    }
  } else {
    __shared__ acc_t rows[kRows][32];
    // Block x = g * P + p: part p, 32-channel columns g, g + groups, ...
    const int64_t groups = gridDim.x / P;
    const int64_t g = blockIdx.x / P, p = blockIdx.x - g * P;
    const int64_t end = min(HW, (p + 1) * a.chunk);
    for (int64_t c0 = g * 32; c0 < C; c0 += groups * 32) {
      const int64_t c = c0 + lane;
      acc_t s = acc_t(0);
      if (c < C) {
        for (int64_t r = p * a.chunk + warp; r < end; r += kRows) {
          const int64_t off = (n * HW + r) * C + c;
          const acc_t v = static_cast<acc_t>(a.x[off]);
          s += Backward ? v * static_cast<acc_t>(a.dy[off]) : v;
        }
      }
      rows[warp][lane] = s;
      __syncthreads();
      if (warp == 0 && c < C) {
        acc_t t = acc_t(0);
#pragma unroll
        for (int r = 0; r < kRows; ++r) t += rows[r][lane];
        a.part[(n * P + p) * C + c] = t;
      }
      __syncthreads();
    }
  }
}

// sum_p part[n, p, c] for every c, into out[n, c] times `scale`.
template <typename acc_t>
__device__ __forceinline__ void merge_parts(const acc_t* part, acc_t* out, int64_t n, int64_t P, int64_t C,
                                            acc_t scale) {
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    acc_t s = acc_t(0);
    for (int64_t p = 0; p < P; ++p) s += part[(n * P + p) * C + c];
    out[n * C + c] = s * scale;
  }
}

// Forward of sample n: mean, then gate = sigmoid(w2 act(w1 mean + b1) + b2). Dynamic shared memory:
// a (Ch values).
template <typename T, typename W>
__device__ void forward_mlp(const SEArgs<T, W>& a, int64_t n) {
  using acc_t = AccT<T>;
  const int64_t C = a.C, Ch = a.Ch;
  acc_t* sa = dynamic_smem<acc_t>();
  merge_parts(a.part, a.mean, n, a.parts, C, acc_t(1) / static_cast<acc_t>(a.HW));
  __syncthreads();
  const acc_t* m = a.mean + n * C;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t j = warp; j < Ch; j += kWarps) {
    acc_t s = acc_t(0);
    for (int64_t c = lane; c < C; c += 32) s += static_cast<acc_t>(a.w1[j * C + c]) * m[c];
    s = warp_sum(s);
    if (lane == 0) sa[j] = act_value(a.activation, s + (a.b1 ? static_cast<acc_t>(a.b1[j]) : acc_t(0)));
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    acc_t s = a.b2 ? static_cast<acc_t>(a.b2[c]) : acc_t(0);
    for (int64_t j = 0; j < Ch; ++j) s += static_cast<acc_t>(a.w2[c * Ch + j]) * sa[j];
    a.gate[n * C + c] = sigmoid(s);
  }
}

// Backward of sample n: dp, q, a, dq, dm (see the file comment). Dynamic shared memory: dq (Ch values).
template <typename T, typename W>
__device__ void backward_mlp(const SEArgs<T, W>& a, int64_t n) {
  using acc_t = AccT<T>;
  const int64_t C = a.C, Ch = a.Ch;
  acc_t* sdq = dynamic_smem<acc_t>();
  merge_parts(a.part, a.dp, n, a.parts, C, acc_t(1));  // dg
  __syncthreads();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const acc_t g = a.gate[n * C + c];
    a.dp[n * C + c] *= g * (acc_t(1) - g);
  }
  __syncthreads();
  const acc_t* m = a.mean + n * C;
  const acc_t* dp = a.dp + n * C;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t j = warp; j < Ch; j += kWarps) {
    acc_t q = acc_t(0), da = acc_t(0);
    for (int64_t c = lane; c < C; c += 32) {
      q += static_cast<acc_t>(a.w1[j * C + c]) * m[c];
      da += dp[c] * static_cast<acc_t>(a.w2[c * Ch + j]);
    }
    q = warp_sum(q);
    da = warp_sum(da);
    if (lane == 0) {
      q += a.b1 ? static_cast<acc_t>(a.b1[j]) : acc_t(0);
      const acc_t dq = da * act_grad(a.activation, q);
      sdq[j] = dq;
      a.dq[n * Ch + j] = dq;
      a.act[n * Ch + j] = act_value(a.activation, q);
    }
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    acc_t s = acc_t(0);
    for (int64_t j = 0; j < Ch; ++j) s += sdq[j] * static_cast<acc_t>(a.w1[j * C + c]);
    a.dm[n * C + c] = s;
  }
}

// The weight gradients, sums over the samples in order n = 0, 1, ...
template <typename T, typename W>
__device__ void weight_grads(const SEArgs<T, W>& a) {
  using acc_t = AccT<T>;
  const int64_t N = a.N, C = a.C, Ch = a.Ch;
  for (int64_t i = threadIdx.x; i < Ch * C; i += blockDim.x) {
    const int64_t j = i / C, c = i - j * C;
    acc_t s = acc_t(0);
    for (int64_t n = 0; n < N; ++n) s += a.dq[n * Ch + j] * a.mean[n * C + c];
    a.dw1[i] = static_cast<W>(s);
  }
  for (int64_t i = threadIdx.x; i < C * Ch; i += blockDim.x) {
    const int64_t c = i / Ch, j = i - c * Ch;
    acc_t s = acc_t(0);
    for (int64_t n = 0; n < N; ++n) s += a.dp[n * C + c] * a.act[n * Ch + j];
    a.dw2[i] = static_cast<W>(s);
  }
  for (int64_t j = threadIdx.x; j < Ch; j += blockDim.x) {
    acc_t s = acc_t(0);
    for (int64_t n = 0; n < N; ++n) s += a.dq[n * Ch + j];
    a.db1[j] = static_cast<W>(s);
  }
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    acc_t s = acc_t(0);
    for (int64_t n = 0; n < N; ++n) s += a.dp[n * C + c];
    a.db2[c] = static_cast<W>(s);
  }
}

// Grid (blocks per sample, N).
template <typename T, typename W, Layout L, bool Backward>
__global__ void __launch_bounds__(kThreads) se_reduce_kernel(SEArgs<T, W> a) {
  const int64_t n = blockIdx.y;
  partial_sums<T, W, L, Backward>(a, n);
  if (!last_ticket(a.tickets + n, gridDim.x)) return;
  if constexpr (Backward) {
    backward_mlp(a, n);
    if (last_ticket(a.tickets + a.N, static_cast<unsigned>(a.N))) weight_grads(a);
  } else {
    forward_mlp(a, n);
  }
}

constexpr int64_t kMapChannels = 1024;  // most (n, c) constants one block item holds in shared memory

// y = a gate[n, c] + shift[n, c] / (H W) (shift == nullptr: no shift term), grid (B, N). Sample n is cut
// into items of `cpi` channels times a `chunk`-pixel part of H * W (`parts` parts); a block stages the
// item's constants in shared memory (one global read each), then its threads stride over the item's
// vectors of V elements (NCHW: along the pixels of a plane; NHWC: along the channels of a pixel).
// Samples run last to first (blockIdx.y = 0 takes sample N - 1): se_reduce_kernel read them first to
// last, so the samples it read last, still in L2 when the inputs are larger than it, are read again first.
template <typename T, Layout L, int V>
__global__ void __launch_bounds__(kThreads)
    se_map_kernel(const T* __restrict__ a, T* __restrict__ y, const AccT<T>* __restrict__ gate,
                  const AccT<T>* __restrict__ shift, AccT<T> inv_hw, int64_t C, int64_t HW, int64_t cpi,
                  int64_t parts, int64_t chunk) {
  using acc_t = AccT<T>;
  __shared__ acc_t sg[kMapChannels], ss[kMapChannels];
  const int64_t n = static_cast<int64_t>(gridDim.y) - 1 - blockIdx.y;
  const int64_t items = ceil_div(C, cpi) * parts;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t cg = item / parts, p = item - cg * parts;
    const int64_t c0 = cg * cpi, nch = min(cpi, C - c0);
    const int64_t r0 = p * chunk, rows = min(HW, r0 + chunk) - r0;
    for (int64_t i = threadIdx.x; i < nch; i += blockDim.x) {
      sg[i] = gate[n * C + c0 + i];
      ss[i] = shift != nullptr ? shift[n * C + c0 + i] * inv_hw : acc_t(0);
    }
    __syncthreads();
    if constexpr (L == Layout::NCHW) {
      const int64_t per = rows / V;  // vectors per channel of the item
      for (int64_t v = threadIdx.x; v < nch * per; v += blockDim.x) {
        const int64_t ci = v / per;
        const int64_t off = (n * C + c0 + ci) * HW + r0 + (v - ci * per) * V;
        acc_t va[V];
        load_vec<V>(a + off, va);
#pragma unroll
        for (int k = 0; k < V; ++k) va[k] = va[k] * sg[ci] + ss[ci];
        store_vec<V>(y + off, va);
      }
    } else {
      const int64_t per = nch / V;  // vectors per pixel of the item
      for (int64_t v = threadIdx.x; v < rows * per; v += blockDim.x) {
        const int64_t r = v / per, cv = (v - r * per) * V;
        const int64_t off = (n * HW + r0 + r) * C + c0 + cv;
        acc_t va[V];
        load_vec<V>(a + off, va);
#pragma unroll
        for (int k = 0; k < V; ++k) va[k] = va[k] * sg[cv + k] + ss[cv + k];
        store_vec<V>(y + off, va);
      }
    }
    __syncthreads();
  }
}

// Launches se_map_kernel: y = a gate + shift / HW for a, y (N, C, H, W) in `layout`.
template <typename T>
void launch_se_map(Layout layout, const at::Tensor& a, const at::Tensor& y, const AccT<T>* gate,
                   const AccT<T>* shift, int64_t N, int64_t C, int64_t HW) {
  using acc_t = AccT<T>;
  constexpr int VV = kVec<T>;
  const T* pa = a.data_ptr<T>();
  T* py = y.data_ptr<T>();
  const bool vec = aligned16(pa) && aligned16(py) && (layout == Layout::NCHW ? HW % VV == 0 : C % VV == 0);
  const int V = vec ? VV : 1;
  const int64_t per_item = static_cast<int64_t>(kThreads) * V * 4;  // elements: 4 vectors per thread
  const int64_t per_sample_blocks = ceil_div(target_blocks(), N);
  int64_t cpi, parts;
  if (layout == Layout::NCHW) {
    // Whole planes, several per item when they are small; else parts of one plane.
    cpi = clamp64(std::min(per_item / HW, ceil_div(N * C, target_blocks())), 1, std::min(C, kMapChannels));
    parts = cpi > 1 ? 1 : clamp64(ceil_div(per_sample_blocks, C), 1, ceil_div(HW, per_item));
  } else {
    // 32 vectors of channels, parts of the pixels.
    cpi = std::min<int64_t>(C, 32 * V);
    parts = clamp64(ceil_div(per_sample_blocks, ceil_div(C, cpi)), 1, ceil_div(HW * cpi, per_item));
  }
  int64_t chunk = ceil_div(HW, parts);
  if (layout == Layout::NCHW) chunk = ceil_div(chunk, V) * V;
  parts = ceil_div(HW, chunk);
  const int64_t items = ceil_div(C, cpi) * parts;
  const dim3 grid(static_cast<unsigned>(std::min(items, per_sample_blocks)), static_cast<unsigned>(N));
  const acc_t inv_hw = static_cast<acc_t>(1.0 / static_cast<double>(HW));
  const cudaStream_t stream = current_stream();
  if (layout == Layout::NCHW) {
    if (vec) {
      launch<se_map_kernel<T, Layout::NCHW, VV>>(grid, kThreads, 0, stream, pa, py, gate, shift, inv_hw, C, HW, cpi, parts, chunk);
    } else {
      launch<se_map_kernel<T, Layout::NCHW, 1>>(grid, kThreads, 0, stream, pa, py, gate, shift, inv_hw, C, HW, cpi, parts, chunk);
    }
  } else {
    if (vec) {
      launch<se_map_kernel<T, Layout::NHWC, VV>>(grid, kThreads, 0, stream, pa, py, gate, shift, inv_hw, C, HW, cpi, parts, chunk);
    } else {
      launch<se_map_kernel<T, Layout::NHWC, 1>>(grid, kThreads, 0, stream, pa, py, gate, shift, inv_hw, C, HW, cpi, parts, chunk);
    }
  }
}

// (N, C), contiguous, accumulation dtype of x.
void check_per_sample(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x, const char* x_name) {
  check_float(op, name, t);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == x.size(0) && t.size(1) == x.size(1), op, ": ", name,
              " must have shape (N, C) = (", x.size(0), ", ", x.size(1), ") (from ", x_name, "), got ", t.sizes());
  check_dtype(op, name, t, acc_dtype(x.scalar_type()), "the accumulation dtype of the activations");
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

struct Weights {
  at::Tensor w1, b1, w2, b2;  // b1, b2 undefined when absent
  int64_t Ch;
};

// w1 (Ch, C), w2 (C, Ch), optional b1 (Ch), b2 (C): contiguous, one dtype, x's or its accumulation dtype.
Weights check_weights(const char* op, const at::Tensor& x, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                      const at::Tensor& w2, const std::optional<at::Tensor>& b2) {
  Weights w{w1, b1.has_value() ? *b1 : at::Tensor(), w2, b2.has_value() ? *b2 : at::Tensor(), 0};
  check_float(op, "w1", w1);
  check_dim(op, "w1", w1, 2, "(Ch, C)");
  TORCH_CHECK(w1.size(1) == x.size(1), op, ": w1 must have shape (Ch, C) with C = ", x.size(1), ", got ", w1.sizes());
  w.Ch = w1.size(0);
  const at::ScalarType wt = w1.scalar_type();
  TORCH_CHECK(wt == x.scalar_type() || wt == acc_dtype(x.scalar_type()), op,
              ": w1 must have the dtype of x or its accumulation dtype, got ", wt);
  check_float(op, "w2", w2);
  TORCH_CHECK(w2.dim() == 2 && w2.size(0) == x.size(1) && w2.size(1) == w.Ch, op, ": w2 must have shape (C, Ch) = (",
              x.size(1), ", ", w.Ch, "), got ", w2.sizes());
  check_dtype(op, "w2", w2, wt, "the dtype of w1");
  TORCH_CHECK(w1.is_contiguous() && w2.is_contiguous(), op, ": w1 and w2 must be contiguous");
  if (w.b1.defined()) check_vector(op, "b1", w.b1, w.Ch, wt, "Ch, and the dtype of w1");
  if (w.b2.defined()) check_vector(op, "b2", w.b2, x.size(1), wt, "C, and the dtype of w1");
  TORCH_CHECK(w.Ch * static_cast<int64_t>(at::elementSize(acc_dtype(x.scalar_type()))) <= 48 * 1024, op,
              ": w1 has ", w.Ch, " rows, more than the kernels' shared memory holds");
  return w;
}

void check_activation_kind(const char* op, int64_t activation) {
  TORCH_CHECK(activation == kReLU || activation == kSiLU, op, ": activation must be 0 (relu) or 1 (silu), got ",
              activation);
}

template <typename W>
const W* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<W>() : nullptr;
}

// Launches se_reduce_kernel for the layout, on tickets zeroed first.
template <typename T, typename W, bool Backward>
void launch_reduce(SEArgs<T, W> a, Layout layout, const Plan& plan, const at::Tensor& tickets) {
  const cudaStream_t stream = current_stream();
  zero_async(tickets.data_ptr(), tickets.nbytes(), stream);
  const dim3 grid(static_cast<unsigned>(plan.blocks), static_cast<unsigned>(a.N));
  const size_t smem = static_cast<size_t>(a.Ch) * sizeof(AccT<T>);
  if (layout == Layout::NCHW) {
    launch<se_reduce_kernel<T, W, Layout::NCHW, Backward>>(grid, kThreads, smem, stream, a);
  } else {
    launch<se_reduce_kernel<T, W, Layout::NHWC, Backward>>(grid, kThreads, smem, stream, a);
  }
}

template <typename X>
struct Tag {
  using type = X;
};

// Runs body(Tag<scalar_t>, Tag<W>) for x's dtype and the weights' dtype W (x's or acc_t).
template <class F>
void dispatch(const at::Tensor& x, const at::Tensor& w1, F&& body) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "squeeze_excite", [&] {
    if (w1.scalar_type() == x.scalar_type()) {
      body(Tag<scalar_t>{}, Tag<scalar_t>{});
    } else {
      body(Tag<scalar_t>{}, Tag<AccT<scalar_t>>{});
    }
  });
}

void check_sizes(const char* op, const ActShape& s) {
  TORCH_CHECK(s.N <= kMaxGridYZ, op, ": x has ", s.N, " samples, more than the ", kMaxGridYZ, " the kernels handle");
}

}  // namespace

std::vector<int64_t> se_plan(const at::Tensor& x) {
  const ActShape s = check_activation("nvae_fast::se_plan", "x", x);
  const Plan p = make_plan(s.layout, std::max<int64_t>(s.N, 1), std::max<int64_t>(s.C, 1), std::max<int64_t>(s.HW, 1));
  return {p.parts, p.chunk, p.blocks, p.channel_blocks};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> se_forward(const at::Tensor& x, const at::Tensor& w1,
                                                          const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                                                          const std::optional<at::Tensor>& b2, int64_t activation) {
  constexpr const char* op = "nvae_fast::se_forward";
  const ActShape s = check_activation(op, "x", x);
  TORCH_CHECK(s.HW > 0, op, ": x must have a non-empty spatial extent, got shape ", x.sizes());
  check_sizes(op, s);
  check_activation_kind(op, activation);
  const Weights w = check_weights(op, x, w1, b1, w2, b2);
  check_device(op, {{"x", &x}, {"w1", &w1}, {"w2", &w2}});
  if (w.b1.defined()) check_device(op, {{"x", &x}, {"b1", &w.b1}});
  if (w.b2.defined()) check_device(op, {{"x", &x}, {"b2", &w.b2}});
  const DeviceGuard guard(x.device());
  const at::TensorOptions acc = x.options().dtype(acc_dtype(x.scalar_type()));
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({s.N, s.C}, acc);
  at::Tensor gate = at::empty({s.N, s.C}, acc);
  if (s.N == 0 || s.C == 0) return {y, mean, gate};
  const Plan plan = make_plan(s.layout, s.N, s.C, s.HW);
  at::Tensor part = at::empty({s.N * plan.parts * s.C}, acc);
  at::Tensor tickets = at::empty({s.N + 1}, x.options().dtype(at::kInt));
  dispatch(x, w1, [&](auto tt, auto tw) {
    using T = typename decltype(tt)::type;
    using W = typename decltype(tw)::type;
    using acc_t = AccT<T>;
    SEArgs<T, W> a{};
    a.x = x.data_ptr<T>();
    a.w1 = w.w1.data_ptr<W>();
    a.b1 = ptr_or_null<W>(w.b1);
    a.w2 = w.w2.data_ptr<W>();
    a.b2 = ptr_or_null<W>(w.b2);
    a.part = part.data_ptr<acc_t>();
    a.tickets = reinterpret_cast<unsigned*>(tickets.data_ptr<int>());
    a.mean = mean.data_ptr<acc_t>();
    a.gate = gate.data_ptr<acc_t>();
    a.N = s.N, a.C = s.C, a.Ch = w.Ch, a.HW = s.HW, a.parts = plan.parts, a.chunk = plan.chunk;
    a.activation = activation;
    launch_reduce<T, W, false>(a, s.layout, plan, tickets);
    launch_se_map<T>(s.layout, x, y, a.gate, nullptr, s.N, s.C, s.HW);
  });
  return {y, mean, gate};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_backward(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& gate, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    int64_t activation) {
  constexpr const char* op = "nvae_fast::se_backward";
  const ActShape s = check_activation(op, "x", x);
  TORCH_CHECK(s.HW > 0, op, ": x must have a non-empty spatial extent, got shape ", x.sizes());
  check_sizes(op, s);
  check_float(op, "dy", dy);
  check_same_shape(op, "dy", dy, "x", x);
  check_dtype(op, "dy", dy, x.scalar_type(), "the dtype of x");
  check_layout(op, "dy", dy, s.layout, "x");
  check_per_sample(op, "mean", mean, x, "x");
  check_per_sample(op, "gate", gate, x, "x");
  check_activation_kind(op, activation);
  const Weights w = check_weights(op, x, w1, b1, w2, b2);
  check_device(op, {{"x", &x}, {"dy", &dy}, {"mean", &mean}, {"gate", &gate}, {"w1", &w1}, {"w2", &w2}});
  if (w.b1.defined()) check_device(op, {{"x", &x}, {"b1", &w.b1}});
  if (w.b2.defined()) check_device(op, {{"x", &x}, {"b2", &w.b2}});
  const DeviceGuard guard(x.device());
  const at::TensorOptions acc = x.options().dtype(acc_dtype(x.scalar_type()));
  const at::TensorOptions wopt = w1.options();
  at::Tensor dx = at::empty_like(x);
  at::Tensor dw1 = at::empty_like(w1), dw2 = at::empty_like(w2);
  at::Tensor db1 = at::empty({w.Ch}, wopt), db2 = at::empty({s.C}, wopt);
  if (s.N == 0 || s.C == 0) {
    for (at::Tensor* t : {&dw1, &dw2, &db1, &db2}) t->zero_();
    return {dx, dw1, db1, dw2, db2};
  }
  const Plan plan = make_plan(s.layout, s.N, s.C, s.HW);
  at::Tensor part = at::empty({s.N * plan.parts * s.C}, acc);
  at::Tensor tickets = at::empty({s.N + 1}, x.options().dtype(at::kInt));
  // dp, dm (N, C) and dq, a (N, Ch) of every sample.
  at::Tensor scratch = at::empty({2 * s.N * (s.C + w.Ch)}, acc);
  dispatch(x, w1, [&](auto tt, auto tw) {
    using T = typename decltype(tt)::type;
    using W = typename decltype(tw)::type;
    using acc_t = AccT<T>;
    SEArgs<T, W> a{};
    a.x = x.data_ptr<T>();
    a.dy = dy.data_ptr<T>();
    a.w1 = w.w1.data_ptr<W>();
    a.b1 = ptr_or_null<W>(w.b1);
    a.w2 = w.w2.data_ptr<W>();
    a.b2 = ptr_or_null<W>(w.b2);
    a.part = part.data_ptr<acc_t>();
    a.tickets = reinterpret_cast<unsigned*>(tickets.data_ptr<int>());
    a.mean = mean.data_ptr<acc_t>();
    a.gate = gate.data_ptr<acc_t>();
    acc_t* sp = scratch.data_ptr<acc_t>();
    a.dp = sp;
    a.dm = sp + s.N * s.C;
    a.dq = sp + 2 * s.N * s.C;
    a.act = a.dq + s.N * w.Ch;
    a.dw1 = dw1.data_ptr<W>();
    a.db1 = db1.data_ptr<W>();
    a.dw2 = dw2.data_ptr<W>();
    a.db2 = db2.data_ptr<W>();
    a.N = s.N, a.C = s.C, a.Ch = w.Ch, a.HW = s.HW, a.parts = plan.parts, a.chunk = plan.chunk;
    a.activation = activation;
    launch_reduce<T, W, true>(a, s.layout, plan, tickets);
    launch_se_map<T>(s.layout, dy, dx, a.gate, a.dm, s.N, s.C, s.HW);
  });
  return {dx, dw1, db1, dw2, db2};
}

}  // namespace nvae_fast
