// Batched power iteration over many matrices of different shapes. Two families of ops:
// - power_iteration_update / power_iteration_sigmas (torch.ops.nvae_fast.*): the unplanned kernels on
//   (R, K) matrices, one launch per half-step, described here;
// - power_iteration_forward / power_iteration_backward_packed / power_iteration_plan: the op's path, on
//   the weights as given, with cached launch tables and every step in one launch (section "Planned
//   forward"); power_iteration_backward (bindings.cpp) is the packed gradient unpacked into views.
//
// mats[i]: (R_i, K_i), contiguous, one float dtype for all; us[i]: (R_i,), vs[i]: (K_i,), any float dtype.
// Accumulation dtype: float64 for float64 mats, float32 otherwise. update runs n_iter steps of
//
//     v_i <- normalize(W_i^T u_i),   u_i <- normalize(W_i v_i),   normalize(a) = a / max(||a||_2, 1e-12)
//
// for every i at once and writes u_i, v_i back in place; sigmas returns sigma_i = u_i^T W_i v_i, (n,).
//
// Ragged layout: the u_i (and v_i) are packed into one accumulation-dtype vector, u_i at offset
// u_off_i; a table (int64, on the device) holds per matrix its data pointer, R, K, the offsets of its u,
// v and partial sums, its tile counts and whether 16-byte loads are possible, followed by the list of
// (matrix, row tile, column tile) of kRows x kCols tiles. One launch processes every tile of every
// matrix: W^T u tiles write column sums of their rows (partials (row tiles, K) per matrix), W v tiles
// write row sums of their columns (partials (column tiles, R)). A second launch, one block per matrix,
// adds the partials in order, takes the norm and normalizes. No atomics: deterministic.

#include <algorithm>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "checks.h"
#include "launch.h"
#include "ops.h"
#include "reduce.cuh"
#include "vec.cuh"

namespace nvae_fast {
namespace {

constexpr int kRows = 64;    // rows of a tile
constexpr int kCols = 256;   // columns of a tile (a multiple of 32 * every vector width)
constexpr double kEps = 1e-12;

// Fields of a matrix entry in the table.
enum Field : int { kPtr, kR, kK, kUOff, kVOff, kPaOff, kPbOff, kRowTiles, kColTiles, kVecOk, kFields };

// out[k] = sum_{r0 <= r < r1} W[r, k] u[r] for the kCols columns from k0 (those < K).
// Threads: kCols / V column lanes (V columns each) x kThreads * V / kCols row lanes.
template <int V, typename T, typename acc_t>
__device__ __forceinline__ void tile_wtu(const T* __restrict__ W, int64_t K, int64_t r0, int64_t r1, int64_t k0,
                                         const acc_t* __restrict__ u, acc_t* __restrict__ out, acc_t* sh) {
  constexpr int kColLanes = kCols / V;
  constexpr int kRowLanes = kThreads / kColLanes;
  const int cl = threadIdx.x % kColLanes, rl = threadIdx.x / kColLanes;
  const int64_t k = k0 + cl * V;
  acc_t a[V];
#pragma unroll
  for (int j = 0; j < V; ++j) a[j] = acc_t(0);
  if (k < K) {
    for (int64_t r = r0 + rl; r < r1; r += kRowLanes) {
      acc_t w[V];
      load_vec<V>(W + r * K + k, w);
      const acc_t ur = load_cg(u + r);
#pragma unroll
      for (int j = 0; j < V; ++j) a[j] += w[j] * ur;
    }
  }
  if constexpr (kRowLanes > 1) {
#pragma unroll
    for (int j = 0; j < V; ++j) sh[threadIdx.x * V + j] = a[j];
    __syncthreads();
    for (int half = kRowLanes / 2; half > 0; half >>= 1) {
      if (rl < half) {
#pragma unroll
        for (int j = 0; j < V; ++j) sh[threadIdx.x * V + j] += sh[(threadIdx.x + half * kColLanes) * V + j];
      }
      __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < V; ++j) a[j] = sh[cl * V + j];
  }
  if (rl == 0 && k < K) {
#pragma unroll
    for (int j = 0; j < V; ++j) out[k + j] = a[j];
  }
}

// out[r] = sum_{k0 <= k < k0 + kCols, k < K} W[r, k] v[k] for r0 <= r < r1: one warp per row. Each lane
// holds its columns' v in registers for all its rows.
template <int V, typename T, typename acc_t>
__device__ __forceinline__ void tile_wv(const T* __restrict__ W, int64_t K, int64_t r0, int64_t r1, int64_t k0,
                                        const acc_t* __restrict__ v, acc_t* __restrict__ out) {
  constexpr int kPerLane = kCols / (32 * V);  // vectors of a lane: columns k0 + (lane + 32 m) V ..
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  acc_t vr[kPerLane][V];
#pragma unroll
  for (int m = 0; m < kPerLane; ++m) {
    const int64_t k = k0 + (lane + 32 * m) * V;
#pragma unroll
    for (int j = 0; j < V; ++j) vr[m][j] = k < K ? load_cg(v + k + j) : acc_t(0);
  }
  for (int64_t r = r0 + warp; r < r1; r += kThreads / 32) {
    SumAcc<acc_t, 1> s{{acc_t(0)}};
#pragma unroll
    for (int m = 0; m < kPerLane; ++m) {
      const int64_t k = k0 + (lane + 32 * m) * V;
      if (k < K) {
        acc_t w[V];
        load_vec<V>(W + r * K + k, w);
#pragma unroll
        for (int j = 0; j < V; ++j) s.s[0] += w[j] * vr[m][j];
      }
    }
    s = warp_reduce(s);
    if (lane == 0) out[r] = s.s[0];
  }
}

// One block per tile of the table. transpose: partials of W^T u (src = packed u, part = row-tile
// partials); otherwise partials of W v (src = packed v, part = column-tile partials).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    pi_tiles_kernel(const int64_t* __restrict__ table, int64_t n_mats, const AccT<T>* __restrict__ src,
                    AccT<T>* __restrict__ part, bool transpose) {
  using acc_t = AccT<T>;
  constexpr int VV = kVec<T>;
  __shared__ acc_t sh[kThreads * VV];
  const int64_t* tile = table + n_mats * kFields + static_cast<int64_t>(blockIdx.x) * 3;
  const int64_t* e = table + tile[0] * kFields;
  const int64_t rt = tile[1], ct = tile[2];
  const T* W = reinterpret_cast<const T*>(e[kPtr]);
  const int64_t R = e[kR], K = e[kK];
  const int64_t r0 = rt * kRows, r1 = min(R, r0 + kRows), k0 = ct * kCols;
  const bool vec = e[kVecOk] != 0;
  if (transpose) {
    const acc_t* u = src + e[kUOff];
    acc_t* out = part + e[kPaOff] + rt * K;
    if (vec) {
      tile_wtu<VV>(W, K, r0, r1, k0, u, out, sh);
    } else {
      tile_wtu<1>(W, K, r0, r1, k0, u, out, sh);
    }
  } else {
    const acc_t* v = src + e[kVOff];
    acc_t* out = part + e[kPbOff] + ct * R;
    if (vec) {
      tile_wv<VV>(W, K, r0, r1, k0, v, out);
    } else {
      tile_wv<1>(W, K, r0, r1, k0, v, out);
    }
  }
}

__device__ __forceinline__ float root(float a) { return sqrtf(a); }
__device__ __forceinline__ double root(double a) { return ::sqrt(a); }

// One block per matrix: a = sum of its partials (in tile order), vec = a / max(||a||, eps).
// columns: the K-vector v from the W^T u partials; otherwise the R-vector u from the W v partials.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    pi_normalize_kernel(const int64_t* __restrict__ table, const acc_t* __restrict__ part, acc_t* __restrict__ vecs,
                        bool columns, acc_t eps) {
  __shared__ acc_t sh[33];
  const int64_t* e = table + static_cast<int64_t>(blockIdx.x) * kFields;
  const int64_t len = columns ? e[kK] : e[kR];
  const int64_t parts = columns ? e[kRowTiles] : e[kColTiles];
  const acc_t* p = part + (columns ? e[kPaOff] : e[kPbOff]);
  acc_t* out = vecs + (columns ? e[kVOff] : e[kUOff]);
  acc_t sq = acc_t(0);
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
    acc_t s = acc_t(0);
    for (int64_t q = 0; q < parts; ++q) s += p[q * len + j];
    out[j] = s;
    sq += s * s;
  }
  const acc_t norm = root(block_sum(sq, sh));
  const acc_t denom = norm > eps ? norm : eps;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) out[j] = out[j] / denom;
}

