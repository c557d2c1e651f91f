// Depthwise 2-D convolution kernels (torch.ops.nvae_fast.dwconv2d_*), dilation 1.
//
// x: (N, C, H, W), NCHW or NHWC, float16/bfloat16/float32/float64; weight: (C, 1, kh, kw) and bias:
// (C,) in the accumulation dtype (float32, float64 for float64 x); 1 <= kh, kw <= 11; stride 1 or 2
// per axis; any padding >= 0. With Ho = (H + 2 ph - kh) / sh + 1 (likewise Wo):
//
//   forward:          y[n,c,i,j] = bias[c] + sum_{p,q} w[c,p,q] x[n,c, i sh - ph + p, j sw - pw + q]
//   backward_input:   dx[n,c,u,v] = sum over taps (p, q) with (u + ph - p) % sh == 0 and
//                     (v + pw - q) % sw == 0 of w[c,p,q] dy[n,c, (u + ph - p) / sh, (v + pw - q) / sw]
//   backward_weight:  dw[c,p,q] = sum_{n,i,j} dy[n,c,i,j] x[n,c, i sh - ph + p, j sw - pw + q],
//                     db[c] = sum_{n,i,j} dy[n,c,i,j]
// (x and dy read as zero outside their extent). Accumulation in the accumulation dtype.
//
// Each block owns `cb` channels and one spatial tile of the tensor it writes, in `spb` consecutive
// samples (more than one for small images, so that the channels' taps, read once per block, stay a
// small share of its traffic). Per sample it copies the source tile it needs (with the zero halo) into
// shared memory, converted to the accumulation dtype, then every thread computes `rpt` outputs of one
// column from shared memory. Tile copies are coalesced along W (NCHW: each row split at the 16-byte
// boundaries of its addresses into aligned 16-byte vectors and scalar heads and tails) or along the
// channels (NHWC, 16-byte vectors when C and the pointer allow). Square 3x3 and 5x5 kernels at stride 1
// (NVAE's decoder: 5x5) take a register-window kernel instead: each thread keeps the K*K taps in
// registers and computes `rpt` consecutive rows of one column, reading each of the rpt + K - 1 source
// rows it touches once (K loads) for every output row it feeds: at rpt = 4 a 5x5 output costs
// (4 + 4) * 5 / 4 = 10 row loads and 25 / 4 tap loads from shared memory, about 16 instead of the
// general kernel's 50 (two per multiply-add).
// backward_input at stride 1 is the same correlation of dy with the flipped taps and padding K - 1 - p.
// backward_weight reads x and dy once per tile for all taps: a block owns `cb` channels and takes the
// (sample, tile) items s, s + parts, ... of its part s, copies each item's x tile (with the halo) and
// dy tile into shared memory and adds every (channel, tap) product sum into per-thread registers; it
// writes one partial sum per (part, channel, tap) to a workspace, and a second kernel adds the parts
// in a fixed order (deterministic); with one part the block writes dweight and dbias itself.

#include <algorithm>
#include <limits>
#include <type_traits>

#include "checks.h"
#include "launch.h"
#include "ops.h"
#include "vec.cuh"

