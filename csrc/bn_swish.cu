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
//
// Training without a process group runs one op per direction that does everything in one launch
// (bn_swish_train_forward: statistics, running-stat update, y; bn_swish_train_backward: the sums, which
// are dweight and dbias, and dx). The work is split into channel groups (one channel in NCHW; up to
// kMaxGroupChannels consecutive channels in NHWC, whose rows are then contiguous), each group's
// N * H * W values per channel being its slice. Two plans (bn_plan picks one):
//   resident    one block per group keeps the group's slice (x; dy and x in backward, in x's dtype) in
//               registers and dynamic shared memory (up to the device's opt-in maximum: 227 KiB on
//               sm_90, 163 KiB on sm_80) between the reduction and the element-wise pass: every input
//               read once and dx/y written once.
//   l2_blocked  for slices that do not fit: one launch whose blocks take tickets (tickets.cuh) over runs
//               of channel groups whose inputs take at most half of the device's L2 (50 MiB on an H100 SXM).
//               Per run, groups x parts blocks write per-part accumulators (first pass), then as many
//               blocks wait for them, merge the parts of their group (in order, so every block gets the
//               same statistics bitwise), part 0 writes the per-channel outputs, and each redoes the
//               element-wise pass over one part (second pass): its re-read is an L2 hit and DRAM sees
//               every input once. The run counters are zeroed by a memset before the launch.

#include <limits>

#include "checks.h"
#include "elementwise.cuh"
#include "ops.h"
#include "reduce.cuh"
#include "tickets.cuh"

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

// ---- Training ops: resident and L2-blocked plans ----------------------------------------------------

constexpr int kGroupThreads = 512;      // threads per block of the channel-group kernels
constexpr int kMaxGroupChannels = 32;   // NHWC channels per group (cols * V, cols <= 32)
// Resident plan: 16-byte vectors each thread keeps in registers (64 of its up to 128 registers at 512
// threads per block: 16 of x forward, 8 each of dy and x backward); the rest of a slice goes to shared memory.
constexpr int kRegVecsForward = 16;
constexpr int kRegVecsBackward = 8;

// The slice of a channel group: vectors k in [0, R * Wv), vector k at row r = k / Wv,
// column w = k % Wv, elements base + r * stride + w * V .. + V - 1.
//   NCHW: group = channel c; R = N, Wv = HW / V, stride = C * HW, base = c * HW.
//   NHWC: group = channels [c0, c0 + cg), cg = cols * V; R = N * HW, Wv = cols, stride = C, base = c0;
//         element j of column w is channel c0 + w * V + j (columns past C are idle). blockDim.x is a
//         multiple of cols and parts start at multiples of Wv, so a thread always has the same column.
// Part p covers vectors [chunk * p, chunk * (p + 1)).
struct GroupGeometry {
  int64_t N, C, HW;
  int64_t R, Wv, stride;
  int cg;         // channels per group (1 in NCHW)
  int64_t chunk;  // vectors per part
};

// The work of one block: a part of a channel group.
struct Place {
  int64_t group, part;
};

template <Layout L, int V>
struct GroupView {
  int64_t base, c0, kb, ke;
  __device__ __forceinline__ GroupView(const GroupGeometry& g, Place at) {
    c0 = L == Layout::NCHW ? at.group : at.group * g.cg;
    base = L == Layout::NCHW ? at.group * g.HW : c0;
    kb = at.part * g.chunk;
    ke = min(g.R * g.Wv, kb + g.chunk);
  }
  // Channel slot (0 .. cg-1) of element j of this thread's vectors (its column is fixed in NHWC).
  __device__ __forceinline__ int slot(const GroupGeometry& g, int j) const {
    return L == Layout::NCHW ? 0 : static_cast<int>((threadIdx.x % g.Wv) * V + j);
  }
  // False for a thread whose column lies past the last channel (NHWC).
  __device__ __forceinline__ bool active(const GroupGeometry& g) const {
    return L == Layout::NCHW || c0 + static_cast<int64_t>(threadIdx.x % g.Wv) * V < g.C;
  }
  // Visits the thread's vectors k = kb + threadIdx.x + i * blockDim.x < ke in order, with offset =
  // the vector's first element: the first R as reg(offset, i) (i a constant once unrolled, so that
  // the caller's per-thread arrays indexed by it stay in registers), the rest as rest(offset, slot) with
  // slot = k - kb - R * blockDim.x, the vector's place in the block's shared-memory copy.
  template <int R, class FR, class FS>
  __device__ __forceinline__ void for_each(const GroupGeometry& g, FR&& reg, FS&& rest) const {
    int64_t k = kb + threadIdx.x;
    if (k >= ke) return;
    int64_t r = k / g.Wv, w = k - r * g.Wv;
    const int64_t dr = blockDim.x / g.Wv, dw = blockDim.x - dr * g.Wv;
    auto advance = [&] {
      k += blockDim.x;
      r += dr;
      w += dw;
      if (w >= g.Wv) {
        w -= g.Wv;
        ++r;
      }
    };
#pragma unroll
    for (int i = 0; i < R; ++i) {
      if (k < ke) reg(base + r * g.stride + w * V, i);
      advance();
    }
    while (k < ke) {
      rest(base + r * g.stride + w * V, k - kb - static_cast<int64_t>(R) * blockDim.x);
      advance();
    }
  }
};