// One block per matrix: sigma = sum_r u[r] (W v)[r], W v from the column-tile partials.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    pi_sigma_kernel(const int64_t* __restrict__ table, const acc_t* __restrict__ part, const acc_t* __restrict__ us,
                    acc_t* __restrict__ sigma) {
  __shared__ acc_t sh[33];
  const int64_t* e = table + static_cast<int64_t>(blockIdx.x) * kFields;
  const int64_t R = e[kR], parts = e[kColTiles];
  const acc_t* p = part + e[kPbOff];
  const acc_t* u = us + e[kUOff];
  acc_t s = acc_t(0);
  for (int64_t j = threadIdx.x; j < R; j += blockDim.x) {
    acc_t wv = acc_t(0);
    for (int64_t q = 0; q < parts; ++q) wv += p[q * R + j];
    s += u[j] * wv;
  }
  s = block_sum(s, sh);
  if (threadIdx.x == 0) sigma[blockIdx.x] = s;
}

// ---------------------------------------------------------------------------------------------------
// Planned forward (power_iteration_forward) and backward (power_iteration_backward_packed).
//
// The alternating iteration on W itself, every step in one launch (pi_steps_kernel, n_iter >= 1): its
// blocks take tickets (tickets.cuh) over runs of weights whose W take at most half the L2; per run and
// step four phases, each waiting for the run's previous phase: every tile's partials of W^T u (u the
// caller's vector, which the previous step's last phase updated), one block per weight adding them into
// v = normalize(W^T u), every tile's partials of W v, one block per weight adding them into u =
// normalize(W v) and sigma = u^T W v. A run's W is read from DRAM by its first phase and from L2 by the
// other 2 n_iter - 1 reads. n_iter = 0: a W v pass and sigma = u^T W v (two launches). The table of a
// set of weights is cached (see plan_for), keyed by the weights' and vectors' addresses and shapes and
// the L2 the runs are sized to.

// Fields of a weight entry of a plan table.
enum PlanField : int {
  pW, pR, pK, pU, pV, pXOff, pPaOff, pPbOff, pRowTiles, pColTiles, pVecOk, pSaveOff, pGradOff, pFields
};
// Fields of a run entry of a plan table: its first weight and weight count, first tile and tile count.
enum RunField : int { rWeight, rWeights, rTile, rTiles, rFields };

// Stages of finish_weight.
enum Finish : int {
  kSigmaOnly,  // sigma = u^T (W v) from the W v partials; saved = (u, v) as given
  kFinishV,    // v = normalize(W^T u) from the W^T u partials: work, caller's v, saved v
  kFinishU,    // u = normalize(W v), sigma = u^T W v from the W v partials: caller's u, saved u
};

template <typename acc_t>
__device__ __forceinline__ acc_t inv_norm(acc_t sq, acc_t eps) {
  const acc_t n = root(sq);
  return acc_t(1) / (n > eps ? n : eps);
}

