// Batched power iteration over many matrices of different shapes
// (torch.ops.nvae_fast.power_iteration_update / power_iteration_sigmas).
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

#include <string>
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
      const acc_t ur = u[r];
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

// out[r] = sum_{k0 <= k < k0 + kCols, k < K} W[r, k] v[k] for r0 <= r < r1: one warp per row.
template <int V, typename T, typename acc_t>
__device__ __forceinline__ void tile_wv(const T* __restrict__ W, int64_t K, int64_t r0, int64_t r1, int64_t k0,
                                        const acc_t* __restrict__ v, acc_t* __restrict__ out) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int64_t r = r0 + warp; r < r1; r += kThreads / 32) {
    SumAcc<acc_t, 1> s{{acc_t(0)}};
    for (int kk = lane * V; kk < kCols; kk += 32 * V) {
      const int64_t k = k0 + kk;
      if (k < K) {
        acc_t w[V];
        load_vec<V>(W + r * K + k, w);
#pragma unroll
        for (int j = 0; j < V; ++j) s.s[0] += w[j] * v[k + j];
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

}  // namespace nvae_fast
