// Deterministic per-channel reductions of 4-D activations (NCHW or NHWC), shared by BN+Swish and
// squeeze-excitation.
//
// Outputs are indexed either by channel c (out = c: reduce over N, H, W; `per_sample = false`) or by
// (n, c) (out = n * C + c: reduce over H, W; `per_sample = true`). The work is split into S parts along
// the reduced extent; each part's accumulator goes to a workspace (S, fields, outputs) and a second
// kernel merges the S parts in order s = 0, 1, ... (with S == 1 the first kernel writes the result).
// Within a block, warp shuffles and shared-memory trees combine partial accumulators in a fixed
// pattern. No floating-point atomics: results are bitwise reproducible for a given shape and device.
//
// A reduction policy P provides
//   scalar_t, acc_t        input element type and accumulation type
//   Acc                    accumulator: SumAcc<acc_t, K> or WelfordAcc<acc_t>
//   kInputs                1 (input a) or 2 (inputs a and b, read at the same offsets)
//   Chan                   per-output constants, Chan load(int64_t out) const
//   add_same<V>(Acc&, const Chan&, const acc_t (&a)[V], const acc_t (&b)[V])
//                          V consecutive values that belong to one output (NCHW rows)
//   add_across<V>(Acc (&)[V], const Chan (&)[V], const acc_t (&a)[V], const acc_t (&b)[V])
//                          one value for each of V consecutive outputs (NHWC rows)
//   finalize(const Acc&, int64_t out) const   writes output `out`
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "checks.h"
#include "launch.h"
#include "tickets.cuh"
#include "vec.cuh"

namespace nvae_fast {

constexpr unsigned kFullMask = 0xffffffffu;

// K independent sums.
template <typename T, int K>
struct SumAcc {
  static constexpr int kFields = K;
  T s[K];

  __device__ __forceinline__ static SumAcc identity() {
    SumAcc a;
#pragma unroll
    for (int k = 0; k < K; ++k) a.s[k] = T(0);
    return a;
  }
  __device__ __forceinline__ void merge(const SumAcc& o) {
#pragma unroll
    for (int k = 0; k < K; ++k) s[k] += o.s[k];
  }
  __device__ __forceinline__ SumAcc shfl_down(int delta) const {
    SumAcc r;
#pragma unroll
    for (int k = 0; k < K; ++k) r.s[k] = __shfl_down_sync(kFullMask, s[k], delta);
    return r;
  }
  // Field k lives at p[k * stride].
  __device__ __forceinline__ void store(T* p, int64_t stride) const {
#pragma unroll
    for (int k = 0; k < K; ++k) p[k * stride] = s[k];
  }
  // Read past L1: partials that other blocks of the same launch may have written (tickets.cuh).
  __device__ __forceinline__ static SumAcc load(const T* p, int64_t stride) {
    SumAcc a;
#pragma unroll
    for (int k = 0; k < K; ++k) a.s[k] = load_cg(p + k * stride);
    return a;
  }
};

// Count, mean and sum of squared deviations (M2) of a set of values; sets combine with the formula
// of Chan, Golub and LeVeque: n = na + nb, d = mb - ma, mean = ma + d nb / n,
// M2 = M2a + M2b + d^2 na nb / n.
template <typename T>
struct WelfordAcc {
  static constexpr int kFields = 3;
  T n, mean, m2;

  __device__ __forceinline__ static WelfordAcc identity() { return WelfordAcc{T(0), T(0), T(0)}; }
  __device__ __forceinline__ void merge(const WelfordAcc& o) {
    if (o.n == T(0)) return;
    const T total = n + o.n;
    const T d = o.mean - mean;
    const T r = o.n / total;
    mean += d * r;
    m2 += o.m2 + d * d * n * r;
    n = total;
  }
  __device__ __forceinline__ WelfordAcc shfl_down(int delta) const {
    return WelfordAcc{__shfl_down_sync(kFullMask, n, delta), __shfl_down_sync(kFullMask, mean, delta),
                      __shfl_down_sync(kFullMask, m2, delta)};
  }
  __device__ __forceinline__ void store(T* p, int64_t stride) const {
    p[0] = n;
    p[stride] = mean;
    p[2 * stride] = m2;
  }
  // Read past L1, as SumAcc::load.
  __device__ __forceinline__ static WelfordAcc load(const T* p, int64_t stride) {
    return WelfordAcc{load_cg(p), load_cg(p + stride), load_cg(p + 2 * stride)};
  }
  // Adds V values: their exact mean and M2 (two passes over registers), then one Chan merge.
  template <int V>
  __device__ __forceinline__ void add_block(const T (&x)[V]) {
    if constexpr (V == 1) {
      n += T(1);
      const T d = x[0] - mean;
      mean += d / n;
      m2 += d * (x[0] - mean);
    } else {
      T sum = T(0);
#pragma unroll
      for (int k = 0; k < V; ++k) sum += x[k];
      const T bmean = sum * (T(1) / T(V));
      T bm2 = T(0);
#pragma unroll
      for (int k = 0; k < V; ++k) bm2 += (x[k] - bmean) * (x[k] - bmean);
      merge(WelfordAcc{T(V), bmean, bm2});
    }
  }
};

template <class A>
__device__ __forceinline__ A warp_reduce(A a) {
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) a.merge(a.shfl_down(delta));
  return a;
}