namespace nvae_fast {
namespace {

constexpr int kMaxKernel = 11;
constexpr int kRowsPerThread = 4;  // the most output rows one thread computes (TileCfg::rpt), every tiling
constexpr size_t kSmemBudget = 48 * 1024;  // bytes of shared memory per block (no opt-in needed)

struct ConvGeom {
  int64_t N, C;
  int src_h, src_w;  // spatial size of the tensor read into tiles
  int dst_h, dst_w;  // spatial size of the tensor the kernel writes (for backward_weight: dy's)
  int kh, kw, sh, sw, ph, pw;
};

// Tiling of a forward or backward_input launch: cb channels, a block of (bx, by) threads per channel,
// each thread computing rpt outputs of one column (rows ty, ty + by, ...), or in the register-window
// kernel rg groups of rpt consecutive rows. Output tile: (by rpt rg) x bx. A block takes that tile in
// spb consecutive samples (it stages its channels' taps once for all).
struct TileCfg {
  int cb, bx, by, rpt, rg, spb;
  int tiles_x;         // output tiles along W
  int tile_h, tile_w;  // source tile in shared memory
  int plane;           // shared-memory elements per channel of the source tile (>= tile_h * tile_w)
  FastDivmod fill_a, fill_b;
};

__device__ __forceinline__ int64_t offset4(Layout layout, int64_t n, int64_t c, int64_t y, int64_t x, int64_t C,
                                           int64_t H, int64_t W) {
  return layout == Layout::NCHW ? ((n * C + c) * H + y) * W + x : ((n * H + y) * W + x) * C + c;
}

// tile[z * plane + r * tile_w + col] = src[n, c0 + z, y0 + r, x0 + col] for z < cb, r < tile_h,
// col < tile_w; zero outside the tensor and for channels >= C.
//
// NCHW (rows contiguous): each tile row is split at the 16-byte boundaries of src's addresses into
// chunks: chunk 0 holds the h0 < V columns before the first boundary, chunk k >= 1 the V columns from
// h0 + (k - 1) V on. A chunk of V columns inside the image is one aligned 16-byte load; the others (the
// head, the tail, the image border, V = 1) are scalar. The fill index is decomposed with
// (fill_a, fill_b) = (row_chunks(tile_w, V), tile_h), chunks fastest, so neighbouring threads load
// neighbouring vectors. Any row offset works: the split follows the actual address, so rows of odd
// widths and misaligned tensors just have more scalar columns.
// NHWC: (fill_a, fill_b) = (cb / V, tile_w), channels fastest, V at a time; V > 1 needs C % V == 0,
// cb % V == 0 and a 16-byte aligned src.
template <typename T, Layout L, int V>
__device__ __forceinline__ void fill_tile(const T* __restrict__ src, AccT<T>* __restrict__ tile, int64_t n,
                                          int64_t C, int H, int W, int64_t c0, int y0, int x0, int cb, int tile_h,
                                          int tile_w, int plane, FastDivmod fa, FastDivmod fb) {
  using acc_t = AccT<T>;
  if constexpr (L == Layout::NCHW) {
    const uint32_t count = static_cast<uint32_t>(cb) * tile_h * fa.d;
    for (uint32_t i = threadIdx.x; i < count; i += blockDim.x) {
      uint32_t q, z, r, k;
      fa.divmod(i, q, k);
      fb.divmod(q, z, r);
      const int y = y0 + static_cast<int>(r);
      const int64_t c = c0 + z;
      const bool row_ok = c < C && y >= 0 && y < H;
      const int64_t row_off = ((n * C + c) * H + y) * W;  // element offset of (n, c, y, 0)
      int s = static_cast<int>(k), e = s + 1;            // the chunk's tile columns [s, e)
      if constexpr (V > 1) {
        const uint64_t first = reinterpret_cast<uintptr_t>(src) / sizeof(T) + static_cast<uint64_t>(row_off + x0);
        const int h0 = static_cast<int>((V - first % V) % V);
        s = k == 0 ? 0 : h0 + (static_cast<int>(k) - 1) * V;
        e = k == 0 ? h0 : s + V;
        if (e > tile_w) e = tile_w;
      }
      acc_t* dst = tile + static_cast<int64_t>(z) * plane + r * tile_w;
      const int x = x0 + s;
      if (V > 1 && row_ok && e - s == V && x >= 0 && x + V <= W) {
        acc_t v[V];
        load_vec<V>(src + row_off + x, v);
#pragma unroll
        for (int j = 0; j < V; ++j) dst[s + j] = v[j];
      } else {
        for (int col = s; col < e; ++col) {
          const int xc = x0 + col;
          dst[col] = row_ok && xc >= 0 && xc < W ? static_cast<acc_t>(src[row_off + xc]) : acc_t(0);
        }
      }
    }
  } else {
    const uint32_t count = static_cast<uint32_t>(cb / V) * tile_h * tile_w;
    for (uint32_t i = threadIdx.x; i < count; i += blockDim.x) {
      uint32_t q, zv, r, col;
      fa.divmod(i, q, zv);
      fb.divmod(q, r, col);
      const uint32_t z = zv * V;
      const int y = y0 + static_cast<int>(r), x = x0 + static_cast<int>(col);
      const int64_t c = c0 + z;
      acc_t v[V];
#pragma unroll
      for (int k = 0; k < V; ++k) v[k] = acc_t(0);
      if (c < C && y >= 0 && y < H && x >= 0 && x < W) load_vec<V>(src + offset4(L, n, c, y, x, C, H, W), v);
      acc_t* dst = tile + static_cast<int64_t>(z) * plane + r * tile_w + col;
#pragma unroll
      for (int k = 0; k < V; ++k) dst[k * plane] = v[k];
    }
  }
}

// Chunks per tile row of an NCHW fill_tile with V-element vectors.
__host__ __device__ __forceinline__ int row_chunks(int tile_w, int V) {
  return V == 1 ? tile_w : (tile_w + V - 1) / V + 1;
}

// Channels' taps w[c0 + z] into wsh[z * kk + tap] (zero for channels >= C).
template <typename acc_t>
__device__ __forceinline__ void fill_taps(const acc_t* __restrict__ w, acc_t* __restrict__ wsh, int64_t c0, int cb,
                                          int kk, int64_t C) {
  for (int i = threadIdx.x; i < cb * kk; i += blockDim.x) wsh[i] = c0 * kk + i < C * kk ? w[c0 * kk + i] : acc_t(0);
}

// Thread -> (channel z, column tx, row ty): columns fastest for NCHW, channels fastest for NHWC, so
// that neighbouring threads write neighbouring addresses.
template <Layout L>
__device__ __forceinline__ void thread_coords(const TileCfg& t, int& z, int& tx, int& ty) {
  const int tid = threadIdx.x;
  if constexpr (L == Layout::NCHW) {
    tx = tid % t.bx;
    ty = (tid / t.bx) % t.by;
    z = tid / (t.bx * t.by);
  } else {
    z = tid % t.cb;
    tx = (tid / t.cb) % t.bx;
    ty = tid / (t.cb * t.bx);
  }
}

// The samples [n, n_end), first channel c0 and output-tile origin (oy0, ox0) of a TileCfg block:
// blockIdx.x = sample group * channel groups + channel group, blockIdx.y = spatial tile.
struct TileBlock {
  int64_t n, n_end, c0;
  int oy0, ox0;
};

__device__ __forceinline__ TileBlock tile_block(const ConvGeom& g, const TileCfg& t) {
  const int64_t groups = ceil_div(g.C, t.cb);
  const int64_t sg = blockIdx.x / groups;
  const int64_t n = sg * t.spb;
  const int tile_row = blockIdx.y / t.tiles_x;
  return TileBlock{n, n + t.spb < g.N ? n + t.spb : g.N, (blockIdx.x - sg * groups) * t.cb,
                   tile_row * t.by * t.rpt * t.rg, static_cast<int>(blockIdx.y - tile_row * t.tiles_x) * t.bx};
}

// Copies the block's source tile of sample n (origin (y0, x0) of src) to tile, then waits for the
// whole block. Before the first sample it also copies the channels' kk taps to tile + cb * plane;
// before the others it first waits until every thread is done with the previous sample's tile.
template <typename T, Layout L, int V>
__device__ __forceinline__ void stage_sample(const T* __restrict__ src, const AccT<T>* __restrict__ w,
                                             AccT<T>* __restrict__ tile, const ConvGeom& g, const TileCfg& t,
                                             const TileBlock& b, int64_t n, int y0, int x0, int kk) {
  if (n == b.n) {
    fill_taps(w, tile + t.cb * t.plane, b.c0, t.cb, kk, g.C);
  } else {
    __syncthreads();
  }
  fill_tile<T, L, V>(src, tile, n, g.C, g.src_h, g.src_w, b.c0, y0, x0, t.cb, t.tile_h, t.tile_w, t.plane,
                     t.fill_a, t.fill_b);
  __syncthreads();
}

template <typename T, Layout L, int V>
__global__ void __launch_bounds__(kThreads)
    dw_forward_kernel(const T* __restrict__ x, const AccT<T>* __restrict__ w, const AccT<T>* __restrict__ bias,
                      T* __restrict__ y, ConvGeom g, TileCfg t) {
  using acc_t = AccT<T>;
  acc_t* tile = dynamic_smem<acc_t>();
  acc_t* wsh = tile + t.cb * t.plane;
  const int kk = g.kh * g.kw;
  const TileBlock blk = tile_block(g, t);
  const int oy0 = blk.oy0, ox0 = blk.ox0;
  int z, tx, ty;
  thread_coords<L>(t, z, tx, ty);
  const int64_t c = blk.c0 + z;
  const int ox = ox0 + tx;
  const bool active = c < g.C && ox < g.dst_w;
  const acc_t b = active && bias != nullptr ? bias[c] : acc_t(0);
  const acc_t* wz = wsh + z * kk;
  const acc_t* src = tile + z * t.plane + tx * g.sw;
  for (int64_t n = blk.n; n < blk.n_end; ++n) {
    stage_sample<T, L, V>(x, w, tile, g, t, blk, n, oy0 * g.sh - g.ph, ox0 * g.sw - g.pw, kk);
    if (!active) continue;
    for (int r = 0; r < t.rpt; ++r) {
      const int oyl = ty + r * t.by;
      const int oy = oy0 + oyl;
      if (oy >= g.dst_h) break;
      acc_t s = b;
      const acc_t* row = src + oyl * g.sh * t.tile_w;
      for (int p = 0; p < g.kh; ++p, row += t.tile_w) {
        const acc_t* wr = wz + p * g.kw;
        for (int q = 0; q < g.kw; ++q) s += wr[q] * row[q];
      }
      y[offset4(L, n, c, oy, ox, g.C, g.dst_h, g.dst_w)] = static_cast<T>(s);
    }
  }
}

// Stride-1 correlation with a square K x K kernel: y = bias + sum_{p,q} w'[c,p,q] src[n,c, i - ph + p, j - pw + q]
// with w' = w (forward) or w' = w flipped in both axes (flip: backward_input, where src = dy and the
// padding is K - 1 - p). Thread (z, tx, ty) computes rows ty*rpt ... ty*rpt + rpt - 1 of column tx of the
// block's output tile (and the same rows of each further group of by * rpt rows); forward sums run over
// (p, q) in the order of dw_forward_kernel.
template <typename T, Layout L, int V, int K>
__global__ void __launch_bounds__(kThreads)
    dw_window_kernel(const T* __restrict__ src, const AccT<T>* __restrict__ w, const AccT<T>* __restrict__ bias,
                     T* __restrict__ dst, ConvGeom g, TileCfg t, bool flip) {
  using acc_t = AccT<T>;
  constexpr int kk = K * K;
  acc_t* tile = dynamic_smem<acc_t>();
  acc_t* wsh = tile + t.cb * t.plane;
  const TileBlock blk = tile_block(g, t);
  const int oy0 = blk.oy0, ox0 = blk.ox0;
  int z, tx, ty;
  thread_coords<L>(t, z, tx, ty);
  const int64_t c = blk.c0 + z;
  const int ox = ox0 + tx;
  const bool active = c < g.C && ox < g.dst_w;
  const acc_t b = active && bias != nullptr ? bias[c] : acc_t(0);
  acc_t wr[kk];
  for (int64_t n = blk.n; n < blk.n_end; ++n) {
    stage_sample<T, L, V>(src, w, tile, g, t, blk, n, oy0 - g.ph, ox0 - g.pw, kk);
    if (!active) continue;
    if (n == blk.n) {
#pragma unroll
      for (int i = 0; i < kk; ++i) wr[i] = wsh[z * kk + (flip ? kk - 1 - i : i)];
    }
    for (int group = 0; group < t.rg; ++group) {
      const int row0 = (group * t.by + ty) * t.rpt;  // first output row of this thread's group in the tile
      if (oy0 + row0 >= g.dst_h) break;
      const acc_t* col = tile + z * t.plane + row0 * t.tile_w + tx;
      acc_t acc[kRowsPerThread];
#pragma unroll
      for (int r = 0; r < kRowsPerThread; ++r) acc[r] = b;
#pragma unroll
      for (int i = 0; i < kRowsPerThread + K - 1; ++i) {  // source row i feeds output rows r = i - p, 0 <= p < K
        if (i < t.rpt + K - 1) {
          acc_t xr[K];
#pragma unroll
          for (int q = 0; q < K; ++q) xr[q] = col[i * t.tile_w + q];
#pragma unroll
          for (int r = 0; r < kRowsPerThread; ++r) {
            if (i - r >= 0 && i - r < K) {
#pragma unroll
              for (int q = 0; q < K; ++q) acc[r] += wr[(i - r) * K + q] * xr[q];
            }
          }
        }
      }
#pragma unroll
      for (int r = 0; r < kRowsPerThread; ++r) {
        const int oy = oy0 + row0 + r;
        if (r < t.rpt && oy < g.dst_h) dst[offset4(L, n, c, oy, ox, g.C, g.dst_h, g.dst_w)] = static_cast<T>(acc[r]);
      }
    }
  }
}

// Gathers, for every dx position, the taps whose output position is integral: with
// p0 = (u + ph) % sh, the taps p0, p0 + sh, ... read dy rows (u + ph - p0) / sh, one less, ...
// The dy tile starts at row floor((u0 + ph - kh + 1) / sh) (likewise for columns).
template <typename T, Layout L, int V>
__global__ void __launch_bounds__(kThreads)
    dw_backward_input_kernel(const T* __restrict__ dy, const AccT<T>* __restrict__ w, T* __restrict__ dx, ConvGeom g,
                             TileCfg t) {
  using acc_t = AccT<T>;
  acc_t* tile = dynamic_smem<acc_t>();
  acc_t* wsh = tile + t.cb * t.plane;
  const int kk = g.kh * g.kw;
  const TileBlock blk = tile_block(g, t);
  const int u0 = blk.oy0, v0 = blk.ox0;
  const int iy0 = floor_div(u0 + g.ph - (g.kh - 1), g.sh);
  const int ix0 = floor_div(v0 + g.pw - (g.kw - 1), g.sw);
  int z, tx, ty;
  thread_coords<L>(t, z, tx, ty);
  const int64_t c = blk.c0 + z;
  const int v = v0 + tx;
  const bool active = c < g.C && v < g.dst_w;
  const acc_t* wz = wsh + z * kk;
  const acc_t* tz = tile + z * t.plane;
  const int q0 = (v + g.pw) % g.sw;
  const int lx0 = (v + g.pw - q0) / g.sw - ix0;
  for (int64_t n = blk.n; n < blk.n_end; ++n) {
    stage_sample<T, L, V>(dy, w, tile, g, t, blk, n, iy0, ix0, kk);
    if (!active) continue;
    for (int r = 0; r < t.rpt; ++r) {
      const int u = u0 + ty + r * t.by;
      if (u >= g.dst_h) break;
      const int p0 = (u + g.ph) % g.sh;
      int ly = (u + g.ph - p0) / g.sh - iy0;
      acc_t s = acc_t(0);
      for (int p = p0; p < g.kh; p += g.sh, --ly) {
        const acc_t* row = tz + ly * t.tile_w;
        const acc_t* wr = wz + p * g.kw;
        int lx = lx0;
        for (int q = q0; q < g.kw; q += g.sw, --lx) s += wr[q] * row[lx];
      }
      dx[offset4(L, n, c, u, v, g.C, g.dst_h, g.dst_w)] = static_cast<T>(s);
    }
  }
}

// backward_weight tiling: cb channels per block, dy tiles of th x tw (x tiles of tile_h x tile_w with
// the halo), thread (group gi, pair j) with j = z * taps + tap (tap == kh * kw stands for the bias)
// summing over the positions gi, gi + groups, ... of every tile. The work items are the (sample, tile)
// pairs, item = n * tiles + tile; block (channel group, part s) takes the items s, s + parts, ... and
// reads each of its x and dy tiles once, for all its taps, accumulating in registers over all its items.
struct WgradCfg {
  int cb, th, tw, tiles_x, tiles;
  int tile_h, tile_w;  // x tile
  int xplane, dplane;  // shared-memory elements per channel of the x and dy tiles
  int groups, parts;
  int64_t items;       // N * tiles
  FastDivmod x_a, x_b, d_a, d_b, pos;  // pos: division by tw
};

template <typename T, Layout L, int V>
__global__ void __launch_bounds__(kThreads)
    dw_backward_weight_kernel(const T* __restrict__ dy, const T* __restrict__ x, AccT<T>* __restrict__ partial,
                              AccT<T>* __restrict__ dw, AccT<T>* __restrict__ db, ConvGeom g, WgradCfg t) {
  using acc_t = AccT<T>;
  acc_t* xt = dynamic_smem<acc_t>();
  acc_t* dt = xt + t.cb * t.xplane;
  acc_t* red = dt + t.cb * t.dplane;
  const int kk = g.kh * g.kw, taps = kk + 1, pairs = t.cb * taps;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * t.cb;
  const int tid = threadIdx.x;
  const bool active = tid < t.groups * pairs;
  const int gi = tid / pairs, j = tid - gi * pairs;
  const int z = j / taps, tap = j - z * taps;
  const int p = tap / g.kw, q = tap - p * g.kw;  // meaningful for tap < kk
  const uint32_t positions = static_cast<uint32_t>(t.th) * t.tw;

  acc_t a = acc_t(0);
  for (int64_t item = blockIdx.y; item < t.items; item += t.parts) {
    const int64_t n = item / t.tiles;
    const int tile = static_cast<int>(item - n * t.tiles);
    const int tile_row = tile / t.tiles_x;
    const int oy0 = tile_row * t.th, ox0 = (tile - tile_row * t.tiles_x) * t.tw;
    fill_tile<T, L, V>(x, xt, n, g.C, g.src_h, g.src_w, c0, oy0 * g.sh - g.ph, ox0 * g.sw - g.pw, t.cb, t.tile_h,
                       t.tile_w, t.xplane, t.x_a, t.x_b);
    fill_tile<T, L, V>(dy, dt, n, g.C, g.dst_h, g.dst_w, c0, oy0, ox0, t.cb, t.th, t.tw, t.dplane, t.d_a, t.d_b);
    __syncthreads();
    if (active) {
      const acc_t* dz = dt + z * t.dplane;
      if (tap == kk) {
        for (uint32_t pos = gi; pos < positions; pos += t.groups) a += dz[pos];
      } else {
        const acc_t* xz = xt + z * t.xplane + p * t.tile_w + q;
        for (uint32_t pos = gi; pos < positions; pos += t.groups) {
          uint32_t oyl, oxl;
          t.pos.divmod(pos, oyl, oxl);
          a += dz[pos] * xz[oyl * g.sh * t.tile_w + oxl * g.sw];
        }
      }
    }
    __syncthreads();
  }
  if (active) red[tid] = a;
  __syncthreads();
  if (tid < pairs) {  // gi == 0, j == tid
    acc_t sum = acc_t(0);
    for (int k = 0; k < t.groups; ++k) sum += red[k * pairs + tid];
    const int64_t c = c0 + z;
    if (c >= g.C) return;
    if (t.parts > 1) {
      partial[(static_cast<int64_t>(blockIdx.y) * g.C + c) * taps + tap] = sum;
    } else if (tap < kk) {  // one part: the block's sums are the result
      dw[c * kk + tap] = sum;
    } else {
      db[c] = sum;
    }
  }
}

// dw[c, tap] (tap < taps - 1) and db[c] (tap == taps - 1): the sum over the `slices` (parts) partial rows
// in order.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    dw_weight_finalize_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ dw, acc_t* __restrict__ db,
                              int64_t slices, int64_t C, int taps) {
  const int64_t total = C * taps;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t sum = acc_t(0);
    for (int64_t s = 0; s < slices; ++s) sum += partial[s * total + idx];
    const int64_t c = idx / taps;
    const int tap = static_cast<int>(idx - c * taps);
    if (tap < taps - 1) {
      dw[c * (taps - 1) + tap] = sum;
    } else {
      db[c] = sum;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Host side.

int64_t conv_out(int64_t in, int64_t k, int64_t s, int64_t p) { return (in + 2 * p - k) / s + 1; }

// Shared memory of a forward/backward_input tiling.
size_t tile_smem(const TileCfg& t, int kk, size_t elem) {
  return static_cast<size_t>(t.cb) * (t.plane + kk) * elem;
}

void set_tile_dims(TileCfg& t, Layout layout, const ConvGeom& g, bool transposed) {
  const int th = t.by * t.rpt * t.rg, tw = t.bx;
  if (transposed) {
    t.tile_h = (th + g.kh - 2) / g.sh + 2;
    t.tile_w = (tw + g.kw - 2) / g.sw + 2;
  } else {
    t.tile_h = (th - 1) * g.sh + g.kh;
    t.tile_w = (tw - 1) * g.sw + g.kw;
  }
  t.plane = t.tile_h * t.tile_w;
  if (layout == Layout::NHWC) t.plane |= 1;  // odd stride: channel-parallel reads hit distinct banks
}

// The register-window kernel is built for T != double (kWindowed<T>) and applies to geometries with
// stride 1 and a square 3x3 or 5x5 kernel (windowed(g)).
template <typename T>
constexpr bool kWindowed = !std::is_same_v<T, double>;

bool windowed(const ConvGeom& g) {
  return g.kh == g.kw && (g.kh == 3 || g.kh == 5) && g.sh == 1 && g.sw == 1;
}

// A block's taps are read from global memory once per block; it takes spb samples so that they stay
// below 1 / kTapShare of the bytes of its source tiles (small images), as long as every SM keeps a block.
constexpr int kTapShare = 8;

// Channels per block of the NHWC register-window kernel: 8 channels of a 36 x 36 float tile (5x5 at
// 32 x 32 outputs) fill 42 KB of shared memory.
constexpr int kWindowChannels = 8;

// The plan of a forward or backward_input launch: kernel, tiling, vector width of the tile copy.
struct TilePlan {
  const char* kernel;  // dw_window_kernel, dw_forward_kernel or dw_backward_input_kernel
  TileCfg t;
  int vec;             // elements per tile-copy access (1: scalar)
  dim3 grid;
  size_t smem;
};

// Chooses the tiling for geometry g (source elements of src_elem bytes, accumulation in elem bytes) and
// the vector width of the tile copy: NCHW rows take kVec-element loads where their addresses allow (see
// fill_tile); NHWC takes them when `nhwc_vec` (C % V == 0 and a 16-byte aligned source) and cb % V == 0.
// The register-window kernel (window) gives each thread kRowsPerThread consecutive rows, so for NCHW
// it spreads fewer threads over the rows.
TilePlan plan_tiles(const char* op, Layout layout, const ConvGeom& g, bool transposed, size_t elem,
                    size_t src_elem, int nhwc_vec, bool window) {
  TileCfg t{};
  const int64_t C = g.C;
  const int kvec = static_cast<int>(16 / src_elem);
  t.rg = 1;
  if (layout == Layout::NCHW && window) {
    t.bx = std::min(32, pow2_ceil(g.dst_w));
    t.by = std::min(pow2_ceil(ceil_div(g.dst_h, kRowsPerThread)), kThreads / t.bx);
    t.cb = static_cast<int>(std::min<int64_t>(C, kThreads / (t.bx * t.by)));
    t.rpt = static_cast<int>(std::min<int64_t>(kRowsPerThread, ceil_div(g.dst_h, t.by)));
  } else if (window) {  // NHWC: kWindowChannels channels by up to 32 x 32 outputs, the halo a small share
    t.cb = static_cast<int>(std::min<int64_t>(C, kWindowChannels));
    if (nhwc_vec > 1 && t.cb >= nhwc_vec) t.cb -= t.cb % nhwc_vec;
    t.bx = std::min(32, pow2_ceil(g.dst_w));
    t.by = std::max(1, std::min(pow2_ceil(ceil_div(g.dst_h, kRowsPerThread)), kThreads / (t.cb * t.bx)));
    t.rpt = static_cast<int>(std::min<int64_t>(kRowsPerThread, ceil_div(g.dst_h, t.by)));
    t.rg = static_cast<int>(std::min<int64_t>(32 / (t.by * t.rpt) > 0 ? 32 / (t.by * t.rpt) : 1,
                                              ceil_div(g.dst_h, t.by * t.rpt)));
  } else if (layout == Layout::NCHW) {
    t.bx = std::min(32, pow2_ceil(g.dst_w));
    t.by = std::min(pow2_ceil(g.dst_h), kThreads / t.bx);
    t.cb = static_cast<int>(std::min<int64_t>(C, kThreads / (t.bx * t.by)));
    t.rpt = (t.bx * t.by == kThreads && g.dst_h > t.by) ? static_cast<int>(std::min<int64_t>(kRowsPerThread, ceil_div(g.dst_h, t.by))) : 1;
  } else {
    t.cb = static_cast<int>(std::min<int64_t>(C, 16));
    if (nhwc_vec > 1 && t.cb >= nhwc_vec) t.cb -= t.cb % nhwc_vec;
    t.bx = std::min(8, pow2_ceil(g.dst_w));
    t.by = std::max(1, std::min(pow2_ceil(g.dst_h), kThreads / t.cb / t.bx));
    t.rpt = g.dst_h > t.by ? static_cast<int>(std::min<int64_t>(kRowsPerThread, ceil_div(g.dst_h, t.by))) : 1;
  }
  const int kk = g.kh * g.kw;
  set_tile_dims(t, layout, g, transposed);
  while (tile_smem(t, kk, elem) > kSmemBudget) {
    if (t.rg > 1) {
      --t.rg;
    } else if (t.rpt > 1) {
      --t.rpt;
    } else if (t.cb > 1) {
      t.cb = (t.cb + 1) / 2;
    } else if (t.by > 1) {
      t.by /= 2;
    } else if (t.bx > 1) {
      t.bx /= 2;
    } else {
      break;
    }
    set_tile_dims(t, layout, g, transposed);
  }
  TORCH_INTERNAL_ASSERT(tile_smem(t, kk, elem) <= kSmemBudget);
  const int vec = layout == Layout::NCHW ? kvec : (t.cb % nhwc_vec == 0 ? nhwc_vec : 1);
  t.tiles_x = static_cast<int>(ceil_div(g.dst_w, t.bx));
  if (layout == Layout::NCHW) {
    t.fill_a = FastDivmod(row_chunks(t.tile_w, vec));
    t.fill_b = FastDivmod(t.tile_h);
  } else {
    t.fill_a = FastDivmod(t.cb / vec);
    t.fill_b = FastDivmod(t.tile_w);
  }
  const int64_t groups = ceil_div(C, t.cb);
  const int64_t tiles = t.tiles_x * ceil_div(g.dst_h, t.by * t.rpt * t.rg);
  const int64_t tile_bytes = static_cast<int64_t>(t.tile_h) * t.tile_w * static_cast<int64_t>(src_elem);
  const int64_t want = ceil_div(static_cast<int64_t>(kTapShare) * kk * static_cast<int64_t>(elem), tile_bytes);
  const int64_t keep_sms = std::max<int64_t>(1, g.N * groups * tiles / multiprocessors());
  t.spb = static_cast<int>(clamp64(std::min(want, keep_sms), 1, g.N));
  const int64_t blocks_x = ceil_div(g.N, t.spb) * groups;
  TORCH_CHECK(blocks_x <= std::numeric_limits<int32_t>::max() && tiles <= kMaxGridYZ, op,
              ": the tensor is too large for the CUDA kernels (", blocks_x, " x ", tiles, " blocks)");
  const char* kernel = window ? "dw_window_kernel" : transposed ? "dw_backward_input_kernel" : "dw_forward_kernel";
  return TilePlan{kernel, t, vec, dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(tiles)),
                  tile_smem(t, kk, elem)};
}

// backward_input at stride 1 as a stride-1 correlation of dy with the flipped taps, padding K - 1 - p.
ConvGeom flipped(const ConvGeom& g) {
  return ConvGeom{g.N, g.C, g.src_h, g.src_w, g.dst_h, g.dst_w, g.kh, g.kw, 1, 1, g.kh - 1 - g.ph, g.kw - 1 - g.pw};
}

// The plan of the forward (transposed: backward_input) pass of geometry g for element type T: the
// register-window kernel where it applies (backward_input: on the geometry flipped to a stride-1
// correlation with padding K - 1 - p), else the general one. nhwc_vec: whether an NHWC source
// allows 16-byte channel vectors.
template <typename T>
TilePlan plan_pass(const char* op, Layout layout, const ConvGeom& g, bool transposed, bool nhwc_aligned) {
  using acc_t = AccT<T>;
  const int nhwc_vec = layout == Layout::NHWC && nhwc_aligned && g.C % kVec<T> == 0 ? kVec<T> : 1;
  if (kWindowed<T> && windowed(g)) {
    const ConvGeom wg = transposed ? flipped(g) : g;
    return plan_tiles(op, layout, wg, /*transposed=*/false, sizeof(acc_t), sizeof(T), nhwc_vec, /*window=*/true);
  }
  return plan_tiles(op, layout, g, transposed, sizeof(acc_t), sizeof(T), nhwc_vec, /*window=*/false);
}

// Launches the kernel of plan pp: dst = src (x for forward, dy for backward_input) convolved with the
// taps w (+ bias), geometry g (for the window kernel of backward_input: flipped(g)).
template <typename T>
void launch_pass(const TilePlan& pp, Layout layout, const ConvGeom& g, const T* src, const AccT<T>* w,
                 const AccT<T>* bias, T* dst, bool transposed, cudaStream_t stream) {
  const TileCfg& t = pp.t;
  const int threads = t.cb * t.bx * t.by;
  constexpr int VN = kVec<T>;
  if constexpr (kWindowed<T>) {
    if (windowed(g)) {
      const ConvGeom wg = transposed ? flipped(g) : g;
      auto run = [&](auto size) {
        constexpr int K = decltype(size)::value;
        if (layout == Layout::NCHW) {
          launch<dw_window_kernel<T, Layout::NCHW, VN, K>>(pp.grid, threads, pp.smem, stream, src, w, bias, dst, wg,
                                                           t, transposed);
        } else if (pp.vec > 1) {
          launch<dw_window_kernel<T, Layout::NHWC, VN, K>>(pp.grid, threads, pp.smem, stream, src, w, bias, dst, wg,
                                                           t, transposed);
        } else {
          launch<dw_window_kernel<T, Layout::NHWC, 1, K>>(pp.grid, threads, pp.smem, stream, src, w, bias, dst, wg,
                                                          t, transposed);
        }
      };
      if (g.kh == 3) {
        run(std::integral_constant<int, 3>{});
      } else {
        run(std::integral_constant<int, 5>{});
      }
      return;
    }
  }
  if (transposed) {
    if (layout == Layout::NCHW) {
      launch<dw_backward_input_kernel<T, Layout::NCHW, VN>>(pp.grid, threads, pp.smem, stream, src, w, dst, g, t);
    } else if (pp.vec > 1) {
      launch<dw_backward_input_kernel<T, Layout::NHWC, VN>>(pp.grid, threads, pp.smem, stream, src, w, dst, g, t);
    } else {
      launch<dw_backward_input_kernel<T, Layout::NHWC, 1>>(pp.grid, threads, pp.smem, stream, src, w, dst, g, t);
    }
  } else {
    if (layout == Layout::NCHW) {
      launch<dw_forward_kernel<T, Layout::NCHW, VN>>(pp.grid, threads, pp.smem, stream, src, w, bias, dst, g, t);
    } else if (pp.vec > 1) {
      launch<dw_forward_kernel<T, Layout::NHWC, VN>>(pp.grid, threads, pp.smem, stream, src, w, bias, dst, g, t);
    } else {
      launch<dw_forward_kernel<T, Layout::NHWC, 1>>(pp.grid, threads, pp.smem, stream, src, w, bias, dst, g, t);
    }
  }
}

// The plan of a backward_weight launch (taps = kh kw + 1 pairs per channel, the bias included).
struct WgradPlan {
  WgradCfg t;
  int vec;
  dim3 grid;
  size_t smem;
};

// Shared memory of a backward_weight tiling: the x and dy tiles of cb channels and the block's
// per-thread sums.
size_t wgrad_smem(const WgradCfg& c, const ConvGeom& g, size_t elem) {
  const int pairs = c.cb * (g.kh * g.kw + 1);
  const int tile_h = (c.th - 1) * g.sh + g.kh, tile_w = (c.tw - 1) * g.sw + g.kw;
  return static_cast<size_t>(c.cb) * (((tile_h * tile_w) | 1) + ((c.th * c.tw) | 1)) * elem +
         static_cast<size_t>(kThreads / pairs) * pairs * elem;
}

// Tiles of up to kWgradTile x kWgradTile dy positions (the x tile adds a (k - 1)-wide halo, read again
// by the neighbouring tile: about 13% more x at 5x5), as many channels as the pairs and shared memory
// allow (at least V for NHWC vectors), then smaller tiles; the parts split the (sample, tile) items so
// that the grid fills the device.
constexpr int kWgradTile = 64;
constexpr int kPartShare = 8;

template <typename T>
WgradPlan plan_wgrad(const char* op, Layout layout, const ConvGeom& g, bool nhwc_aligned) {
  using acc_t = AccT<T>;
  constexpr int VV = kVec<T>;
  const int taps = g.kh * g.kw + 1;
  WgradCfg t{};
  t.cb = std::max(1, static_cast<int>(std::min<int64_t>({g.C, 32, kThreads / taps})));
  const bool can_vec = layout == Layout::NHWC && g.C % VV == 0 && nhwc_aligned;
  if (can_vec && t.cb >= VV) t.cb -= t.cb % VV;
  const int min_cb = can_vec && t.cb >= VV ? VV : 1;
  t.th = std::min(kWgradTile, g.dst_h);
  t.tw = std::min(kWgradTile, g.dst_w);
  while (wgrad_smem(t, g, sizeof(acc_t)) > kSmemBudget) {
    if (t.cb > min_cb) {
      t.cb = std::max(min_cb, (t.cb + 1) / 2);
      if (min_cb > 1) t.cb -= t.cb % min_cb;
    } else if (t.th > 1 && t.th >= t.tw) {
      t.th = (t.th + 1) / 2;
    } else if (t.tw > 1) {
      t.tw = (t.tw + 1) / 2;
    } else if (t.cb > 1) {
      t.cb = (t.cb + 1) / 2;
    } else {
      break;
    }
  }
  TORCH_INTERNAL_ASSERT(wgrad_smem(t, g, sizeof(acc_t)) <= kSmemBudget);
  const int vec = layout == Layout::NCHW ? VV : (can_vec && t.cb % VV == 0 ? VV : 1);
  const int pairs = t.cb * taps;
  t.groups = kThreads / pairs;
  t.tile_h = (t.th - 1) * g.sh + g.kh;
  t.tile_w = (t.tw - 1) * g.sw + g.kw;
  t.xplane = (t.tile_h * t.tile_w) | 1;
  t.dplane = (t.th * t.tw) | 1;
  t.tiles_x = static_cast<int>(ceil_div(g.dst_w, t.tw));
  t.tiles = t.tiles_x * static_cast<int>(ceil_div(g.dst_h, t.th));
  t.items = g.N * t.tiles;
  const int64_t blocks_x = ceil_div(g.C, t.cb);
  TORCH_CHECK(blocks_x <= std::numeric_limits<int32_t>::max(), op, ": the tensor is too large for the CUDA kernels");
  // Each part writes (and the finalize kernel reads) taps sums per channel: at most 1 / kPartShare of
  // the x and dy bytes its items read, so that small images do not pay for the split in traffic.
  const int64_t item_bytes = static_cast<int64_t>(t.tile_h * t.tile_w + t.th * t.tw) * sizeof(T);
  const int64_t part_bytes = static_cast<int64_t>(kPartShare) * 2 * taps * sizeof(acc_t);
  const int64_t max_parts = std::max<int64_t>(1, t.items * item_bytes / part_bytes);
  t.parts = static_cast<int>(
      clamp64(std::min(ceil_div(target_blocks(), blocks_x), max_parts), 1, std::min<int64_t>(t.items, kMaxGridYZ)));
  if (layout == Layout::NCHW) {
    t.x_a = FastDivmod(row_chunks(t.tile_w, vec));
    t.x_b = FastDivmod(t.tile_h);
    t.d_a = FastDivmod(row_chunks(t.tw, vec));
    t.d_b = FastDivmod(t.th);
  } else {
    t.x_a = FastDivmod(t.cb / vec);
    t.x_b = FastDivmod(t.tile_w);
    t.d_a = FastDivmod(t.cb / vec);
    t.d_b = FastDivmod(t.tw);
  }
  t.pos = FastDivmod(t.tw);
  return WgradPlan{t, vec, dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(t.parts)),
                   wgrad_smem(t, g, sizeof(acc_t))};
}

struct Conf {
  int sh, sw, ph, pw;
};

Conf check_conf(const char* op, at::IntArrayRef stride, at::IntArrayRef padding) {
  TORCH_CHECK(stride.size() == 2, op, ": stride must have 2 values, got ", stride);
  TORCH_CHECK(padding.size() == 2, op, ": padding must have 2 values, got ", padding);
  for (const int64_t s : stride) {
    TORCH_CHECK(s == 1 || s == 2, op, ": stride must be 1 or 2 along each axis, got ", stride);
  }
  for (const int64_t p : padding) {
    TORCH_CHECK(p >= 0 && p <= 1024, op, ": padding must be in [0, 1024], got ", padding);
  }
  return Conf{static_cast<int>(stride[0]), static_cast<int>(stride[1]), static_cast<int>(padding[0]),
              static_cast<int>(padding[1])};
}

void check_kernel_hw(const char* op, const char* name, int64_t kh, int64_t kw) {
  TORCH_CHECK(kh >= 1 && kh <= kMaxKernel && kw >= 1 && kw <= kMaxKernel, op, ": ", name,
              " must have kernel sizes in [1, ", kMaxKernel, "], got ", kh, " x ", kw);
}

void check_spatial(const char* op, const char* name, int64_t h, int64_t w) {
  TORCH_CHECK(h <= std::numeric_limits<int32_t>::max() / 4 && w <= std::numeric_limits<int32_t>::max() / 4, op,
              ": ", name, " has a spatial size too large for the CUDA kernels: ", h, " x ", w);
}

// weight: (C, 1, kh, kw), contiguous, accumulation dtype of `ref`.
void check_weight(const char* op, const at::Tensor& weight, const at::Tensor& ref, const char* ref_name) {
  check_float(op, "weight", weight);
  check_dim(op, "weight", weight, 4, "(C, 1, kh, kw)");
  TORCH_CHECK(weight.size(0) == ref.size(1) && weight.size(1) == 1, op, ": weight must have shape (C, 1, kh, kw) with C=",
              ref.size(1), " (the channels of ", ref_name, "), got ", weight.sizes());
  check_dtype(op, "weight", weight, acc_dtype(ref.scalar_type()), "the accumulation dtype of the activations");
  TORCH_CHECK(weight.is_contiguous(), op, ": weight must be contiguous");
  check_kernel_hw(op, "weight", weight.size(2), weight.size(3));
}

void check_act(const char* op, const char* name, const at::Tensor& t) {
  check_float(op, name, t);
  check_dim(op, name, t, 4, "(N, C, H, W)");
  check_spatial(op, name, t.size(2), t.size(3));
}

}  // namespace