// Tile `tile` (weight, row tile, column tile) of the table: partials of W^T u (stage kFinishV) into pa,
// else of W v into pb. from_caller: the vector is the caller's u (W^T u) or v (W v); otherwise the
// work's u or v slot of the weight.
template <typename T>
__device__ __forceinline__ void pass_tile(const int64_t* __restrict__ table, const int64_t* tile,
                                          AccT<T>* __restrict__ work, int stage, bool from_caller) {
  using acc_t = AccT<T>;
  constexpr int VV = kVec<T>;
  __shared__ acc_t sh[kThreads * VV];
  const int64_t* e = table + tile[0] * pFields;
  const int64_t rt = tile[1], ct = tile[2];
  const T* W = reinterpret_cast<const T*>(e[pW]);
  const int64_t R = e[pR], K = e[pK];
  const int64_t r0 = rt * kRows, r1 = min(R, r0 + kRows), k0 = ct * kCols;
  const bool vec = e[pVecOk] != 0;
  const bool transpose = stage == kFinishV;
  acc_t* slot_u = work + e[pXOff];
  if (transpose) {
    const acc_t* u = from_caller ? reinterpret_cast<const acc_t*>(e[pU]) : slot_u;
    acc_t* out = work + e[pPaOff] + rt * K;
    if (vec) {
      tile_wtu<VV>(W, K, r0, r1, k0, u, out, sh);
    } else {
      tile_wtu<1>(W, K, r0, r1, k0, u, out, sh);
    }
  } else {
    const acc_t* v = from_caller ? reinterpret_cast<const acc_t*>(e[pV]) : slot_u + R;
    acc_t* out = work + e[pPbOff] + ct * R;
    if (vec) {
      tile_wv<VV>(W, K, r0, r1, k0, v, out);
    } else {
      tile_wv<1>(W, K, r0, r1, k0, v, out);
    }
  }
}

// Weight i: adds the partials of the pass in tile order and finishes the vector (Finish).
template <typename acc_t>
__device__ __forceinline__ void finish_weight(const int64_t* __restrict__ table, int64_t i, acc_t* __restrict__ work,
                                              int stage, acc_t* __restrict__ sigma, acc_t* __restrict__ saved,
                                              acc_t eps) {
  __shared__ acc_t sh[33];
  const int64_t* e = table + i * pFields;
  const int64_t R = e[pR], K = e[pK];
  const bool columns = stage == kFinishV;
  const int64_t len = columns ? K : R, parts = columns ? e[pRowTiles] : e[pColTiles];
  const acc_t* p = work + (columns ? e[pPaOff] : e[pPbOff]);
  acc_t* slot = work + e[pXOff] + (columns ? R : 0);  // holds the sums
  acc_t* caller_u = reinterpret_cast<acc_t*>(e[pU]);
  acc_t* caller_v = reinterpret_cast<acc_t*>(e[pV]);
  acc_t* keep = saved + e[pSaveOff];
  acc_t sq = acc_t(0), dot = acc_t(0);
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
    acc_t s = acc_t(0);
    for (int64_t q = 0; q < parts; ++q) s += load_cg(p + q * len + j);
    slot[j] = s;
    sq += s * s;
    if (stage == kSigmaOnly) dot += caller_u[j] * s;
  }
  if (stage == kSigmaOnly) {
    dot = block_sum(dot, sh);
    for (int64_t j = threadIdx.x; j < R; j += blockDim.x) keep[j] = caller_u[j];
    for (int64_t j = threadIdx.x; j < K; j += blockDim.x) keep[R + j] = caller_v[j];
    if (threadIdx.x == 0) sigma[i] = dot;
    return;
  }
  const acc_t sc = inv_norm(block_sum(sq, sh), eps);  // also orders the slot writes before the reads below
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
    const acc_t s = slot[j], x = s * sc;
    if (columns) {
      slot[j] = caller_v[j] = keep[R + j] = x;
    } else {
      caller_u[j] = keep[j] = x;
      dot += x * s;
    }
  }
  if (!columns) {
    dot = block_sum(dot, sh);
    if (threadIdx.x == 0) sigma[i] = dot;
  }
}

// n_iter = 0: one block per tile (sigma_only pass), then one per weight (sigma_only finish).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    pi_pass_kernel(const int64_t* __restrict__ table, const int64_t* __restrict__ tiles, AccT<T>* __restrict__ work) {
  pass_tile<T>(table, tiles + static_cast<int64_t>(blockIdx.x) * 3, work, kSigmaOnly, true);
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    pi_finish_kernel(const int64_t* __restrict__ table, acc_t* __restrict__ work, acc_t* __restrict__ sigma,
                     acc_t* __restrict__ saved, acc_t eps) {
  finish_weight<acc_t>(table, blockIdx.x, work, kSigmaOnly, sigma, saved, eps);
}

// Every step, n_iter >= 1, in one launch (see the section comment). Run r takes n_iter * (2 tiles + 2
// weights) tickets: per step its tiles' W^T u partials, its weights' v, its tiles' W v partials, its
// weights' u and sigma. counters: [0] the next ticket, then one count per (run, step, phase), zero on entry.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    pi_steps_kernel(const int64_t* __restrict__ table, const int64_t* __restrict__ tiles,
                    const int64_t* __restrict__ runs, int64_t n_runs, int64_t n_iter, AccT<T>* __restrict__ work,
                    unsigned* __restrict__ counters, AccT<T>* __restrict__ sigma, AccT<T>* __restrict__ saved,
                    AccT<T> eps) {
  __shared__ int64_t job[4];  // run, step, phase, index within the phase: decoded by thread 0
  const int64_t t = claim_ticket(counters);
  if (threadIdx.x == 0) {
    int64_t r = 0, first = 0, per_step = 0;
    for (; r < n_runs; ++r, first += n_iter * per_step) {
      per_step = 2 * (runs[r * rFields + rTiles] + runs[r * rFields + rWeights]);
      if (t < first + n_iter * per_step) break;
    }
    const int64_t step = (t - first) / per_step;
    int64_t at = (t - first) - step * per_step;
    int phase = 0;  // tiles, weights, tiles, weights
    for (; phase < 3; ++phase) {
      const int64_t size = phase % 2 == 0 ? runs[r * rFields + rTiles] : runs[r * rFields + rWeights];
      if (at < size) break;
      at -= size;
    }
    job[0] = r;
    job[1] = step;
    job[2] = phase;
    job[3] = at;
  }
  __syncthreads();
  const int64_t r = job[0], step = job[1], at = job[3];
  const int phase = static_cast<int>(job[2]);
  const int64_t* run = runs + r * rFields;
  const int64_t n_tiles = run[rTiles], n_weights = run[rWeights];
  unsigned* count = counters + 1 + (r * n_iter + step) * 4 + phase;
  // the phase before: the previous step's last (weights) for phase 0
  if (phase > 0 || step > 0) wait_count(count - 1, static_cast<unsigned>(phase % 2 == 0 ? n_weights : n_tiles));
  if (phase % 2 == 0) {
    pass_tile<T>(table, tiles + (run[rTile] + at) * 3, work, phase == 0 ? kFinishV : kFinishU, phase == 0);
  } else {
    finish_weight<AccT<T>>(table, run[rWeight] + at, work, phase == 1 ? kFinishV : kFinishU, sigma, saved, eps);
  }
  add_count(count);
}