// Merges the accumulators acc[j] of every thread of the block by channel slot (slot of thread t, lane j:
// (t % cols) * NL + j, cols a power of two <= 32 that divides blockDim.x); out[q] gets slot q's total for
// q < cols * NL. Fixed merge order (shuffles, then warps in order). sh: blockDim.x / 32 * cols * NL.
template <class A, int NL>
__device__ __forceinline__ void reduce_slots(A (&acc)[NL], int cols, A* sh, A* out) {
  for (int d = 16; d >= cols; d >>= 1) {
#pragma unroll
    for (int j = 0; j < NL; ++j) acc[j].merge(acc[j].shfl_down(d));
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int slots = cols * NL;
  if (lane < cols) {
#pragma unroll
    for (int j = 0; j < NL; ++j) sh[warp * slots + lane * NL + j] = acc[j];
  }
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < slots) {
    A a = A::identity();
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) a.merge(sh[w * slots + threadIdx.x]);
    out[threadIdx.x] = a;
  }
  __syncthreads();
}

// Lanes of the per-thread accumulators: NCHW vectors lie in one channel, NHWC vectors span V channels.
template <Layout L, int V>
constexpr int kLanes = L == Layout::NCHW ? 1 : V;

// Dynamic shared memory of a group block: [sh | out | per-slot constants | slice copy (resident)].
template <class A, typename acc_t>
struct GroupSmem {
  static constexpr size_t align16(size_t b) { return (b + 15) / 16 * 16; }
  // Bytes before the slice copy for cg slots.
  static size_t scratch(int cg) {
    return align16(sizeof(A) * (kGroupThreads / 32) * cg) + align16(sizeof(A) * cg) +
           align16(sizeof(acc_t) * 2 * cg);
  }
  A* sh;
  A* out;
  acc_t* consts;  // 2 per slot
  unsigned char* data;
  __device__ __forceinline__ GroupSmem(int cg) {
    unsigned char* p = dynamic_smem<unsigned char>();
    sh = reinterpret_cast<A*>(p);
    p += align16(sizeof(A) * (kGroupThreads / 32) * cg);
    out = reinterpret_cast<A*>(p);
    p += align16(sizeof(A) * cg);
    consts = reinterpret_cast<acc_t*>(p);
    data = p + align16(sizeof(acc_t) * 2 * cg);
  }
};

template <typename T>
struct TrainForwardArgs {
  using acc_t = AccT<T>;
  const T* x;
  T* y;
  const acc_t* weight;
  const acc_t* bias;
  acc_t* mean;
  acc_t* invstd;
  acc_t* running_mean;  // may be null
  acc_t* running_var;   // may be null
  acc_t* ws;            // l2_blocked: (parts, 3, C) Welford partials
  acc_t momentum, eps, unbiased;  // unbiased = n / (n - 1)
  int64_t parts;
};

// Adds the V values of one vector to the thread's Welford accumulators.
template <Layout L, int V, typename acc_t>
__device__ __forceinline__ void welford_add(WelfordAcc<acc_t> (&acc)[kLanes<L, V>], const acc_t (&v)[V]) {
  if constexpr (L == Layout::NCHW) {
    acc[0].template add_block<V>(v);
  } else {
    const acc_t n = acc[0].n + acc_t(1);  // every lane has seen as many values
    const acc_t inv = acc_t(1) / n;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const acc_t d = v[j] - acc[j].mean;
      acc[j].mean += d * inv;
      acc[j].m2 += d * (v[j] - acc[j].mean);
      acc[j].n = n;
    }
  }
}

// Welford accumulators of the block's part of its group, merged by slot into sm.out. Resident: the
// vectors are also copied to shared memory.
template <typename T, Layout L, int V, int R>
__device__ __forceinline__ void forward_part_stats(const GroupGeometry& g, const GroupView<L, V>& view, const T* x,
                                                   GroupSmem<WelfordAcc<AccT<T>>, AccT<T>>& sm,
                                                   Pack<T, V> (&regs)[R > 0 ? R : 1]) {
  using acc_t = AccT<T>;
  using A = WelfordAcc<acc_t>;
  constexpr int NL = kLanes<L, V>;
  A acc[NL];
#pragma unroll
  for (int j = 0; j < NL; ++j) acc[j] = A::identity();
  Pack<T, V>* copy = reinterpret_cast<Pack<T, V>*>(sm.data);
  auto add = [&](const Pack<T, V>& pack) {
    acc_t v[V];
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = static_cast<acc_t>(pack.v[j]);
    welford_add<L, V>(acc, v);
  };
  if (view.active(g)) {
    view.template for_each<R>(
        g,
        [&](int64_t off, int i) {
          regs[i] = *reinterpret_cast<const Pack<T, V>*>(x + off);
          add(regs[i]);
        },
        [&](int64_t off, int64_t slot) {
          const Pack<T, V> pack = *reinterpret_cast<const Pack<T, V>*>(x + off);
          if constexpr (R > 0) copy[slot] = pack;  // resident: kept for the element-wise pass
          add(pack);
        });
  }
  reduce_slots<A, NL>(acc, L == Layout::NCHW ? 1 : static_cast<int>(g.Wv), sm.sh, sm.out);
}