at::Tensor dwconv2d_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding) {
  constexpr const char* op = "nvae_fast::dwconv2d_forward";
  check_act(op, "x", x);
  const Layout layout = layout_of(op, "x", x);
  check_weight(op, weight, x, "x");
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) check_vector(op, "bias", *bias, x.size(1), acc_dtype(x.scalar_type()), "one per channel of x");
  const Conf cf = check_conf(op, stride, padding);
  const int64_t kh = weight.size(2), kw = weight.size(3);
  const int64_t ho = conv_out(x.size(2), kh, cf.sh, cf.ph), wo = conv_out(x.size(3), kw, cf.sw, cf.pw);
  TORCH_CHECK(x.size(2) + 2 * cf.ph >= kh && x.size(3) + 2 * cf.pw >= kw && ho >= 1 && wo >= 1, op,
              ": x's padded spatial size (", x.size(2) + 2 * cf.ph, ", ", x.size(3) + 2 * cf.pw,
              ") is smaller than the kernel (", kh, ", ", kw, ")");
  if (has_bias) {
    check_device(op, {{"x", &x}, {"weight", &weight}, {"bias", &*bias}});
  } else {
    check_device(op, {{"x", &x}, {"weight", &weight}});
  }
  const DeviceGuard guard(x.device());
  at::Tensor y = at::empty({x.size(0), x.size(1), ho, wo}, x.options().memory_format(memory_format(layout)));
  if (y.numel() == 0) return y;
  const ConvGeom g{x.size(0), x.size(1), static_cast<int>(x.size(2)), static_cast<int>(x.size(3)),
                   static_cast<int>(ho), static_cast<int>(wo), static_cast<int>(kh), static_cast<int>(kw),
                   cf.sh, cf.sw, cf.ph, cf.pw};
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dwconv2d_forward", [&] {
    using acc_t = AccT<scalar_t>;
    const TilePlan pp = plan_pass<scalar_t>(op, layout, g, /*transposed=*/false, aligned16(x.data_ptr()));
    launch_pass<scalar_t>(pp, layout, g, x.data_ptr<scalar_t>(), weight.data_ptr<acc_t>(),
                          has_bias ? bias->data_ptr<acc_t>() : nullptr, y.data_ptr<scalar_t>(), /*transposed=*/false,
                          stream);
  });
  return y;
}

