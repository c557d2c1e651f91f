// Blocks of one launch that hand work to each other through global counters (zeroed before the launch).
//
//   last_ticket   the block that takes the last of `total` tickets runs a finishing step after the others;
//   claim_ticket  blocks take their work items in ticket order, so a block may wait for items of smaller
//                 tickets (wait_count): those were taken by blocks that already run and never wait on a
//                 larger ticket, which is what makes the wait finish on any GPU, whatever its occupancy.
//
// In the CPU emulation blocks run one after another in blockIdx order, which is also ticket order: a
// wait finds its count reached, and one that would not (a block waiting on later work) is an error
// instead of a hang.
#pragma once

#include "runtime.h"

namespace nvae_fast {

// *p read from L2, past the SM's L1: for values another block of the same launch wrote after this SM
// may have cached the line.
template <typename T>
__device__ __forceinline__ T load_cg(const T* p) {
#ifdef NVAE_FAST_EMULATE
  return *p;
#else
  return __ldcg(p);
#endif
}

// True in every thread of the block that takes the last of `total` tickets of counter *t. The fences
// make this block's global writes visible to the block that takes the last ticket, and that block's
// later reads see every other block's writes.
__device__ __forceinline__ bool last_ticket(unsigned* t, unsigned total) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(t, 1u) == total - 1;
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// The next ticket of counter *t, in every thread of the block.
__device__ __forceinline__ unsigned claim_ticket(unsigned* t) {
  __shared__ unsigned ticket;
  if (threadIdx.x == 0) ticket = atomicAdd(t, 1u);
  __syncthreads();
  const unsigned mine = ticket;
  __syncthreads();  // every thread has read it before a later claim of this block may overwrite it
  return mine;
}

// Adds one to *count once every thread of the block has made its global writes visible to the device.
__device__ __forceinline__ void add_count(unsigned* count) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) atomicAdd(count, 1u);
}

// Returns, in every thread of the block, once *count has reached `target` (see the header comment for
// why it does); reads after it see the writes that the counted blocks made before add_count.
__device__ __forceinline__ void wait_count(const unsigned* count, unsigned target) {
  if (threadIdx.x == 0) {
#ifdef NVAE_FAST_EMULATE
    TORCH_CHECK(*count >= target, "a block waits for ", target, " finished work items and only ", *count,
                " are done: it waits on work of a later ticket, which would hang a GPU");
#else
    while (*reinterpret_cast<const volatile unsigned*>(count) < target) __nanosleep(64);
    __threadfence();
#endif
  }
  __syncthreads();
}

}  // namespace nvae_fast