// l2_blocked, first pass of a block: its part's Welford accumulators to ws (parts, 3, C).
template <typename T, Layout L, int V>
__device__ __forceinline__ void forward_partial(const GroupGeometry& g, const TrainForwardArgs<T>& a, Place at) {
  using acc_t = AccT<T>;
  GroupView<L, V> view(g, at);
  GroupSmem<WelfordAcc<acc_t>, acc_t> sm(g.cg);
  Pack<T, V> none[1];
  forward_part_stats<T, L, V, 0>(g, view, a.x, sm, none);
  const int64_t c = view.c0 + threadIdx.x;
  if (static_cast<int>(threadIdx.x) < g.cg && c < g.C) sm.out[threadIdx.x].store(a.ws + at.part * 3 * g.C + c, g.C);
}

// Resident (one part, the slice in registers and shared memory) or l2_blocked second pass (merges ws):
// the statistics, part 0 writes mean/invstd and updates the running statistics, then y for the part.
template <typename T, Layout L, int V, bool Resident>
__device__ __forceinline__ void forward_apply(const GroupGeometry& g, const TrainForwardArgs<T>& a, Place at) {
  using acc_t = AccT<T>;
  using A = WelfordAcc<acc_t>;
  constexpr int R = Resident ? kRegVecsForward : 0;
  GroupView<L, V> view(g, at);
  GroupSmem<A, acc_t> sm(g.cg);
  Pack<T, V> regs[R > 0 ? R : 1];
  if constexpr (Resident) {
    forward_part_stats<T, L, V, R>(g, view, a.x, sm, regs);
  } else {
    const int64_t c = view.c0 + threadIdx.x;
    if (static_cast<int>(threadIdx.x) < g.cg && c < g.C) {
      A acc = A::identity();
      for (int64_t s = 0; s < a.parts; ++s) acc.merge(A::load(a.ws + s * 3 * g.C + c, g.C));
      sm.out[threadIdx.x] = acc;
    }
    __syncthreads();
  }
  const int64_t c = view.c0 + threadIdx.x;
  if (static_cast<int>(threadIdx.x) < g.cg && c < g.C) {
    const A& acc = sm.out[threadIdx.x];
    const acc_t mean = acc.mean, var = acc.m2 / acc.n;
    const acc_t invstd = acc_t(1) / sqrt(var + a.eps);
    const acc_t scale = a.weight[c] * invstd;
    sm.consts[2 * threadIdx.x] = scale;
    sm.consts[2 * threadIdx.x + 1] = a.bias[c] - mean * scale;
    if (at.part == 0) {
      a.mean[c] = mean;
      a.invstd[c] = invstd;
      if (a.running_mean != nullptr) a.running_mean[c] = (acc_t(1) - a.momentum) * a.running_mean[c] + a.momentum * mean;
      if (a.running_var != nullptr) {
        a.running_var[c] = (acc_t(1) - a.momentum) * a.running_var[c] + a.momentum * var * a.unbiased;
      }
    }
  }
  __syncthreads();
  if (!view.active(g)) return;
  acc_t scale[V], shift[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    scale[j] = sm.consts[2 * view.slot(g, j)];
    shift[j] = sm.consts[2 * view.slot(g, j) + 1];
  }
  const T* copy = reinterpret_cast<const T*>(sm.data);
  auto apply = [&](int64_t off, const T* in) {
    acc_t v[V], out[V];
    load_vec<V>(in, v);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const acc_t z = v[j] * scale[j] + shift[j];
      out[j] = z * sigmoid(z);
    }
    store_vec<V>(a.y + off, out);
  };
  view.template for_each<R>(
      g, [&](int64_t off, int i) { apply(off, regs[i].v); },
      [&](int64_t off, int64_t slot) { apply(off, Resident ? copy + slot * V : a.x + off); });
}

// The two-pass (l2_blocked) launch: blocks take runs of run_groups channel groups in ticket order, run 0's
// first pass (groups x parts blocks, each reducing its part into ws), run 0's second pass (as many blocks,
// each waiting until the run's first pass is done, then merging ws and re-reading its part), run 1's
// first pass, and so on: the second pass of a run re-reads what its first pass left in L2 a moment ago.
struct TwoPassSchedule {
  int64_t groups, run_groups, parts;
  unsigned* counters;  // [0]: the next ticket; [1 + r]: blocks done with run r's first pass; zero on entry

