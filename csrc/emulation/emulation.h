// CPU emulation of the parts of the CUDA execution model that the nvae_fast kernels use, so that the
// same kernel sources run on CPU tensors and can be tested on a machine without a GPU
// (built by nvae_fast.cuda.emulation with -DNVAE_FAST_EMULATE; csrc/runtime.h includes this header
// instead of the CUDA headers).
//
// Model: a launch runs its blocks one after another on the calling thread. Every CUDA thread of a block
// is a fiber with its own stack; a fiber runs until it reaches a synchronisation point and then yields
// to the block's scheduler:
//   __syncthreads()          waits until every thread of the block that has not exited is waiting there;
//   __shfl_down_sync(m, ...) waits (twice: write, then read) until every lane named in m is at the same
//                            shuffle with the same mask.
// Threads are numbered x fastest, warps are 32 consecutive threads, as on the GPU. Dynamic shared memory
// is filled with 0xff bytes (NaN for floating point) at the start of every block, so reading shared
// memory that the block did not write shows up in the results. Static __shared__ arrays are
// thread_local statics (one instance per OS thread, shared by the blocks it runs).
//
// Errors that a GPU would report, or that are undefined behaviour there, raise c10::Error (RuntimeError
// in Python) naming the kernel's launch: an invalid launch configuration (block size, grid limits,
// more than 48 KiB of dynamic shared memory for a kernel that has not opted in to more, more than the
// opt-in maximum for one that has), a shuffle whose mask leaves out the calling lane or the
// source lane, names a lane that does not exist or has exited, or that lanes reach with different masks,
// and a block whose waiting threads can never be released (__syncthreads in divergent code).
//
// What it does not model: concurrency between threads outside synchronisation points (so it finds no
// data races), the memory model, warp-synchronous code without *_sync primitives, streams (launches are
// synchronous), and the device's rounding of transcendental functions (the host's libm is used).
#pragma once

#include <c10/util/Exception.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

struct CUstream_st;  // never defined: streams are not modelled
using cudaStream_t = CUstream_st*;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __align__(n) alignas(n)

// Coordinates of the fiber that runs, set by the scheduler before it resumes a fiber.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace nvae_fast {
namespace emu {

constexpr size_t kMaxDynamicSmem = 48 * 1024;
// The opt-in maximum of dynamic shared memory per block of the emulated device (sm_90: 227 KiB), which a
// kernel may use once set_max_dynamic_smem has raised its limit.
constexpr size_t kMaxDynamicSmemOptin = 227 * 1024;

// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) for the kernel that
// kernel_name gives `kernel` (later launches of it may use up to `bytes`); raises c10::Error when bytes
// exceeds kMaxDynamicSmemOptin.
void set_max_dynamic_smem(const std::string& kernel, size_t bytes);

// Multiprocessors of the emulated device, for the kernels' grid-size heuristics: 132 (an H100 SXM or
// H200), or NVAE_FAST_EMULATE_SMS when set (read at every call; few SMs make small tensors take the
// grid-stride and single-pass paths that only large tensors take on a real device).
int multiprocessors();

// L2 bytes of the emulated device, for plans sized to stay in L2: 50 MiB (an H100 SXM), or
// NVAE_FAST_EMULATE_L2_BYTES when set (read at every call; a small L2 makes small tensors take the plans
// of many runs that only large tensors take on a real device).
int64_t l2_bytes();

// Runs body() as every thread of every block of a launch (grid, block); raises c10::Error for an invalid
// configuration or a synchronisation error (see the header comment), naming the kernel by `signature`
// (the __PRETTY_FUNCTION__ of the launch, whose template argument is the kernel).
void run_grid(const char* signature, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body);

// "kernel<args>" out of a launch's signature "void nvae_fast::launch(...) [with auto kernel = kernel<args>;
// Args = {...}]": the name errors and launch records give a kernel.
inline std::string kernel_name(const char* signature) {
  const std::string s(signature);
  const size_t begin = s.find("kernel = ");
  if (begin == std::string::npos) return s;
  const size_t end = s.find_first_of(";]", begin);
  return s.substr(begin + 9, end == std::string::npos ? std::string::npos : end - begin - 9);
}

// Synchronisation points, called from kernel code (a fiber).
void sync_block();
// Lane `lane` of the calling warp publishes `bits` and receives the value of lane `src` (its own when
// src is outside [0, 32)); mask as in __shfl_*_sync.
uint64_t warp_exchange(unsigned mask, uint64_t bits, int src);
unsigned char* dynamic_smem();

}  // namespace emu

using std::max;
using std::min;

}  // namespace nvae_fast

inline void __syncthreads() { nvae_fast::emu::sync_block(); }

template <typename T>
inline T __shfl_down_sync(unsigned mask, T value, unsigned delta) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(uint64_t), "shuffle of a wide type");
  const unsigned lane = (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32;
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  const int src = lane + delta < 32 ? static_cast<int>(lane + delta) : -1;
  bits = nvae_fast::emu::warp_exchange(mask, bits, src);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}

// IEEE division rounds to nearest, like the device's correctly rounded reciprocal.
inline float __frcp_rn(float x) { return 1.0f / x; }

// Blocks run one after another and threads switch only at synchronisation points, so a plain
// read-modify-write is atomic and every global write is visible to the blocks that run later.
inline unsigned atomicAdd(unsigned* address, unsigned value) {
  const unsigned old = *address;
  *address = old + value;
  return old;
}
inline void __threadfence() {}