// One block per tile: dW[r, k] = g_i u_i[r] v_i[k] into the flat gradient buffer (each weight
// contiguous at its offset), u_i, v_i from the saved vectors.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    pi_outer_kernel(const int64_t* __restrict__ table, const int64_t* __restrict__ tiles,
                    const AccT<T>* __restrict__ grad, const AccT<T>* __restrict__ saved, T* __restrict__ out) {
  using acc_t = AccT<T>;
  const int64_t* tile = tiles + static_cast<int64_t>(blockIdx.x) * 3;
  const int64_t i = tile[0];
  const int64_t* e = table + i * pFields;
  const int64_t R = e[pR], K = e[pK];
  const int64_t r0 = tile[1] * kRows, r1 = min(R, r0 + kRows), k0 = tile[2] * kCols, k1 = min(K, k0 + kCols);
  const acc_t g = grad[i];
  const acc_t* u = saved + e[pSaveOff];
  const acc_t* v = u + R;
  T* dw = out + e[pGradOff];
  for (int64_t r = r0; r < r1; ++r) {
    const acc_t gu = g * u[r];
    for (int64_t k = k0 + threadIdx.x; k < k1; k += blockDim.x) dw[r * K + k] = static_cast<T>(gu * v[k]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Host side.

std::string indexed(const char* name, size_t i) { return std::string(name) + "[" + std::to_string(i) + "]"; }

void check_batch(const char* op, at::TensorList mats, at::TensorList us, at::TensorList vs) {
  TORCH_CHECK(!mats.empty(), op, ": mats must be a non-empty list of matrices");
  TORCH_CHECK(us.size() == mats.size() && vs.size() == mats.size(), op, ": us and vs must have one entry per matrix (",
              mats.size(), "), got ", us.size(), " and ", vs.size());
  const at::ScalarType dtype = mats[0].scalar_type();
  for (size_t i = 0; i < mats.size(); ++i) {
    const std::string m = indexed("mats", i), u = indexed("us", i), v = indexed("vs", i);
    check_float(op, m.c_str(), mats[i]);
    check_dim(op, m.c_str(), mats[i], 2, "(R, K)");
    TORCH_CHECK(mats[i].scalar_type() == dtype, op, ": ", m, " is ", mats[i].scalar_type(), " but mats[0] is ", dtype,
                " (the python glue converts mixed dtypes to float32)");
    TORCH_CHECK(mats[i].is_contiguous(), op, ": ", m, " must be contiguous");
    TORCH_CHECK(mats[i].numel() > 0, op, ": ", m, " must not be empty, got shape ", mats[i].sizes());
    check_float(op, u.c_str(), us[i]);
    check_float(op, v.c_str(), vs[i]);
    TORCH_CHECK(us[i].dim() == 1 && us[i].numel() == mats[i].size(0), op, ": ", u, " must be 1-D with ",
                mats[i].size(0), " elements (the rows of ", m, "), got shape ", us[i].sizes());
    TORCH_CHECK(vs[i].dim() == 1 && vs[i].numel() == mats[i].size(1), op, ": ", v, " must be 1-D with ",
                mats[i].size(1), " elements (the columns of ", m, "), got shape ", vs[i].sizes());
  }
  TORCH_CHECK(on_kernel_device(mats[0]), op, ": mats[0] must be ", kKernelDevice, ", got a tensor on ",
              mats[0].device());
  for (size_t i = 0; i < mats.size(); ++i) {
    for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"mats", &mats[i]},
                                  std::pair<const char*, const at::Tensor*>{"us", &us[i]},
                                  std::pair<const char*, const at::Tensor*>{"vs", &vs[i]}}) {
      TORCH_CHECK(t->device() == mats[0].device(), op, ": ", indexed(name, i), " is on ", t->device(),
                  " but mats[0] is on ", mats[0].device());
    }
  }
}

struct Batch {
  at::Tensor table;  // device copy of the table
  int64_t n = 0, tiles = 0, pa_len = 0, pb_len = 0;
  std::vector<int64_t> rows, cols;
};

Batch build_batch(at::TensorList mats) {
  Batch b;
  b.n = static_cast<int64_t>(mats.size());
  const int vec = 16 / static_cast<int>(mats[0].element_size());
  for (const at::Tensor& m : mats) {
    b.tiles += ceil_div(m.size(0), kRows) * ceil_div(m.size(1), kCols);
  }
  TORCH_CHECK(b.n <= std::numeric_limits<int32_t>::max() && b.tiles <= std::numeric_limits<int32_t>::max(),
              "nvae_fast power iteration: too many matrices or tiles for one launch");
  at::Tensor host = at::empty({b.n * kFields + b.tiles * 3}, staging_options().dtype(at::kLong));
  int64_t* e = host.data_ptr<int64_t>();
  int64_t* tile = e + b.n * kFields;
  int64_t u_off = 0, v_off = 0;
  for (int64_t i = 0; i < b.n; ++i, e += kFields) {
    const at::Tensor& m = mats[i];
    const int64_t R = m.size(0), K = m.size(1);
    const int64_t row_tiles = ceil_div(R, kRows), col_tiles = ceil_div(K, kCols);
    e[kPtr] = reinterpret_cast<int64_t>(m.data_ptr());
    e[kR] = R;
    e[kK] = K;
    e[kUOff] = u_off;
    e[kVOff] = v_off;
    e[kPaOff] = b.pa_len;
    e[kPbOff] = b.pb_len;
    e[kRowTiles] = row_tiles;
    e[kColTiles] = col_tiles;
    e[kVecOk] = (K % vec == 0 && aligned16(m.data_ptr())) ? 1 : 0;
    u_off += R;
    v_off += K;
    b.pa_len += row_tiles * K;
    b.pb_len += col_tiles * R;
    b.rows.push_back(R);
    b.cols.push_back(K);
    for (int64_t rt = 0; rt < row_tiles; ++rt) {
      for (int64_t ct = 0; ct < col_tiles; ++ct, tile += 3) {
        tile[0] = i;
        tile[1] = rt;
        tile[2] = ct;
      }
    }
  }
  b.table = host.to(mats[0].device(), at::kLong, /*non_blocking=*/true);
  return b;
}

