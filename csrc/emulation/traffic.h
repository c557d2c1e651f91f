// Global-memory traffic of the emulated kernels (the build flavour NVAE_FAST_CUDA_EMULATE=count, see
// traffic.cpp): run_grid announces every launch here, and the kernels' loads and stores, instrumented by
// the compiler, are added to that launch's counters.
#pragma once

#include <string>

namespace nvae_fast {
namespace emu {
namespace traffic {

// Starts a launch of `kernel` (counting from now on, on the calling thread); false when only the plan is
// recorded, and then the launch must not run its blocks. Every begin is followed by one end.
[[gnu::visibility("default")]] bool begin(const std::string& kernel);
// Stops counting and records the launch with its byte counts.
[[gnu::visibility("default")]] void end();

}  // namespace traffic
}  // namespace emu
}  // namespace nvae_fast