  // Total blocks of the launch.
  int64_t blocks() const { return 2 * groups * parts; }
  int64_t runs() const { return ceil_div(groups, run_groups); }
};

struct TwoPassTicket {
  Place at;
  int64_t run;
  unsigned run_blocks;  // blocks of each pass of this run
  bool second;          // the second pass
};

__device__ __forceinline__ TwoPassTicket claim_two_pass(const TwoPassSchedule& s) {
  const int64_t t = claim_ticket(s.counters);
  const int64_t per_run = 2 * s.run_groups * s.parts;
  const int64_t run = t / per_run, local = t - run * per_run;
  const int64_t rg = min(s.run_groups, s.groups - run * s.run_groups);
  const bool second = local >= rg * s.parts;
  const int64_t i = second ? local - rg * s.parts : local;
  return TwoPassTicket{Place{run * s.run_groups + i % rg, i / rg}, run, static_cast<unsigned>(rg * s.parts), second};
}

// Resident plan: one block per channel group, blockIdx.x.
template <typename T, Layout L, int V>
__global__ void __launch_bounds__(kGroupThreads) bn_train_forward_kernel(GroupGeometry g, TrainForwardArgs<T> a) {
  forward_apply<T, L, V, true>(g, a, Place{static_cast<int64_t>(blockIdx.x), 0});
}

// The block's ticket of the two-pass schedule: first(place) for a first-pass ticket, then counted done in
// its run; second(place) for a second-pass ticket, once its run's first pass is done.
template <class First, class Second>
__device__ __forceinline__ void run_two_pass(const TwoPassSchedule& s, First&& first, Second&& second) {
  const TwoPassTicket t = claim_two_pass(s);
  if (!t.second) {
    first(t.at);
    add_count(s.counters + 1 + t.run);
  } else {
    wait_count(s.counters + 1 + t.run, t.run_blocks);
    second(t.at);
  }
}

template <typename T, Layout L, int V>
__global__ void __launch_bounds__(kGroupThreads) bn_train_forward_two_pass_kernel(GroupGeometry g, TrainForwardArgs<T> a,
                                                                                  TwoPassSchedule s) {
  run_two_pass(
      s, [&](Place at) { forward_partial<T, L, V>(g, a, at); },
      [&](Place at) { forward_apply<T, L, V, false>(g, a, at); });
}

template <typename T>
struct TrainBackwardArgs {
  using acc_t = AccT<T>;
  const T* dy;
  const T* x;
  T* dx;
  const acc_t* mean;
  const acc_t* invstd;
  const acc_t* weight;
  const acc_t* bias;
  acc_t* sum_dz;
  acc_t* sum_dz_xhat;
  acc_t* ws;  // l2_blocked: (parts, 2, C) partial sums
  acc_t inv_count;
  bool training;  // false: dx = scale dz
  int64_t parts;
};

// Per-slot constants of the thread's lanes: scale, shift, mean, invstd.
template <typename T, Layout L, int V>
__device__ __forceinline__ void load_backward_consts(const GroupGeometry& g, const GroupView<L, V>& view,
                                                     const TrainBackwardArgs<T>& a, AccT<T> (&k)[4][V]) {
  using acc_t = AccT<T>;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int64_t c = view.c0 + view.slot(g, j);
    const acc_t invstd = a.invstd[c], scale = a.weight[c] * invstd;
    k[0][j] = scale;
    k[1][j] = a.bias[c] - a.mean[c] * scale;
    k[2][j] = a.mean[c];
    k[3][j] = invstd;
  }
}

// Vectors of the block's part that a resident block keeps in shared memory (beyond R per thread).
template <int R, Layout L, int V>
__device__ __forceinline__ int64_t smem_vectors(const GroupView<L, V>& view) {
  return max(int64_t(0), view.ke - view.kb - static_cast<int64_t>(R) * blockDim.x);
}