// The vectors of `list` concatenated into one contiguous vector of dtype acc.
at::Tensor pack(at::TensorList list, at::ScalarType acc) {
  std::vector<at::Tensor> flat;
  flat.reserve(list.size());
  for (const at::Tensor& t : list) flat.push_back(t.reshape({-1}));
  return at::cat(flat).to(acc);
}

template <typename T>
void launch_tiles(const Batch& b, const at::Tensor& src, at::Tensor& part, bool transpose, cudaStream_t stream) {
  using acc_t = AccT<T>;
  launch<pi_tiles_kernel<T>>(static_cast<unsigned>(b.tiles), kThreads, 0, stream, b.table.data_ptr<int64_t>(), b.n,
                             src.data_ptr<acc_t>(), part.data_ptr<acc_t>(), transpose);
}

template <typename acc_t>
void launch_normalize(const Batch& b, const at::Tensor& part, at::Tensor& vecs, bool columns, cudaStream_t stream) {
  launch<pi_normalize_kernel<acc_t>>(static_cast<unsigned>(b.n), kThreads, 0, stream, b.table.data_ptr<int64_t>(),
                                     part.data_ptr<acc_t>(), vecs.data_ptr<acc_t>(), columns, static_cast<acc_t>(kEps));
}


// One weight as the plan sees it: its address (0 when only the shape matters) and (R, K) matrix shape.
struct Matrix {
  int64_t w = 0, R = 0, K = 0;
};

std::vector<Matrix> matrices(const std::vector<at::Tensor>& mats) {
  std::vector<Matrix> out;
  out.reserve(mats.size());
  for (const at::Tensor& m : mats) {
    const int64_t R = m.size(0);
    out.push_back({reinterpret_cast<int64_t>(m.data_ptr()), R, m.numel() / R});
  }
  return out;
}

// A cached plan: the device table of a set of weights and vectors, and the sizes its launches need.
struct Plan {
  std::vector<int64_t> key;  // device, dtype, L2 budget, then per weight: W, u, v addresses, R, K
  at::Tensor host_table;     // n * pFields entries, the pass tiles (3 each), n run entries (rFields each;
                             // those past the runs are zero, so that its size is a function of the shapes)
  at::Tensor table;          // its device copy
  int64_t n = 0, pass_tiles = 0, runs = 0, steps_per_iter = 0;  // steps_per_iter: tickets of one step
  int64_t x_len = 0, pa_len = 0, pb_len = 0, save_len = 0, grad_len = 0;
};

std::mutex plan_mutex;

// Runs of consecutive weights whose W take at most `budget` bytes (a larger weight alone): per run its
// first weight and weight count, first tile and tile count.
std::vector<int64_t> weight_runs(const std::vector<Matrix>& mats, int64_t elem, int64_t budget) {
  std::vector<int64_t> runs;
  int64_t used = budget, tile = 0;
  for (size_t i = 0; i < mats.size(); ++i) {
    const int64_t bytes = mats[i].R * mats[i].K * elem;
    const int64_t tiles = ceil_div(mats[i].R, kRows) * ceil_div(mats[i].K, kCols);
    if (used + bytes > budget) {
      runs.insert(runs.end(), {static_cast<int64_t>(i), 0, tile, 0});
      used = 0;
    }
    runs[runs.size() - rFields + rWeights] += 1;
    runs[runs.size() - rFields + rTiles] += tiles;
    used += bytes;
    tile += tiles;
  }
  return runs;
}

Plan build_plan(std::vector<int64_t> key, const std::vector<Matrix>& mats, at::ScalarType dtype, at::Device device,
                const std::vector<int64_t>& u_ptrs, const std::vector<int64_t>& v_ptrs, int64_t budget) {
  Plan p;
  p.key = std::move(key);
  p.n = static_cast<int64_t>(mats.size());
  const int vec = 16 / static_cast<int>(c10::elementSize(dtype));
  // The work buffer of a call is [x | pa | pb]; the offsets count from its start.
  int64_t pa_base = 0, pb_base = 0;
  for (const Matrix& m : mats) {
    const int64_t R = m.R, K = m.K;
    p.pass_tiles += ceil_div(R, kRows) * ceil_div(K, kCols);
    pa_base += R + K;
    pb_base += R + K + ceil_div(R, kRows) * K;
  }
  const std::vector<int64_t> runs = weight_runs(mats, static_cast<int64_t>(c10::elementSize(dtype)), budget);
  p.runs = static_cast<int64_t>(runs.size()) / rFields;
  p.steps_per_iter = 2 * (p.pass_tiles + p.n);
  TORCH_CHECK(p.steps_per_iter * 64 <= std::numeric_limits<int32_t>::max(),
              "nvae_fast power iteration: too many weights or tiles for one launch");
  at::Tensor host = at::empty({p.n * pFields + p.pass_tiles * 3 + p.n * rFields}, staging_options().dtype(at::kLong));
  int64_t* e = host.data_ptr<int64_t>();
  int64_t* pass = e + p.n * pFields;
  std::fill(std::copy(runs.begin(), runs.end(), pass + p.pass_tiles * 3), e + host.numel(), int64_t(0));
  for (int64_t i = 0; i < p.n; ++i, e += pFields) {
    const Matrix& m = mats[i];
    const int64_t R = m.R, K = m.K;
    const int64_t row_tiles = ceil_div(R, kRows), col_tiles = ceil_div(K, kCols);
    e[pW] = m.w;
    e[pR] = R;
    e[pK] = K;
    e[pU] = u_ptrs[i];
    e[pV] = v_ptrs[i];
    e[pXOff] = p.x_len;
    e[pPaOff] = pa_base + p.pa_len;
    e[pPbOff] = pb_base + p.pb_len;
    e[pRowTiles] = row_tiles;
    e[pColTiles] = col_tiles;
    e[pVecOk] = (K % vec == 0 && m.w % 16 == 0) ? 1 : 0;
    e[pSaveOff] = p.save_len;
    e[pGradOff] = p.grad_len;
    p.x_len += R + K;
    p.pa_len += row_tiles * K;
    p.pb_len += col_tiles * R;
    p.save_len += R + K;
    p.grad_len += R * K;
    for (int64_t rt = 0; rt < row_tiles; ++rt) {
      for (int64_t ct = 0; ct < col_tiles; ++ct, pass += 3) {
        pass[0] = i;
        pass[1] = rt;
        pass[2] = ct;
      }
    }
  }
  p.host_table = host;
  p.table = host.to(device, at::kLong, /*non_blocking=*/true);
  return p;
}

