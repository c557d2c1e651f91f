// A stand-in for the emulation's runtime (csrc/emulation/runtime.cpp) that records every kernel launch
// of the host code of csrc/ -- kernel, grid, block, dynamic shared memory -- instead of running it, on a
// device of 132 multiprocessors (an H100 SXM / H200) unless set_multiprocessors says otherwise. Built by
// tests/cuda/_launches.py together with the unchanged csrc/*.cu and csrc/bindings.cpp (as
// torch.ops.nvae_fast_plan.*), so the tests can assert which plan (tiles, split parts, grid-stride
// steps) the real launch code picks for a shape, without running the kernels (outputs are left
// uninitialised) and without a GPU.
#include <torch/library.h>

#include <sstream>
#include <string>
#include <vector>

#include "runtime.h"

namespace nvae_fast {
namespace emu {
namespace {

int recorded_multiprocessors = 132;

struct Record {
  std::string kernel;
  dim3 grid, block;
  size_t smem;
};

std::vector<Record>& records() {
  static std::vector<Record> r;
  return r;
}

[[noreturn]] void no_kernel_runs(const char* what) {
  TORCH_CHECK(false, "launch recorder: ", what, " outside a kernel (kernels are recorded, never run)");
}

}  // namespace

int multiprocessors() { return recorded_multiprocessors; }
int64_t l2_bytes() { return int64_t(50) << 20; }

void run_grid(const char* signature, dim3 grid, dim3 block, size_t smem, const std::function<void()>&) {
  records().push_back(Record{kernel_name(signature), grid, block, smem});
}

void set_max_dynamic_smem(const std::string&, size_t) {}  // launches record their shared memory instead

void sync_block() { no_kernel_runs("__syncthreads"); }
uint64_t warp_exchange(unsigned, uint64_t, int) { no_kernel_runs("a warp shuffle"); }
unsigned char* dynamic_smem() { no_kernel_runs("dynamic shared memory"); }

}  // namespace emu
}  // namespace nvae_fast

namespace {

// The launches recorded since the last call, one per line: "kernel<args>|gx gy gz|bx by bz|smem".
std::string take_launches() {
  std::ostringstream out;
  for (const auto& r : nvae_fast::emu::records()) {
    out << r.kernel << '|' << r.grid.x << ' ' << r.grid.y << ' ' << r.grid.z << '|' << r.block.x << ' '
        << r.block.y << ' ' << r.block.z << '|' << r.smem << '\n';
  }
  nvae_fast::emu::records().clear();
  return out.str();
}

int64_t multiprocessors() { return nvae_fast::emu::multiprocessors(); }

void set_multiprocessors(int64_t sms) {
  TORCH_CHECK(sms >= 1 && sms <= 1024, "launch recorder: multiprocessors must be in [1, 1024], got ", sms);
  nvae_fast::emu::recorded_multiprocessors = static_cast<int>(sms);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nvae_fast_plan, m) {
  m.def("take_launches() -> str", &take_launches);
  m.def("multiprocessors() -> int", &multiprocessors);
  m.def("set_multiprocessors(int sms) -> ()", &set_multiprocessors);
}