// Sums (dz, dz xhat) of the block's part by slot into sm.out. Resident (R > 0): dy and x are also kept,
// the thread's first R vectors of each in regs_dy / regs_x, the rest in shared memory (dy at data, x
// after the part's shared dy).
template <typename T, Layout L, int V, int R>
__device__ __forceinline__ void backward_part_sums(const GroupGeometry& g, const GroupView<L, V>& view,
                                                   const TrainBackwardArgs<T>& a, const AccT<T> (&k)[4][V],
                                                   GroupSmem<SumAcc<AccT<T>, 2>, AccT<T>>& sm,
                                                   Pack<T, V> (&regs_dy)[R > 0 ? R : 1],
                                                   Pack<T, V> (&regs_x)[R > 0 ? R : 1]) {
  using acc_t = AccT<T>;
  using A = SumAcc<acc_t, 2>;
  constexpr int NL = kLanes<L, V>;
  A acc[NL];
#pragma unroll
  for (int j = 0; j < NL; ++j) acc[j] = A::identity();
  Pack<T, V>* copy_dy = reinterpret_cast<Pack<T, V>*>(sm.data);
  Pack<T, V>* copy_x = copy_dy + smem_vectors<R>(view);
  auto add = [&](const Pack<T, V>& pdy, const Pack<T, V>& px) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const acc_t xv = static_cast<acc_t>(px.v[j]);
      const acc_t dz = swish_grad(static_cast<acc_t>(pdy.v[j]), xv * k[0][j] + k[1][j]);
      const int lane = L == Layout::NCHW ? 0 : j;
      acc[lane].s[0] += dz;
      acc[lane].s[1] += dz * ((xv - k[2][j]) * k[3][j]);
    }
  };
  if (view.active(g)) {
    view.template for_each<R>(
        g,
        [&](int64_t off, int i) {
          regs_dy[i] = *reinterpret_cast<const Pack<T, V>*>(a.dy + off);
          regs_x[i] = *reinterpret_cast<const Pack<T, V>*>(a.x + off);
          add(regs_dy[i], regs_x[i]);
        },
        [&](int64_t off, int64_t slot) {
          const Pack<T, V> pdy = *reinterpret_cast<const Pack<T, V>*>(a.dy + off);
          const Pack<T, V> px = *reinterpret_cast<const Pack<T, V>*>(a.x + off);
          if constexpr (R > 0) {  // resident: kept for the element-wise pass
            copy_dy[slot] = pdy;
            copy_x[slot] = px;
          }
          add(pdy, px);
        });
  }
  reduce_slots<A, NL>(acc, L == Layout::NCHW ? 1 : static_cast<int>(g.Wv), sm.sh, sm.out);
}

// l2_blocked, first pass of a block: its part's sums to ws (parts, 2, C).
template <typename T, Layout L, int V>
__device__ __forceinline__ void backward_partial(const GroupGeometry& g, const TrainBackwardArgs<T>& a, Place at) {
  using acc_t = AccT<T>;
  GroupView<L, V> view(g, at);
  GroupSmem<SumAcc<acc_t, 2>, acc_t> sm(g.cg);
  acc_t k[4][V];
  if (view.active(g)) load_backward_consts<T, L, V>(g, view, a, k);
  Pack<T, V> none[1];
  backward_part_sums<T, L, V, 0>(g, view, a, k, sm, none, none);
  const int64_t c = view.c0 + threadIdx.x;
  if (static_cast<int>(threadIdx.x) < g.cg && c < g.C) sm.out[threadIdx.x].store(a.ws + at.part * 2 * g.C + c, g.C);
}

// Resident or l2_blocked second pass: the sums (part 0 writes them: dbias and dweight), then dx.
template <typename T, Layout L, int V, bool Resident>
__device__ __forceinline__ void backward_apply(const GroupGeometry& g, const TrainBackwardArgs<T>& a, Place at) {
  using acc_t = AccT<T>;
  using A = SumAcc<acc_t, 2>;
  constexpr int R = Resident ? kRegVecsBackward : 0;
  GroupView<L, V> view(g, at);
  GroupSmem<A, acc_t> sm(g.cg);
  acc_t k[4][V];
  if (view.active(g)) load_backward_consts<T, L, V>(g, view, a, k);
  Pack<T, V> regs_dy[R > 0 ? R : 1], regs_x[R > 0 ? R : 1];
  if constexpr (Resident) {
    backward_part_sums<T, L, V, R>(g, view, a, k, sm, regs_dy, regs_x);
  } else {
    const int64_t c = view.c0 + threadIdx.x;
    if (static_cast<int>(threadIdx.x) < g.cg && c < g.C) {
      A acc = A::identity();
      for (int64_t s = 0; s < a.parts; ++s) acc.merge(A::load(a.ws + s * 2 * g.C + c, g.C));
      sm.out[threadIdx.x] = acc;
    }
    __syncthreads();
  }
  const int64_t c = view.c0 + threadIdx.x;
  if (static_cast<int>(threadIdx.x) < g.cg && c < g.C) {
    const A& acc = sm.out[threadIdx.x];
    sm.consts[2 * threadIdx.x] = a.training ? acc.s[0] * a.inv_count : acc_t(0);
    sm.consts[2 * threadIdx.x + 1] = a.training ? acc.s[1] * a.inv_count : acc_t(0);
    if (at.part == 0) {
      a.sum_dz[c] = acc.s[0];
      a.sum_dz_xhat[c] = acc.s[1];
    }
  }
  __syncthreads();
  if (!view.active(g)) return;
  acc_t mean_dz[V], mean_dz_xhat[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    mean_dz[j] = sm.consts[2 * view.slot(g, j)];
    mean_dz_xhat[j] = sm.consts[2 * view.slot(g, j) + 1];
  }
  const T* copy_dy = reinterpret_cast<const T*>(sm.data);
  const T* copy_x = copy_dy + smem_vectors<R>(view) * V;
  auto apply = [&](int64_t off, const T* in_dy, const T* in_x) {
    acc_t vdy[V], vx[V], out[V];
    load_vec<V>(in_dy, vdy);
    load_vec<V>(in_x, vx);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      acc_t dz = swish_grad(vdy[j], vx[j] * k[0][j] + k[1][j]);
      dz -= mean_dz[j] + (vx[j] - k[2][j]) * k[3][j] * mean_dz_xhat[j];
      out[j] = dz * k[0][j];
    }
    store_vec<V>(a.dx + off, out);
  };
  view.template for_each<R>(
      g, [&](int64_t off, int i) { apply(off, regs_dy[i].v, regs_x[i].v); },
      [&](int64_t off, int64_t slot) {
        apply(off, Resident ? copy_dy + slot * V : a.dy + off, Resident ? copy_x + slot * V : a.x + off);
      });
}