// The plan of these weights (uniform in `dtype`, contiguous, on `device`) and acc-dtype vectors: the
// cached one when the key matches, else a new one replacing the oldest of kPlanCache. A table is a
// function of its key alone (addresses, shapes, and the runs' budget: half the device's L2), so a cached
// plan is valid for any tensors at those addresses.
constexpr size_t kPlanCache = 4;

std::shared_ptr<const Plan> plan_for(const std::vector<Matrix>& mats, at::ScalarType dtype, at::Device device,
                                     const std::vector<int64_t>& u_ptrs, const std::vector<int64_t>& v_ptrs) {
  const int64_t budget = l2_bytes() / 2;
  std::vector<int64_t> key;
  key.reserve(4 + mats.size() * 5);
  key.push_back(static_cast<int64_t>(device.type()));
  key.push_back(device.index());
  key.push_back(static_cast<int64_t>(dtype));
  key.push_back(budget);
  for (size_t i = 0; i < mats.size(); ++i) {
    key.push_back(mats[i].w);
    key.push_back(u_ptrs[i]);
    key.push_back(v_ptrs[i]);
    key.push_back(mats[i].R);
    key.push_back(mats[i].K);
  }
  // Leaked on purpose: device tensors must not be freed after the CUDA runtime shuts down at exit.
  static auto* cache = new std::vector<std::shared_ptr<const Plan>>();
  const std::lock_guard<std::mutex> lock(plan_mutex);
  for (auto it = cache->begin(); it != cache->end(); ++it) {
    if ((*it)->key == key) {
      std::shared_ptr<const Plan> hit = *it;
      cache->erase(it);
      cache->push_back(hit);
      return hit;
    }
  }
  auto plan = std::make_shared<const Plan>(build_plan(std::move(key), mats, dtype, device, u_ptrs, v_ptrs, budget));
  if (cache->size() == kPlanCache) cache->erase(cache->begin());
  cache->push_back(plan);
  return plan;
}

void check_weights(const char* op, at::TensorList weights) {
  TORCH_CHECK(!weights.empty(), op, ": weights must be a non-empty list of tensors");
  for (size_t i = 0; i < weights.size(); ++i) {
    const std::string w = indexed("weights", i);
    check_float(op, w.c_str(), weights[i]);
    TORCH_CHECK(weights[i].dim() >= 2, op, ": ", w, " must have at least 2 dims, got shape ", weights[i].sizes());
    TORCH_CHECK(weights[i].numel() > 0, op, ": ", w, " must not be empty, got shape ", weights[i].sizes());
    TORCH_CHECK(weights[i].device() == weights[0].device(), op, ": ", w, " is on ", weights[i].device(),
                " but weights[0] is on ", weights[0].device());
  }
  TORCH_CHECK(on_kernel_device(weights[0]), op, ": weights[0] must be ", kKernelDevice, ", got a tensor on ",
              weights[0].device());
}

// The weights as the kernels read them: one dtype (their own when shared, else float32), contiguous.
// Returns the originals (no copy) in the usual case.
std::vector<at::Tensor> uniform(at::TensorList weights) {
  bool same = true;
  for (const at::Tensor& w : weights) same = same && w.scalar_type() == weights[0].scalar_type();
  std::vector<at::Tensor> out;
  out.reserve(weights.size());
  for (const at::Tensor& w : weights) out.push_back((same ? w : w.to(at::kFloat)).contiguous());
  return out;
}

// The vectors the kernels read and write: the caller's when contiguous in the acc dtype, else acc-dtype
// copies (their indices in `copied`, copied back after the launches).
void io_vectors(const char* op, const std::vector<at::Tensor>& mats, at::TensorList us, at::TensorList vs,
                std::vector<at::Tensor>& u_io, std::vector<at::Tensor>& v_io, std::vector<size_t>& copied) {
  TORCH_CHECK(us.size() == mats.size() && vs.size() == mats.size(), op, ": us and vs must have one entry per weight (",
              mats.size(), "), got ", us.size(), " and ", vs.size());
  const at::ScalarType acc = acc_dtype(mats[0].scalar_type());
  for (size_t i = 0; i < mats.size(); ++i) {
    const std::string u = indexed("us", i), v = indexed("vs", i);
    check_float(op, u.c_str(), us[i]);
    check_float(op, v.c_str(), vs[i]);
    const int64_t R = mats[i].size(0), K = mats[i].numel() / R;
    TORCH_CHECK(us[i].dim() == 1 && us[i].numel() == R, op, ": ", u, " must be 1-D with ", R, " elements, got shape ",
                us[i].sizes());
    TORCH_CHECK(vs[i].dim() == 1 && vs[i].numel() == K, op, ": ", v, " must be 1-D with ", K, " elements, got shape ",
                vs[i].sizes());
    TORCH_CHECK(us[i].device() == mats[0].device() && vs[i].device() == mats[0].device(), op, ": ", u, " and ", v,
                " must be on ", mats[0].device());
    const bool direct = us[i].scalar_type() == acc && vs[i].scalar_type() == acc && us[i].is_contiguous() &&
                        vs[i].is_contiguous();
    u_io.push_back(direct ? us[i] : us[i].to(acc).contiguous());
    v_io.push_back(direct ? vs[i] : vs[i].to(acc).contiguous());
    if (!direct) copied.push_back(i);
  }
}

std::vector<int64_t> pointers(const std::vector<at::Tensor>& ts) {
  std::vector<int64_t> out;
  out.reserve(ts.size());
  for (const at::Tensor& t : ts) out.push_back(reinterpret_cast<int64_t>(t.data_ptr()));
  return out;
}

}  // namespace

