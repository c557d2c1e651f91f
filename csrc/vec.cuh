// Device helpers: accumulation types, 16-byte vector loads/stores, fast 32-bit division,
// numerically safe sigmoid. Included by the .cu files only.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "runtime.h"

namespace nvae_fast {

// Accumulation type: double for double, float for float, half and bfloat16.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using AccT = typename AccOf<T>::type;

// Elements of T in one 16-byte vector (8 for half/bfloat16, 4 for float, 2 for double).
template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

// V elements of T moved as one aligned access (V * sizeof(T) bytes: 16 for V = kVec<T>).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// Loads V consecutive elements at p (aligned to V * sizeof(T) bytes) and converts them to A.
template <int V, typename T, typename A>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, A (&out)[V]) {
  const Pack<T, V> pack = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
  for (int k = 0; k < V; ++k) out[k] = static_cast<A>(pack.v[k]);
}

// Converts V values to T and stores them at p (aligned to V * sizeof(T) bytes).
template <int V, typename T, typename A>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const A (&in)[V]) {
  Pack<T, V> pack;
#pragma unroll
  for (int k = 0; k < V; ++k) pack.v[k] = static_cast<T>(in[k]);
  *reinterpret_cast<Pack<T, V>*>(p) = pack;
}

// Host: true when p is aligned for 16-byte vector accesses.
inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// 1 / (1 + e^-z); the correctly rounded reciprocal equals the division 1.0f / (...), without its slow path.
__device__ __forceinline__ float sigmoid(float z) { return __frcp_rn(1.0f + expf(-z)); }
__device__ __forceinline__ double sigmoid(double z) { return 1.0 / (1.0 + exp(-z)); }

// Division by a run-time constant 0 < d < 2^31 with a multiply-high and a shift (round-up method of
// Granlund and Montgomery): for s = ceil(log2 d) and m = floor(2^32 (2^s - d) / d) + 1,
// floor(n / d) = (umulhi(n, m) + n) >> s for every 32-bit n (the sum taken in 64 bits).
struct FastDivmod {
  uint32_t d = 1, m = 1, s = 0;

  FastDivmod() = default;
  explicit FastDivmod(uint32_t divisor) : d(divisor) {
    s = 0;
    while ((uint64_t{1} << s) < d) ++s;
    m = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << s) - d)) / d + 1);
  }

  __device__ __forceinline__ uint32_t div(uint32_t n) const {
    const uint32_t t = __umulhi(n, m);
    return static_cast<uint32_t>((static_cast<uint64_t>(t) + n) >> s);
  }
  // q = n / d and r = n % d.
  __device__ __forceinline__ void divmod(uint32_t n, uint32_t& q, uint32_t& r) const {
    q = div(n);
    r = n - q * d;
  }
};

// floor(a / b) for b > 0 and any sign of a (host and device).
__host__ __device__ __forceinline__ int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace nvae_fast