// Reduces the accumulators of each group of TPR consecutive threads (TPR = 32 or a multiple of 32 up
// to blockDim.x); the result is valid in the group's first thread. Every thread of the block must call
// it. `sh` holds blockDim.x / 32 accumulators.
template <int TPR, class A>
__device__ __forceinline__ A group_reduce(A a, A* sh) {
  a = warp_reduce(a);
  if constexpr (TPR > 32) {
    constexpr int kWarps = TPR / 32;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) sh[warp] = a;
    __syncthreads();
    if (threadIdx.x % TPR < 32) {  // the group's first warp, whole warps only
      a = lane < kWarps ? sh[(threadIdx.x / TPR) * kWarps + lane] : A::identity();
      a = warp_reduce(a);
    }
    __syncthreads();
  }
  return a;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024), returned to every thread.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* sh /* 33 entries */) {
  using A = SumAcc<T, 1>;
  A a{{v}};
  a = warp_reduce(a);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) sh[warp] = a.s[0];
  __syncthreads();
  if (warp == 0) {
    A b{{lane < static_cast<int>(blockDim.x >> 5) ? sh[lane] : T(0)}};
    b = warp_reduce(b);
    if (lane == 0) sh[32] = b.s[0];
  }
  __syncthreads();
  const T total = sh[32];
  __syncthreads();
  return total;
}

// NCHW: the data is (O, M, L) with L contiguous; output m reduces over o and l. Groups of TPR threads
// own one output each; blockIdx.y selects the part [chunk * y, chunk * (y + 1)) of the O * L / V
// vectors. V > 1 needs L % V == 0 and 16-byte aligned inputs.
template <class P, int TPR, int V>
__global__ void __launch_bounds__(kThreads)
    reduce_inner_kernel(P p, const typename P::scalar_t* __restrict__ a, const typename P::scalar_t* __restrict__ b,
                        int64_t O, int64_t M, int64_t L, int64_t chunk, typename P::acc_t* __restrict__ ws) {
  using acc_t = typename P::acc_t;
  using A = typename P::Acc;
  constexpr int kGroups = kThreads / TPR;
  __shared__ A sh[kThreads / 32];

  const int t = threadIdx.x % TPR;
  const int64_t m = static_cast<int64_t>(blockIdx.x) * kGroups + threadIdx.x / TPR;
  const int64_t lv = L / V;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t end = min(O * lv, begin + chunk);
  A acc = A::identity();
  int64_t i = begin + t;
  if (m < M && i < end) {
    const typename P::Chan ch = p.load(m);
    int64_t o = i / lv, l = i - o * lv;
    const int64_t step_o = TPR / lv, step_l = TPR - step_o * lv;
    for (; i < end; i += TPR) {
      const int64_t off = (o * M + m) * L + l * V;
      acc_t va[V], vb[V];
      load_vec<V>(a + off, va);
      if constexpr (P::kInputs > 1) {
        load_vec<V>(b + off, vb);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) vb[k] = va[k];
      }
      p.template add_same<V>(acc, ch, va, vb);
      l += step_l;
      o += step_o;
      if (l >= lv) {
        l -= lv;
        ++o;
      }
    }
  }
  acc = group_reduce<TPR>(acc, sh);
  if (t == 0 && m < M) {
    if (gridDim.y == 1) {
      p.finalize(acc, m);
    } else {
      acc.store(ws + static_cast<int64_t>(blockIdx.y) * A::kFields * M + m, M);
    }
  }
}