void power_iteration_update(at::TensorList mats, at::TensorList us, at::TensorList vs, int64_t n_iter) {
  constexpr const char* op = "nvae_fast::power_iteration_update";
  TORCH_CHECK(n_iter >= 0, op, ": n_iter must be non-negative, got ", n_iter);
  check_batch(op, mats, us, vs);
  if (n_iter == 0) return;
  const DeviceGuard guard(mats[0].device());
  const cudaStream_t stream = current_stream();
  const at::ScalarType acc = acc_dtype(mats[0].scalar_type());
  const Batch b = build_batch(mats);
  at::Tensor u = pack(us, acc), v = pack(vs, acc);
  const auto opts = u.options();
  at::Tensor pa = at::empty({b.pa_len}, opts), pb = at::empty({b.pb_len}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mats[0].scalar_type(), "power_iteration_update", [&] {
    using acc_t = AccT<scalar_t>;
    for (int64_t it = 0; it < n_iter; ++it) {
      launch_tiles<scalar_t>(b, u, pa, /*transpose=*/true, stream);
      launch_normalize<acc_t>(b, pa, v, /*columns=*/true, stream);
      launch_tiles<scalar_t>(b, v, pb, /*transpose=*/false, stream);
      launch_normalize<acc_t>(b, pb, u, /*columns=*/false, stream);
    }
  });
  at::_foreach_copy_(us, u.split_with_sizes(b.rows));
  at::_foreach_copy_(vs, v.split_with_sizes(b.cols));
}

at::Tensor power_iteration_sigmas(at::TensorList mats, at::TensorList us, at::TensorList vs) {
  constexpr const char* op = "nvae_fast::power_iteration_sigmas";
  check_batch(op, mats, us, vs);
  const DeviceGuard guard(mats[0].device());
  const cudaStream_t stream = current_stream();
  const at::ScalarType acc = acc_dtype(mats[0].scalar_type());
  const Batch b = build_batch(mats);
  at::Tensor u = pack(us, acc), v = pack(vs, acc);
  at::Tensor pb = at::empty({b.pb_len}, u.options());
  at::Tensor sigma = at::empty({b.n}, u.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mats[0].scalar_type(), "power_iteration_sigmas", [&] {
    using acc_t = AccT<scalar_t>;
    launch_tiles<scalar_t>(b, v, pb, /*transpose=*/false, stream);
    launch<pi_sigma_kernel<acc_t>>(static_cast<unsigned>(b.n), kThreads, 0, stream, b.table.data_ptr<int64_t>(),
                                   pb.data_ptr<acc_t>(), u.data_ptr<acc_t>(), sigma.data_ptr<acc_t>());
  });
  return sigma;
}

// What the backward needs to know of the weights, so that the forward keeps none of them: [n, then per
// weight: dtype code, rank, sizes...], dtype codes indexing kLayoutDtypes.
constexpr at::ScalarType kLayoutDtypes[] = {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble};

std::vector<int64_t> power_iteration_layout(at::TensorList weights) {
  check_weights("nvae_fast::power_iteration_layout", weights);
  std::vector<int64_t> layout{static_cast<int64_t>(weights.size())};
  for (const at::Tensor& w : weights) {
    const auto code = std::find(std::begin(kLayoutDtypes), std::end(kLayoutDtypes), w.scalar_type());
    layout.push_back(code - std::begin(kLayoutDtypes));
    layout.push_back(w.dim());
    layout.insert(layout.end(), w.sizes().begin(), w.sizes().end());
  }
  return layout;
}

// A layout read back: the weights' (R, K) matrices (no addresses), sizes and dtypes, and the dtype the
// kernels used for them (their own when shared, else float32, as `uniform`).
struct WeightLayout {
  std::vector<Matrix> mats;
  std::vector<std::vector<int64_t>> sizes;
  std::vector<at::ScalarType> dtypes;
  at::ScalarType dtype = at::kFloat;
};

WeightLayout read_layout(const char* op, at::IntArrayRef layout) {
  constexpr int64_t codes = sizeof(kLayoutDtypes) / sizeof(kLayoutDtypes[0]);
  const int64_t len = static_cast<int64_t>(layout.size());
  TORCH_CHECK(len >= 1 && layout[0] >= 1, op, ": layout must be power_iteration_layout of the weights");
  WeightLayout out;
  int64_t at = 1;
  for (int64_t i = 0; i < layout[0]; ++i) {
    TORCH_CHECK(at + 2 <= len && layout[at] >= 0 && layout[at] < codes && layout[at + 1] >= 2 &&
                    at + 2 + layout[at + 1] <= len,
                op, ": layout must be power_iteration_layout of the weights (entry ", i, " is malformed)");
    out.dtypes.push_back(kLayoutDtypes[layout[at]]);
    const int64_t rank = layout[at + 1];
    std::vector<int64_t> sizes(layout.begin() + at + 2, layout.begin() + at + 2 + rank);
    int64_t numel = 1;
    for (int64_t d : sizes) {
      TORCH_CHECK(d > 0, op, ": layout must be power_iteration_layout of the weights (entry ", i,
                  " has an empty size)");
      numel *= d;
    }
    out.mats.push_back({0, sizes[0], numel / sizes[0]});
    out.sizes.push_back(std::move(sizes));
    at += 2 + rank;
  }
  TORCH_CHECK(at == len, op, ": layout must be power_iteration_layout of the weights (", len - at,
              " trailing entries)");
  const bool same =
      std::all_of(out.dtypes.begin(), out.dtypes.end(), [&](at::ScalarType t) { return t == out.dtypes[0]; });
  out.dtype = same ? out.dtypes[0] : at::kFloat;
  return out;
}

