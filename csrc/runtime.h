// What differs between the two builds of the kernels: the CUDA extension nvae_fast._C (nvcc, CUDA
// tensors) and the CPU emulation (g++ with -DNVAE_FAST_EMULATE, CPU tensors; emulation/emulation.h).
// The kernel sources use only these names for the device, the stream, the launch and dynamic shared
// memory, so both builds compile the same code.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>

#ifdef NVAE_FAST_EMULATE
#include "emulation/emulation.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#endif

namespace nvae_fast {

#ifdef NVAE_FAST_EMULATE
// Where the kernels' tensors live, as the argument checks say it.
constexpr const char* kKernelDevice = "a CPU tensor (this is the CPU emulation of the nvae_fast CUDA kernels)";
inline bool on_kernel_device(const at::Tensor& t) { return t.device().is_cpu(); }

struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};
inline cudaStream_t current_stream() { return nullptr; }
inline int multiprocessors() { return emu::multiprocessors(); }
inline int64_t l2_bytes() { return emu::l2_bytes(); }
// Options of a host buffer that is copied to the device.
inline at::TensorOptions staging_options() { return at::TensorOptions(); }
inline size_t max_dynamic_smem_optin() { return emu::kMaxDynamicSmemOptin; }

template <typename... Params, typename... Args>
void emulate_launch(const char* signature, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                    Args&&... args) {
  auto params = std::make_tuple(static_cast<Params>(std::forward<Args>(args))...);
  emu::run_grid(signature, grid, block, smem, [&] { std::apply(kernel, params); });
}
#else
constexpr const char* kKernelDevice = "a CUDA tensor (the nvae_fast CUDA ops run on CUDA tensors only)";
inline bool on_kernel_device(const at::Tensor& t) { return t.is_cuda(); }

using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream(); }
inline int multiprocessors() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }
inline int64_t l2_bytes() { return at::cuda::getCurrentDeviceProperties()->l2CacheSize; }
inline at::TensorOptions staging_options() { return at::TensorOptions().pinned_memory(true); }
inline size_t max_dynamic_smem_optin() { return at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin; }
#endif

// kernel<<<grid, block, smem, stream>>>(args...), then the launch check.
template <auto kernel, typename... Args>
void launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
#ifdef NVAE_FAST_EMULATE
  (void)stream;
  emulate_launch(__PRETTY_FUNCTION__, kernel, grid, block, smem, std::forward<Args>(args)...);
#else
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

// Sets `bytes` bytes at p to zero, in stream order (a memset, not a kernel launch).
inline void zero_async(void* p, size_t bytes, cudaStream_t stream) {
#ifdef NVAE_FAST_EMULATE
  (void)stream;
  std::memset(p, 0, bytes);
#else
  C10_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream));
#endif
}

// Lets `kernel` be launched with up to `bytes` (at most max_dynamic_smem_optin()) of dynamic shared
// memory; without it a launch may use 48 KiB.
template <auto kernel>
void allow_dynamic_smem(size_t bytes) {
#ifdef NVAE_FAST_EMULATE
  emu::set_max_dynamic_smem(emu::kernel_name(__PRETTY_FUNCTION__), bytes);
#else
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
#endif
}

// The block's dynamic shared memory (16-byte aligned), as T.
template <typename T>
__device__ __forceinline__ T* dynamic_smem() {
#ifdef NVAE_FAST_EMULATE
  return reinterpret_cast<T*>(emu::dynamic_smem());
#else
  extern __shared__ __align__(16) unsigned char smem[];
  return reinterpret_cast<T*>(smem);
#endif
}

}  // namespace nvae_fast