// NHWC: the data is (G, R, C) with C contiguous; output g * C + c reduces over the R rows of group g.
// Block (TX, TY): threadIdx.x picks V consecutive channels, threadIdx.y strides over the rows of the
// part blockIdx.z; TY is a power of two. V > 1 needs C % V == 0 and 16-byte aligned inputs.
template <class P, int V>
__global__ void __launch_bounds__(kThreads)
    reduce_columns_kernel(P p, const typename P::scalar_t* __restrict__ a, const typename P::scalar_t* __restrict__ b,
                          int64_t G, int64_t R, int64_t C, int64_t chunk, typename P::acc_t* __restrict__ ws) {
  using acc_t = typename P::acc_t;
  using A = typename P::Acc;
  using Chan = typename P::Chan;
  __shared__ A sh[kThreads * V];

  const int64_t cv = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = cv * V < C;
  const int64_t rbegin = static_cast<int64_t>(blockIdx.z) * chunk;
  const int64_t rend = min(R, rbegin + chunk);
  const int slot = threadIdx.y * blockDim.x + threadIdx.x;
  const int64_t outputs = G * C;

  for (int64_t g = blockIdx.y; g < G; g += gridDim.y) {
    A acc[V];
#pragma unroll
    for (int k = 0; k < V; ++k) acc[k] = A::identity();
    if (active) {
      Chan ch[V];
#pragma unroll
      for (int k = 0; k < V; ++k) ch[k] = p.load(g * C + cv * V + k);
      for (int64_t r = rbegin + threadIdx.y; r < rend; r += blockDim.y) {
        const int64_t off = (g * R + r) * C + cv * V;
        acc_t va[V], vb[V];
        load_vec<V>(a + off, va);
        if constexpr (P::kInputs > 1) {
          load_vec<V>(b + off, vb);
        } else {
#pragma unroll
          for (int k = 0; k < V; ++k) vb[k] = va[k];
        }
        p.template add_across<V>(acc, ch, va, vb);
      }
    }
#pragma unroll
    for (int k = 0; k < V; ++k) sh[slot * V + k] = acc[k];
    __syncthreads();
    for (int half = blockDim.y / 2; half > 0; half >>= 1) {
      if (static_cast<int>(threadIdx.y) < half) {
#pragma unroll
        for (int k = 0; k < V; ++k) sh[slot * V + k].merge(sh[(slot + half * blockDim.x) * V + k]);
      }
      __syncthreads();
    }
    if (threadIdx.y == 0 && active) {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int64_t out = g * C + cv * V + k;
        const A r = sh[threadIdx.x * V + k];
        if (gridDim.z == 1) {
          p.finalize(r, out);
        } else {
          r.store(ws + static_cast<int64_t>(blockIdx.z) * A::kFields * outputs + out, outputs);
        }
      }
    }
    __syncthreads();
  }
}

// Merges the S parts of every output in order and writes the results.
template <class P>
__global__ void __launch_bounds__(kThreads)
    reduce_finalize_kernel(P p, const typename P::acc_t* __restrict__ ws, int64_t parts, int64_t outputs) {
  using A = typename P::Acc;
  for (int64_t out = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; out < outputs;
       out += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    A acc = A::identity();
    for (int64_t s = 0; s < parts; ++s) acc.merge(A::load(ws + s * A::kFields * outputs + out, outputs));
    p.finalize(acc, out);
  }
}