std::tuple<at::Tensor, at::Tensor> power_iteration_forward(at::TensorList weights, at::TensorList us,
                                                           at::TensorList vs, int64_t n_iter) {
  constexpr const char* op = "nvae_fast::power_iteration_forward";
  TORCH_CHECK(n_iter >= 0, op, ": n_iter must be non-negative, got ", n_iter);
  check_weights(op, weights);
  const std::vector<at::Tensor> mats = uniform(weights);
  const at::ScalarType acc = acc_dtype(mats[0].scalar_type());
  std::vector<at::Tensor> u_io, v_io;
  std::vector<size_t> copied;
  io_vectors(op, mats, us, vs, u_io, v_io, copied);
  const DeviceGuard guard(mats[0].device());
  const cudaStream_t stream = current_stream();
  const std::shared_ptr<const Plan> p =
      plan_for(matrices(mats), mats[0].scalar_type(), mats[0].device(), pointers(u_io), pointers(v_io));
  const auto opts = mats[0].options().dtype(acc);
  at::Tensor work = at::empty({p->x_len + p->pa_len + p->pb_len}, opts);
  at::Tensor saved = at::empty({p->save_len}, opts);
  at::Tensor sigma = at::empty({p->n}, opts);
  const int64_t* table = p->table.data_ptr<int64_t>();
  const int64_t* tiles = table + p->n * pFields;
  const int64_t* runs = tiles + p->pass_tiles * 3;
  TORCH_CHECK(n_iter <= std::numeric_limits<int32_t>::max() / p->steps_per_iter, op, ": n_iter = ", n_iter,
              " takes more blocks than one launch has for these weights");
  // counters of pi_steps_kernel: the ticket, then one count per (run, step, phase)
  at::Tensor counters = at::empty({n_iter > 0 ? 1 + p->runs * n_iter * 4 : 0}, mats[0].options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mats[0].scalar_type(), "power_iteration_forward", [&] {
    using acc_t = AccT<scalar_t>;
    acc_t* w = work.data_ptr<acc_t>();
    acc_t* sg = sigma.data_ptr<acc_t>();
    acc_t* sv = saved.data_ptr<acc_t>();
    const acc_t eps = static_cast<acc_t>(kEps);
    if (n_iter == 0) {
      launch<pi_pass_kernel<scalar_t>>(static_cast<unsigned>(p->pass_tiles), kThreads, 0, stream, table, tiles, w);
      launch<pi_finish_kernel<acc_t>>(static_cast<unsigned>(p->n), kThreads, 0, stream, table, w, sg, sv, eps);
      return;
    }
    unsigned* c = reinterpret_cast<unsigned*>(counters.data_ptr<int>());
    zero_async(c, counters.nbytes(), stream);
    launch<pi_steps_kernel<scalar_t>>(static_cast<unsigned>(n_iter * p->steps_per_iter), kThreads, 0, stream, table,
                                      tiles, runs, p->runs, n_iter, w, c, sg, sv, eps);
  });
  for (size_t i : copied) {
    us[i].copy_(u_io[i]);
    vs[i].copy_(v_io[i]);
  }
  return {sigma, saved};
}

at::Tensor power_iteration_backward_packed(const at::Tensor& grad, const at::Tensor& saved,
                                          at::IntArrayRef layout) {
  constexpr const char* op = "nvae_fast::power_iteration_backward_packed";
  const WeightLayout l = read_layout(op, layout);
  const at::ScalarType acc = acc_dtype(l.dtype);
  const int64_t n = static_cast<int64_t>(l.mats.size());
  TORCH_CHECK(on_kernel_device(saved), op, ": saved must be ", kKernelDevice, ", got a tensor on ", saved.device());
  TORCH_CHECK(grad.dim() == 1 && grad.numel() == n && grad.scalar_type() == acc && grad.device() == saved.device(),
              op, ": grad must be a (", n, ",) ", acc, " tensor on ", saved.device(), ", got ", grad.scalar_type(),
              " of shape ", grad.sizes(), " on ", grad.device());
  // The gradient kernel reads no weight or u/v addresses (only offsets, a function of the shapes): its
  // plan is cached under null addresses.
  const std::vector<int64_t> none(l.mats.size(), 0);
  const DeviceGuard guard(saved.device());
  const std::shared_ptr<const Plan> p = plan_for(l.mats, l.dtype, saved.device(), none, none);
  TORCH_CHECK(saved.dim() == 1 && saved.numel() == p->save_len && saved.scalar_type() == acc, op,
              ": saved must be the (", p->save_len, ",) ", acc, " vectors of power_iteration_forward, got shape ",
              saved.sizes(), " ", saved.scalar_type());
  at::Tensor flat = at::empty({p->grad_len}, saved.options().dtype(l.dtype));
  const at::Tensor g = grad.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.dtype, "power_iteration_backward", [&] {
    const int64_t* table = p->table.data_ptr<int64_t>();
    launch<pi_outer_kernel<scalar_t>>(static_cast<unsigned>(p->pass_tiles), kThreads, 0, current_stream(), table,
                                      table + p->n * pFields, g.data_ptr<AccT<scalar_t>>(),
                                      saved.contiguous().data_ptr<AccT<scalar_t>>(), flat.data_ptr<scalar_t>());
  });
  return flat;
}

// The gradient of each weight, in its shape and dtype, from the packed buffer: views where the dtype is
// the shared one (a buffer's views may not be a custom op's outputs, so this runs in the composite op).
std::vector<at::Tensor> power_iteration_unpack(const at::Tensor& packed, at::IntArrayRef layout) {
  const WeightLayout l = read_layout("nvae_fast::power_iteration_backward", layout);
  std::vector<at::Tensor> grads;
  grads.reserve(l.mats.size());
  int64_t off = 0;
  for (size_t i = 0; i < l.mats.size(); ++i) {
    const std::vector<int64_t>& sizes = l.sizes[i];
    std::vector<int64_t> strides(sizes.size(), 1);
    for (int64_t j = static_cast<int64_t>(sizes.size()) - 2; j >= 0; --j) strides[j] = strides[j + 1] * sizes[j + 1];
    at::Tensor gi = packed.as_strided(sizes, strides, packed.storage_offset() + off);
    off += l.mats[i].R * l.mats[i].K;
    grads.push_back(l.dtypes[i] == l.dtype ? gi : gi.to(l.dtypes[i]));
  }
  return grads;
}

at::Tensor power_iteration_plan(at::TensorList weights, at::TensorList us, at::TensorList vs) {
  constexpr const char* op = "nvae_fast::power_iteration_plan";
  check_weights(op, weights);
  const std::vector<at::Tensor> mats = uniform(weights);
  std::vector<at::Tensor> u_io, v_io;
  std::vector<size_t> copied;
  io_vectors(op, mats, us, vs, u_io, v_io, copied);
  return plan_for(matrices(mats), mats[0].scalar_type(), mats[0].device(), pointers(u_io), pointers(v_io))->host_table;
}

}  // namespace nvae_fast