at::Tensor dwconv2d_backward_input(const at::Tensor& dy, const at::Tensor& weight, at::IntArrayRef input_hw,
                                   at::IntArrayRef stride, at::IntArrayRef padding) {
  constexpr const char* op = "nvae_fast::dwconv2d_backward_input";
  check_act(op, "dy", dy);
  const Layout layout = layout_of(op, "dy", dy);
  check_weight(op, weight, dy, "dy");
  const Conf cf = check_conf(op, stride, padding);
  TORCH_CHECK(input_hw.size() == 2 && input_hw[0] >= 1 && input_hw[1] >= 1, op,
              ": input_hw must be two positive sizes (H, W), got ", input_hw);
  check_spatial(op, "input_hw", input_hw[0], input_hw[1]);
  const int64_t kh = weight.size(2), kw = weight.size(3);
  const int64_t h = input_hw[0], w = input_hw[1];
  TORCH_CHECK(h + 2 * cf.ph >= kh && w + 2 * cf.pw >= kw && conv_out(h, kh, cf.sh, cf.ph) == dy.size(2) &&
                  conv_out(w, kw, cf.sw, cf.pw) == dy.size(3),
              op, ": dy of spatial size (", dy.size(2), ", ", dy.size(3), ") is not the output of input_hw ", input_hw,
              " with kernel (", kh, ", ", kw, "), stride ", stride, " and padding ", padding);
  check_device(op, {{"dy", &dy}, {"weight", &weight}});
  const DeviceGuard guard(dy.device());
  at::Tensor dx = at::empty({dy.size(0), dy.size(1), h, w}, dy.options().memory_format(memory_format(layout)));
  if (dx.numel() == 0) return dx;
  const ConvGeom g{dy.size(0), dy.size(1), static_cast<int>(dy.size(2)), static_cast<int>(dy.size(3)),
                   static_cast<int>(h), static_cast<int>(w), static_cast<int>(kh), static_cast<int>(kw),
                   cf.sh, cf.sw, cf.ph, cf.pw};
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "dwconv2d_backward_input", [&] {
    using acc_t = AccT<scalar_t>;
    const TilePlan pp = plan_pass<scalar_t>(op, layout, g, /*transposed=*/true, aligned16(dy.data_ptr()));
    launch_pass<scalar_t>(pp, layout, g, dy.data_ptr<scalar_t>(), weight.data_ptr<acc_t>(), nullptr,
                          dx.data_ptr<scalar_t>(), /*transposed=*/true, stream);
  });
  return dx;
}

