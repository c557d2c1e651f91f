// Host-side launch helpers: device occupancy targets and small integer utilities.
#pragma once

#include <algorithm>
#include <cstdint>

#include "runtime.h"

namespace nvae_fast {

constexpr int kThreads = 256;            // threads per block of the streaming kernels
constexpr int64_t kMaxGridYZ = 65535;    // CUDA limit of gridDim.y and gridDim.z

// Blocks of kThreads that keep every SM of the current device busy (8 resident blocks per SM).
inline int64_t target_blocks() {
  return static_cast<int64_t>(multiprocessors()) * 8;
}

inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return std::max(lo, std::min(v, hi)); }

// Smallest power of two >= v (v >= 1).
inline int pow2_ceil(int64_t v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}

}  // namespace nvae_fast