// Runs policy p over x-shaped inputs a (and b) of shape (N, C, H, W) with HW = H * W in `layout`.
// Outputs: C (per_sample = false) or N * C (per_sample = true). TPR: threads per output in NCHW
// (256 when each output reduces many values, 32 when it reduces one H * W plane).
template <int TPR, class P>
void launch_channel_reduce(const P& p, Layout layout, const at::Tensor& a, const at::Tensor& b, int64_t N,
                           int64_t C, int64_t HW, bool per_sample) {
  using scalar_t = typename P::scalar_t;
  using acc_t = typename P::acc_t;
  using A = typename P::Acc;
  constexpr int VV = kVec<scalar_t>;
  const int64_t outputs = per_sample ? N * C : C;
  if (outputs == 0) return;
  const scalar_t* pa = a.data_ptr<scalar_t>();
  const scalar_t* pb = b.data_ptr<scalar_t>();
  const bool aligned = aligned16(pa) && aligned16(pb);
  const int64_t target = target_blocks();
  const cudaStream_t stream = current_stream();
  at::Tensor ws;
  int64_t parts = 1;

  if (layout == Layout::NCHW) {
    const int64_t O = per_sample ? 1 : N, M = outputs, L = HW;
    const int V = (L % VV == 0 && aligned) ? VV : 1;
    constexpr int kGroups = kThreads / TPR;
    const int64_t blocks = ceil_div(M, kGroups);
    const int64_t vectors = O * L / V;
    parts = clamp64(ceil_div(target, blocks), 1, std::min<int64_t>(kMaxGridYZ, std::max<int64_t>(1, vectors / (TPR * 4))));
    const int64_t chunk = vectors > 0 ? ceil_div(vectors, parts) : 0;
    parts = vectors > 0 ? ceil_div(vectors, chunk) : 1;
    if (parts > 1) ws = at::empty({parts * A::kFields * outputs}, a.options().dtype(acc_dtype(a.scalar_type())));
    acc_t* pws = parts > 1 ? ws.data_ptr<acc_t>() : nullptr;
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(parts));
    if (V == VV) {
      launch<reduce_inner_kernel<P, TPR, VV>>(grid, kThreads, 0, stream, p, pa, pb, O, M, L, chunk, pws);
    } else {
      launch<reduce_inner_kernel<P, TPR, 1>>(grid, kThreads, 0, stream, p, pa, pb, O, M, L, chunk, pws);
    }
  } else {
    const int64_t G = per_sample ? N : 1, R = per_sample ? HW : N * HW;
    const int V = (C % VV == 0 && aligned) ? VV : 1;
    const int64_t cvecs = C / V;
    const int tx = static_cast<int>(std::min<int64_t>(32, pow2_ceil(cvecs)));
    const int ty = kThreads / tx;
    const int64_t blocks_x = ceil_div(cvecs, tx);
    const int64_t blocks_y = std::min(G, kMaxGridYZ);
    parts = clamp64(ceil_div(target, blocks_x * blocks_y), 1,
                    std::min<int64_t>(kMaxGridYZ, std::max<int64_t>(1, R / (ty * 4))));
    const int64_t chunk = R > 0 ? ceil_div(R, parts) : 0;
    parts = R > 0 ? ceil_div(R, chunk) : 1;
    if (parts > 1) ws = at::empty({parts * A::kFields * outputs}, a.options().dtype(acc_dtype(a.scalar_type())));
    acc_t* pws = parts > 1 ? ws.data_ptr<acc_t>() : nullptr;
    const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(blocks_y), static_cast<unsigned>(parts));
    const dim3 block(tx, ty);
    if (V == VV) {
      launch<reduce_columns_kernel<P, VV>>(grid, block, 0, stream, p, pa, pb, G, R, C, chunk, pws);
    } else {
      launch<reduce_columns_kernel<P, 1>>(grid, block, 0, stream, p, pa, pb, G, R, C, chunk, pws);
    }
  }
  if (parts > 1) {
    const int64_t blocks = std::min<int64_t>(ceil_div(outputs, kThreads), target);
    launch<reduce_finalize_kernel<P>>(static_cast<unsigned>(blocks), kThreads, 0, stream, p, ws.data_ptr<acc_t>(),
                                      parts, outputs);
  }
}

// Adapter for sum policies: Derived provides `contrib(const Chan&, acc_t a, acc_t b, acc_t (&out)[K])`,
// the K terms that one element adds.
template <class Derived, typename Acc, typename acc_t, int K>
struct SumPolicy {
  template <int V, class Chan>
  __device__ __forceinline__ void add_same(Acc& acc, const Chan& ch, const acc_t (&a)[V], const acc_t (&b)[V]) const {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      acc_t terms[K];
      static_cast<const Derived*>(this)->contrib(ch, a[k], b[k], terms);
#pragma unroll
      for (int f = 0; f < K; ++f) acc.s[f] += terms[f];
    }
  }
  template <int V, class Chan>
  __device__ __forceinline__ void add_across(Acc (&acc)[V], const Chan (&ch)[V], const acc_t (&a)[V],
                                             const acc_t (&b)[V]) const {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      acc_t terms[K];
      static_cast<const Derived*>(this)->contrib(ch[k], a[k], b[k], terms);
#pragma unroll
      for (int f = 0; f < K; ++f) acc[k].s[f] += terms[f];
    }
  }
};

}  // namespace nvae_fast