template <typename T, Layout L, int V>
__global__ void __launch_bounds__(kGroupThreads) bn_train_backward_kernel(GroupGeometry g, TrainBackwardArgs<T> a) {
  backward_apply<T, L, V, true>(g, a, Place{static_cast<int64_t>(blockIdx.x), 0});
}

// The two-pass backward: the schedule of bn_train_forward_two_pass_kernel.
template <typename T, Layout L, int V>
__global__ void __launch_bounds__(kGroupThreads) bn_train_backward_two_pass_kernel(GroupGeometry g,
                                                                                   TrainBackwardArgs<T> a,
                                                                                   TwoPassSchedule s) {
  run_two_pass(
      s, [&](Place at) { backward_partial<T, L, V>(g, a, at); },
      [&](Place at) { backward_apply<T, L, V, false>(g, a, at); });
}

// The plan of a training call: which kernels, the group geometry and the launch runs.
struct BNPlan {
  bool resident;
  int V;
  GroupGeometry geo;
  int64_t groups;       // channel groups
  int64_t run_groups;   // groups per pair of launches (l2_blocked)
  int64_t parts;
  size_t smem;
};

// inputs: 1 (x) forward, 2 (dy, x) backward; scratch(cg): shared memory besides the slice copy.
// nvae_fast/cuda/bn_swish.py's plan() mirrors this choice.
template <class Smem>
BNPlan bn_plan(Layout layout, int64_t N, int64_t C, int64_t HW, size_t elem, bool aligned, int inputs) {
  BNPlan p{};
  const int vv = static_cast<int>(16 / elem);
  p.V = aligned && (layout == Layout::NCHW ? HW % vv == 0 : C % vv == 0) ? vv : 1;
  const int64_t n = N * HW;
  const size_t budget = max_dynamic_smem_optin();
  const int64_t reg_vecs = static_cast<int64_t>(inputs == 1 ? kRegVecsForward : kRegVecsBackward) * kGroupThreads;
  // Shared memory of a resident block of cg channels: the vectors beyond the registers' share.
  auto resident_bytes = [&](int cg) {
    const int v = layout == Layout::NCHW || cg % p.V == 0 ? p.V : 1;
    const int64_t vectors = n * cg / v;
    return Smem::scratch(cg) +
           static_cast<size_t>(inputs) * static_cast<size_t>(std::max<int64_t>(0, vectors - reg_vecs)) * v * elem;
  };
  int cg = 1;
  if (layout == Layout::NHWC) {
    // Up to kMaxGroupChannels (no more than C needs) channels of a row per group; for the resident
    // plan halved until the slices fit (below V channels a group takes single-element vectors).
    const int want = std::max(p.V, static_cast<int>(std::min<int64_t>(kMaxGroupChannels, pow2_ceil(C))));
    cg = want;
    while (cg > 1 && resident_bytes(cg) > budget) cg /= 2;
    if (resident_bytes(cg) > budget) {
      cg = want;
    } else if (cg < p.V) {
      p.V = 1;
    }
  }
  p.resident = resident_bytes(cg) <= budget;
  p.geo.N = N;
  p.geo.C = C;
  p.geo.HW = HW;
  p.geo.cg = cg;
  if (layout == Layout::NCHW) {
    p.geo.R = N;
    p.geo.Wv = HW / p.V;
    p.geo.stride = C * HW;
  } else {
    p.geo.R = N * HW;
    p.geo.Wv = cg / p.V;
    p.geo.stride = C;
  }
  p.groups = ceil_div(C, cg);
  const int64_t vectors = p.geo.R * p.geo.Wv;
  if (p.resident) {
    p.run_groups = p.groups;
    p.parts = 1;
    p.geo.chunk = vectors;
    p.smem = resident_bytes(cg);
    return p;
  }
  const int64_t group_bytes = static_cast<int64_t>(inputs) * n * cg * static_cast<int64_t>(elem);
  p.run_groups = clamp64(l2_bytes() / 2 / std::max<int64_t>(group_bytes, 1), 1, p.groups);
  // Enough blocks for the device, parts of at least 16 vectors per thread, aligned to whole rows in NHWC.
  const int64_t target = static_cast<int64_t>(multiprocessors()) * 4;
  p.parts = clamp64(ceil_div(target, p.run_groups), 1,
                    std::min<int64_t>(kMaxGridYZ, std::max<int64_t>(1, vectors / (kGroupThreads * 16))));
  int64_t chunk = ceil_div(vectors, p.parts);
  if (layout == Layout::NHWC) chunk = ceil_div(chunk, p.geo.Wv) * p.geo.Wv;
  p.geo.chunk = chunk;
  p.parts = ceil_div(vectors, chunk);
  p.smem = Smem::scratch(cg);
  return p;
}

