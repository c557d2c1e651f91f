// Kernels that exercise the CPU emulation of CUDA itself (csrc/emulation): thread numbering, warp
// shuffles, block barriers, dynamic shared memory, and the errors it must raise for misuse. Built only
// by tests/cuda/test_emulation.py, as torch.ops.nvae_fast_emu_test.*.
#include <torch/library.h>

#include <string>

#include "runtime.h"

namespace {

using nvae_fast::launch;

// out[block, thread] = (blockIdx.x, .y, .z, threadIdx.x, .y, .z), linear indices x fastest.
__global__ void indices_kernel(int64_t* out) {
  const int64_t block = blockIdx.x + gridDim.x * (blockIdx.y + static_cast<int64_t>(gridDim.y) * blockIdx.z);
  const int64_t thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  int64_t* o = out + (block * blockDim.x * blockDim.y * blockDim.z + thread) * 6;
  o[0] = blockIdx.x;
  o[1] = blockIdx.y;
  o[2] = blockIdx.z;
  o[3] = threadIdx.x;
  o[4] = threadIdx.y;
  o[5] = threadIdx.z;
}

// out[t] = __shfl_down_sync(full, x[t], delta) for every thread t of one block.
__global__ void shuffle_down_kernel(const double* x, double* out, unsigned delta) {
  const unsigned t = threadIdx.x + blockDim.x * threadIdx.y;
  out[t] = __shfl_down_sync(0xffffffffu, x[t], delta);
}

// out[b] = sum of x[b * blockDim.x + t]: warp shuffles, then the warps' sums through shared memory.
__global__ void block_sum_kernel(const float* x, float* out) {
  __shared__ float warps[32];
  float v = x[blockIdx.x * blockDim.x + threadIdx.x];
  for (unsigned d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
  if (threadIdx.x % 32 == 0) warps[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) s += warps[w];
    out[blockIdx.x] = s;
  }
}

// out[t] = the t-th float of dynamic shared memory, which no thread wrote.
__global__ void read_smem_kernel(float* out) { out[threadIdx.x] = nvae_fast::dynamic_smem<float>()[threadIdx.x]; }

// out[t] = x[t + 1]: the last thread reads one element past the end of x (for the AddressSanitizer build).
__global__ void read_past_end_kernel(const float* x, float* out) { out[threadIdx.x] = x[threadIdx.x + 1]; }

// Each misuse that the emulation must reject.
__global__ void misuse_kernel(int which) {
  const unsigned lane = threadIdx.x % 32;
  float v = 1.0f;
  switch (which) {
    case 0:  // lanes 0-15 shuffle with the full mask while 16-31 wait at the block barrier
      if (lane < 16) {
        v = __shfl_down_sync(0xffffffffu, v, 1);
      } else {
        __syncthreads();
      }
      break;
    case 1:  // a mask without the calling lane
      v = __shfl_down_sync(0x1u, v, 1);
      break;
    case 2:  // the full mask after lanes 16-31 have exited
      if (lane >= 16) return;
      v = __shfl_down_sync(0xffffffffu, v, 1);
      break;
    case 3:  // lanes of one warp at one shuffle with different masks
      v = __shfl_down_sync(lane < 16 ? 0x0000ffffu : 0xffffffffu, v, 0);
      break;
    case 4:  // a source lane outside the mask
      if (lane < 16) v = __shfl_down_sync(0x0000ffffu, v, 8);
      break;
    default:
      break;
  }
  (void)v;
}

at::Tensor indices(at::IntArrayRef grid, at::IntArrayRef block) {
  const int64_t n = grid[0] * grid[1] * grid[2] * block[0] * block[1] * block[2];
  at::Tensor out = at::full({n, 6}, -1, at::kLong);
  launch<indices_kernel>(dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]), 0, nullptr,
                         out.data_ptr<int64_t>());
  return out;
}

at::Tensor shuffle_down(const at::Tensor& x, int64_t block_x, int64_t delta) {
  at::Tensor out = at::empty_like(x);
  launch<shuffle_down_kernel>(dim3(1), dim3(block_x, x.numel() / block_x), 0, nullptr, x.data_ptr<double>(),
                              out.data_ptr<double>(), static_cast<unsigned>(delta));
  return out;
}

at::Tensor block_sum(const at::Tensor& x, int64_t threads) {
  at::Tensor out = at::empty({x.numel() / threads}, x.options());
  launch<block_sum_kernel>(dim3(out.numel()), dim3(threads), 0, nullptr, x.data_ptr<float>(), out.data_ptr<float>());
  return out;
}

at::Tensor read_smem(int64_t n) {
  at::Tensor out = at::zeros({n}, at::kFloat);
  launch<read_smem_kernel>(dim3(1), dim3(n), n * sizeof(float), nullptr, out.data_ptr<float>());
  return out;
}

at::Tensor read_past_end(const at::Tensor& x) {
  at::Tensor out = at::empty_like(x);
  launch<read_past_end_kernel>(dim3(1), dim3(x.numel()), 0, nullptr, x.data_ptr<float>(), out.data_ptr<float>());
  return out;
}

void misuse(int64_t which) { launch<misuse_kernel>(dim3(2), dim3(64), 0, nullptr, static_cast<int>(which)); }

void bad_launch(at::IntArrayRef grid, at::IntArrayRef block, int64_t smem) {
  launch<misuse_kernel>(dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]), smem, nullptr, -1);
}

}  // namespace

TORCH_LIBRARY(nvae_fast_emu_test, m) {
  m.def("indices(int[3] grid, int[3] block) -> Tensor", &indices);
  m.def("shuffle_down(Tensor x, int block_x, int delta) -> Tensor", &shuffle_down);
  m.def("block_sum(Tensor x, int threads) -> Tensor", &block_sum);
  m.def("read_smem(int n) -> Tensor", &read_smem);
  m.def("read_past_end(Tensor x) -> Tensor", &read_past_end);
  m.def("misuse(int which) -> ()", &misuse);
  m.def("bad_launch(int[3] grid, int[3] block, int smem) -> ()", &bad_launch);
}