std::tuple<at::Tensor, at::Tensor> dwconv2d_backward_weight(const at::Tensor& dy, const at::Tensor& x,
                                                            at::IntArrayRef kernel_hw, at::IntArrayRef stride,
                                                            at::IntArrayRef padding) {
  constexpr const char* op = "nvae_fast::dwconv2d_backward_weight";
  check_act(op, "x", x);
  const Layout layout = layout_of(op, "x", x);
  check_act(op, "dy", dy);
  check_dtype(op, "dy", dy, x.scalar_type(), "the dtype of x");
  check_layout(op, "dy", dy, layout, "x");
  const Conf cf = check_conf(op, stride, padding);
  TORCH_CHECK(kernel_hw.size() == 2, op, ": kernel_hw must have 2 values, got ", kernel_hw);
  check_kernel_hw(op, "kernel_hw", kernel_hw[0], kernel_hw[1]);
  const int64_t kh = kernel_hw[0], kw = kernel_hw[1];
  TORCH_CHECK(dy.size(0) == x.size(0) && dy.size(1) == x.size(1) && x.size(2) + 2 * cf.ph >= kh &&
                  x.size(3) + 2 * cf.pw >= kw && conv_out(x.size(2), kh, cf.sh, cf.ph) == dy.size(2) &&
                  conv_out(x.size(3), kw, cf.sw, cf.pw) == dy.size(3),
              op, ": dy of shape ", dy.sizes(), " is not the output of x of shape ", x.sizes(), " with kernel (", kh,
              ", ", kw, "), stride ", stride, " and padding ", padding);
  check_device(op, {{"x", &x}, {"dy", &dy}});
  const DeviceGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1);
  const auto acc_opts = x.options().dtype(acc_dtype(x.scalar_type()));
  at::Tensor dw = at::empty({C, 1, kh, kw}, acc_opts);
  at::Tensor db = at::empty({C}, acc_opts);
  if (C == 0) return {dw, db};
  if (N == 0) return {dw.zero_(), db.zero_()};
  const ConvGeom g{N, C, static_cast<int>(x.size(2)), static_cast<int>(x.size(3)), static_cast<int>(dy.size(2)),
                   static_cast<int>(dy.size(3)), static_cast<int>(kh), static_cast<int>(kw), cf.sh, cf.sw, cf.ph, cf.pw};
  const int taps = g.kh * g.kw + 1;
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dwconv2d_backward_weight", [&] {
    using acc_t = AccT<scalar_t>;
    constexpr int VV = kVec<scalar_t>;
    const WgradPlan wp = plan_wgrad<scalar_t>(op, layout, g, aligned16(x.data_ptr()) && aligned16(dy.data_ptr()));
    const WgradCfg& t = wp.t;
    at::Tensor partial = t.parts > 1 ? at::empty({t.parts * C * taps}, acc_opts) : at::Tensor();
    const scalar_t* pdy = dy.data_ptr<scalar_t>();
    const scalar_t* px = x.data_ptr<scalar_t>();
    acc_t* pp = t.parts > 1 ? partial.data_ptr<acc_t>() : nullptr;
    acc_t* pdw = dw.data_ptr<acc_t>();
    acc_t* pdb = db.data_ptr<acc_t>();
    if (layout == Layout::NCHW) {
      launch<dw_backward_weight_kernel<scalar_t, Layout::NCHW, VV>>(wp.grid, kThreads, wp.smem, stream, pdy, px, pp,
                                                                    pdw, pdb, g, t);
    } else if (wp.vec > 1) {
      launch<dw_backward_weight_kernel<scalar_t, Layout::NHWC, VV>>(wp.grid, kThreads, wp.smem, stream, pdy, px, pp,
                                                                    pdw, pdb, g, t);
    } else {
      launch<dw_backward_weight_kernel<scalar_t, Layout::NHWC, 1>>(wp.grid, kThreads, wp.smem, stream, pdy, px, pp,
                                                                   pdw, pdb, g, t);
    }
    if (t.parts == 1) return;
    const int64_t blocks = std::min<int64_t>(ceil_div(C * taps, kThreads), target_blocks());
    launch<dw_weight_finalize_kernel<acc_t>>(static_cast<unsigned>(blocks), kThreads, 0, stream, pp,
                                             dw.data_ptr<acc_t>(), db.data_ptr<acc_t>(), static_cast<int64_t>(t.parts),
                                             C, taps);
  });
  return {dw, db};
}

}  // namespace nvae_fast