// The two-pass launch's schedule, its counters zeroed (a memset) in stream order.
TwoPassSchedule two_pass_schedule(const BNPlan& p, const at::Tensor& x, at::Tensor& counters) {
  TwoPassSchedule s{p.groups, p.run_groups, p.parts, nullptr};
  counters = at::empty({1 + s.runs()}, x.options().dtype(at::kInt));
  s.counters = reinterpret_cast<unsigned*>(counters.data_ptr<int>());
  zero_async(s.counters, counters.nbytes(), current_stream());
  return s;
}

template <typename T, Layout L, int V>
void run_train_forward(const BNPlan& p, TrainForwardArgs<T> a, const at::Tensor& x) {
  using acc_t = AccT<T>;
  const cudaStream_t stream = current_stream();
  if (p.resident) {
    constexpr auto kernel = bn_train_forward_kernel<T, L, V>;
    allow_dynamic_smem<kernel>(p.smem);
    launch<kernel>(dim3(static_cast<unsigned>(p.groups)), kGroupThreads, p.smem, stream, p.geo, a);
    return;
  }
  const at::Tensor ws = at::empty({p.parts * 3 * p.geo.C}, x.options().dtype(acc_dtype(x.scalar_type())));
  a.ws = ws.data_ptr<acc_t>();
  a.parts = p.parts;
  at::Tensor counters;
  const TwoPassSchedule s = two_pass_schedule(p, x, counters);
  launch<bn_train_forward_two_pass_kernel<T, L, V>>(dim3(static_cast<unsigned>(s.blocks())), kGroupThreads, p.smem,
                                                    stream, p.geo, a, s);
}

template <typename T, Layout L, int V>
void run_train_backward(const BNPlan& p, TrainBackwardArgs<T> a, const at::Tensor& x) {
  using acc_t = AccT<T>;
  const cudaStream_t stream = current_stream();
  if (p.resident) {
    constexpr auto kernel = bn_train_backward_kernel<T, L, V>;
    allow_dynamic_smem<kernel>(p.smem);
    launch<kernel>(dim3(static_cast<unsigned>(p.groups)), kGroupThreads, p.smem, stream, p.geo, a);
    return;
  }
  const at::Tensor ws = at::empty({p.parts * 2 * p.geo.C}, x.options().dtype(acc_dtype(x.scalar_type())));
  a.ws = ws.data_ptr<acc_t>();
  a.parts = p.parts;
  at::Tensor counters;
  const TwoPassSchedule s = two_pass_schedule(p, x, counters);
  launch<bn_train_backward_two_pass_kernel<T, L, V>>(dim3(static_cast<unsigned>(s.blocks())), kGroupThreads, p.smem,
                                                     stream, p.geo, a, s);
}

template <typename T>
void dispatch_train_forward(const BNPlan& p, Layout layout, const TrainForwardArgs<T>& a, const at::Tensor& x) {
  constexpr int VV = kVec<T>;
  if (layout == Layout::NCHW) {
    if (p.V == VV) {
      run_train_forward<T, Layout::NCHW, VV>(p, a, x);
    } else {
      run_train_forward<T, Layout::NCHW, 1>(p, a, x);
    }
  } else if (p.V == VV) {
    run_train_forward<T, Layout::NHWC, VV>(p, a, x);
  } else {
    run_train_forward<T, Layout::NHWC, 1>(p, a, x);
  }
}

