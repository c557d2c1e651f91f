// Element-wise maps over 4-D activations whose per-element constants depend on (n, c), shared by
// BN+Swish (normalize, dx) and squeeze-excitation (scale, dx).
//
// y[n, c, h, w] = apply(load(n, c), a[n, c, h, w], b[n, c, h, w]) for a, b, y of shape (N, C, H, W) in
// the same layout (NCHW or NHWC). Blocks (blockIdx.y) walk the samples; threads stride over the
// C * H * W elements of a sample in vectors of V elements (16 bytes when the sizes and pointers allow,
// single elements otherwise). The channel of each vector is tracked incrementally (no division in the
// loop): for NCHW a vector lies in one channel (H * W % V == 0), for NHWC it covers V consecutive
// channels (C % V == 0).
//
// A map policy P provides scalar_t, acc_t, kInputs (1 or 2), Chan, `Chan load(int64_t n, int64_t c)`
// and `acc_t apply(const Chan&, acc_t a, acc_t b)` (b equals a when kInputs == 1).
#pragma once

#include <ATen/ATen.h>

#include "checks.h"
#include "launch.h"
#include "vec.cuh"

namespace nvae_fast {

template <class P, Layout L, int V>
__global__ void __launch_bounds__(kThreads)
    channel_map_kernel(P p, const typename P::scalar_t* __restrict__ a, const typename P::scalar_t* __restrict__ b,
                       typename P::scalar_t* __restrict__ y, int64_t N, int64_t C, int64_t HW) {
  using acc_t = typename P::acc_t;
  const int64_t per_sample = C * HW / V;                        // vectors per sample
  const int64_t inner = L == Layout::NCHW ? HW / V : 1;         // vectors that share a channel index
  const int64_t period = L == Layout::NCHW ? C : C / V;         // channel index wraps after this
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if (start >= per_sample) return;
  // Cursor: for vector i, r = i % inner and c = (i / inner) % period.
  const int64_t q0 = start / inner;
  const int64_t r0 = start - q0 * inner, c0 = q0 % period;
  const int64_t qs = step / inner;
  const int64_t dr = step - qs * inner, dc = qs % period;
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    const int64_t base = n * C * HW;
    int64_t r = r0, c = c0;
    for (int64_t i = start; i < per_sample; i += step) {
      const int64_t off = base + i * V;
      acc_t va[V], vb[V], out[V];
      load_vec<V>(a + off, va);
      if constexpr (P::kInputs > 1) {
        load_vec<V>(b + off, vb);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) vb[k] = va[k];
      }
      if constexpr (L == Layout::NCHW) {
        const typename P::Chan ch = p.load(n, c);
#pragma unroll
        for (int k = 0; k < V; ++k) out[k] = p.apply(ch, va[k], vb[k]);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) out[k] = p.apply(p.load(n, c * V + k), va[k], vb[k]);
      }
      store_vec<V>(y + off, out);
      r += dr;
      c += dc;
      if (r >= inner) {
        r -= inner;
        ++c;
      }
      if (c >= period) c -= period;
    }
  }
}

// Runs map policy p: y = f(a, b) for a, b, y of shape (N, C, H, W) (HW = H * W) in `layout`.
template <class P>
void launch_channel_map(const P& p, Layout layout, const at::Tensor& a, const at::Tensor& b, const at::Tensor& y,
                        int64_t N, int64_t C, int64_t HW) {
  using scalar_t = typename P::scalar_t;
  constexpr int VV = kVec<scalar_t>;
  if (N == 0 || C * HW == 0) return;
  const scalar_t* pa = a.data_ptr<scalar_t>();
  const scalar_t* pb = b.data_ptr<scalar_t>();
  scalar_t* py = y.data_ptr<scalar_t>();
  const bool aligned = aligned16(pa) && aligned16(pb) && aligned16(py);
  const bool vec = aligned && (layout == Layout::NCHW ? HW % VV == 0 : C % VV == 0);
  const int64_t vectors = C * HW / (vec ? VV : 1);
  const int64_t blocks_y = std::min(N, kMaxGridYZ);
  const int64_t blocks_x = clamp64(ceil_div(target_blocks(), blocks_y), 1, ceil_div(vectors, kThreads));
  const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(blocks_y));
  const cudaStream_t stream = current_stream();
  if (layout == Layout::NCHW) {
    if (vec) {
      launch<channel_map_kernel<P, Layout::NCHW, VV>>(grid, kThreads, 0, stream, p, pa, pb, py, N, C, HW);
    } else {
      launch<channel_map_kernel<P, Layout::NCHW, 1>>(grid, kThreads, 0, stream, p, pa, pb, py, N, C, HW);
    }
  } else {
    if (vec) {
      launch<channel_map_kernel<P, Layout::NHWC, VV>>(grid, kThreads, 0, stream, p, pa, pb, py, N, C, HW);
    } else {
      launch<channel_map_kernel<P, Layout::NHWC, 1>>(grid, kThreads, 0, stream, p, pa, pb, py, N, C, HW);
    }
  }
}

}  // namespace nvae_fast