template <typename T>
void dispatch_train_backward(const BNPlan& p, Layout layout, const TrainBackwardArgs<T>& a, const at::Tensor& x) {
  constexpr int VV = kVec<T>;
  if (layout == Layout::NCHW) {
    if (p.V == VV) {
      run_train_backward<T, Layout::NCHW, VV>(p, a, x);
    } else {
      run_train_backward<T, Layout::NCHW, 1>(p, a, x);
    }
  } else if (p.V == VV) {
    run_train_backward<T, Layout::NHWC, VV>(p, a, x);
  } else {
    run_train_backward<T, Layout::NHWC, 1>(p, a, x);
  }
}

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_swish_train_forward(const at::Tensor& x, const at::Tensor& weight,
                                                                      const at::Tensor& bias,
                                                                      const std::optional<at::Tensor>& running_mean,
                                                                      const std::optional<at::Tensor>& running_var,
                                                                      double momentum, double eps) {
  constexpr const char* op = "nvae_fast::bn_swish_train_forward";
  const ActShape s = check_activation(op, "x", x);
  const at::ScalarType acc = acc_dtype(x.scalar_type());
  check_vector(op, "weight", weight, s.C, acc, "one per channel of x");
  check_vector(op, "bias", bias, s.C, acc, "one per channel of x");
  if (running_mean) check_vector(op, "running_mean", *running_mean, s.C, acc, "one per channel of x");
  if (running_var) check_vector(op, "running_var", *running_var, s.C, acc, "one per channel of x");
  const int64_t n = s.N * s.HW;
  TORCH_CHECK(n > 1, op, ": expected more than 1 value per channel when training, got x of shape ", x.sizes());
  check_device(op, {{"x", &x}, {"weight", &weight}, {"bias", &bias}});
  if (running_mean) check_device(op, {{"x", &x}, {"running_mean", &*running_mean}});
  if (running_var) check_device(op, {{"x", &x}, {"running_var", &*running_var}});
  const DeviceGuard guard(x.device());
  const auto opts = x.options().dtype(acc);
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({s.C}, opts);
  at::Tensor invstd = at::empty({s.C}, opts);
  if (s.C == 0) return {y, mean, invstd};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_swish_train_forward", [&] {
    using acc_t = AccT<scalar_t>;
    const BNPlan p = bn_plan<GroupSmem<WelfordAcc<acc_t>, acc_t>>(
        s.layout, s.N, s.C, s.HW, sizeof(scalar_t), aligned16(x.data_ptr()) && aligned16(y.data_ptr()), 1);
    TrainForwardArgs<scalar_t> a{};
    a.x = x.data_ptr<scalar_t>();
    a.y = y.data_ptr<scalar_t>();
    a.weight = weight.data_ptr<acc_t>();
    a.bias = bias.data_ptr<acc_t>();
    a.mean = mean.data_ptr<acc_t>();
    a.invstd = invstd.data_ptr<acc_t>();
    a.running_mean = running_mean ? running_mean->data_ptr<acc_t>() : nullptr;
    a.running_var = running_var ? running_var->data_ptr<acc_t>() : nullptr;
    a.momentum = static_cast<acc_t>(momentum);
    a.eps = static_cast<acc_t>(eps);
    a.unbiased = static_cast<acc_t>(static_cast<double>(n) / static_cast<double>(n - 1));
    a.parts = 1;
    dispatch_train_forward<scalar_t>(p, s.layout, a, x);
  });
  return {y, mean, invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_swish_backward(const at::Tensor& dy, const at::Tensor& x,
                                                                 const at::Tensor& mean, const at::Tensor& invstd,
                                                                 const at::Tensor& weight, const at::Tensor& bias,
                                                                 std::optional<int64_t> count) {
  constexpr const char* op = "nvae_fast::bn_swish_backward";
  const ActShape s = check_activation(op, "x", x);
  check_grad(op, dy, x, s.layout);
  check_params(op, x, mean, invstd, weight, bias);
  TORCH_CHECK(!count.has_value() || *count > 0, op, ": count must be positive (the number of values per channel), got ",
              count.value_or(0));
  check_device(op, {{"x", &x}, {"dy", &dy}, {"mean", &mean}, {"invstd", &invstd}, {"weight", &weight},
                    {"bias", &bias}});
  const DeviceGuard guard(x.device());
  const auto opts = x.options().dtype(acc_dtype(x.scalar_type()));
  at::Tensor dx = at::empty_like(x);
  at::Tensor sum_dz = at::empty({s.C}, opts);
  at::Tensor sum_dz_xhat = at::empty({s.C}, opts);
  if (s.C == 0) return {dx, sum_dz, sum_dz_xhat};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_swish_backward", [&] {
    using acc_t = AccT<scalar_t>;
    const bool aligned = aligned16(dy.data_ptr()) && aligned16(x.data_ptr()) && aligned16(dx.data_ptr());
    const BNPlan p = bn_plan<GroupSmem<SumAcc<acc_t, 2>, acc_t>>(s.layout, s.N, s.C, s.HW, sizeof(scalar_t), aligned, 2);
    TrainBackwardArgs<scalar_t> a{};
    a.dy = dy.data_ptr<scalar_t>();
    a.x = x.data_ptr<scalar_t>();
    a.dx = dx.data_ptr<scalar_t>();
    a.mean = mean.data_ptr<acc_t>();
    a.invstd = invstd.data_ptr<acc_t>();
    a.weight = weight.data_ptr<acc_t>();
    a.bias = bias.data_ptr<acc_t>();
    a.sum_dz = sum_dz.data_ptr<acc_t>();
    a.sum_dz_xhat = sum_dz_xhat.data_ptr<acc_t>();
    a.inv_count = static_cast<acc_t>(1.0 / static_cast<double>(count.value_or(1)));
    a.training = count.has_value();
    a.parts = 1;
    dispatch_train_backward<scalar_t>(p, s.layout, a, x);
  });
  return {dx, sum_dz, sum_dz_xhat};
}

}  // namespace nvae_fast
