// The scheduler of the CPU emulation of CUDA (see emulation.h): fibers, their stacks, block barriers
// and warp shuffles.
#include "emulation.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

#if defined(NVAE_FAST_EMULATE_COUNT)
#include "traffic.h"
#endif

extern "C" [[noreturn]] void nvae_emu_fiber_main();

namespace nvae_fast {
namespace emu {
namespace {

constexpr unsigned kMaxThreads = 1024;
constexpr size_t kStackBytes = 128 * 1024;

// --- Execution contexts -----------------------------------------------------------------------------
#if defined(__x86_64__)
// A suspended context is its stack pointer; below it the callee-saved registers, the MXCSR and x87
// control words and the address to resume at (System V AMD64 ABI). No system call per switch.
struct Context {
  void* sp = nullptr;
};

extern "C" void nvae_emu_switch(void** save_sp, void* load_sp);
extern "C" void nvae_emu_start();
asm(R"(
    .text
    .p2align 4
    .type nvae_emu_switch, @function
nvae_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size nvae_emu_switch, .-nvae_emu_switch

    .p2align 4
    .type nvae_emu_start, @function
nvae_emu_start:
    call nvae_emu_fiber_main@PLT
    ud2
    .size nvae_emu_start, .-nvae_emu_start
)");

void switch_context(Context& from, const Context& to) { nvae_emu_switch(&from.sp, to.sp); }

// A context that starts nvae_emu_fiber_main on the stack ending at `top` (16-byte aligned): the frame
// that nvae_emu_switch pops, with the current floating-point control words. After its `ret` the stack
// pointer is 16-byte aligned, so the `call` in nvae_emu_start enters the function with the ABI's
// alignment.
void start_context(Context& c, unsigned char* top, size_t) {
  uint64_t* p = reinterpret_cast<uint64_t*>(top);
  uint64_t ctl = 0;
  asm volatile("stmxcsr %0" : "=m"(*reinterpret_cast<uint32_t*>(&ctl)));
  asm volatile("fnstcw %0" : "=m"(*(reinterpret_cast<uint16_t*>(&ctl) + 2)));
  p[-1] = p[-2] = 0;
  p[-3] = reinterpret_cast<uint64_t>(&nvae_emu_start);
  for (int k = 4; k <= 9; ++k) p[-k] = 0;  // rbp, rbx, r12 .. r15
  p[-10] = ctl;
  c.sp = p - 10;
}
#else
// Elsewhere: ucontext (a system call per switch, so slower).
struct Context {
  ucontext_t uc;
};

void switch_context(Context& from, const Context& to) { swapcontext(&from.uc, &to.uc); }

void start_context(Context& c, unsigned char* top, size_t size) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = top - size;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, nvae_emu_fiber_main, 0);
}
#endif

// --- Stacks -------------------------------------------------------------------------------------------
// kMaxThreads stacks, each above an inaccessible guard page (an overflow faults instead of corrupting its
// neighbour), reserved once per OS thread; pages are committed only when touched.
class Stacks {
 public:
  Stacks() {
    page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    slot_ = kStackBytes + page_;
    void* p = mmap(nullptr, slot_ * kMaxThreads, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    TORCH_CHECK(p != MAP_FAILED, "nvae_fast CUDA emulation: cannot reserve fiber stacks");
    base_ = static_cast<unsigned char*>(p);
    for (unsigned i = 0; i < kMaxThreads; ++i) mprotect(base_ + i * slot_, page_, PROT_NONE);
  }
  ~Stacks() { munmap(base_, slot_ * kMaxThreads); }
  Stacks(const Stacks&) = delete;
  Stacks& operator=(const Stacks&) = delete;

  unsigned char* top(unsigned i) const { return base_ + (i + 1) * slot_; }

  // A fresh stack for thread i: under AddressSanitizer, the redzones that the frames of the previous
  // block's fiber left behind (an exited fiber is never unwound) are cleared.
  unsigned char* fresh(unsigned i) const {
#if defined(__SANITIZE_ADDRESS__)
    ASAN_UNPOISON_MEMORY_REGION(top(i) - kStackBytes, kStackBytes);
#endif
    return top(i);
  }

 private:
  unsigned char* base_ = nullptr;
  size_t page_ = 0, slot_ = 0;
};

// --- Blocks ---------------------------------------------------------------------------------------------
enum class State : uint8_t { Runnable, AtBarrier, AtShuffle, Exited };

struct Fiber {
  Context ctx;
  State state = State::Runnable;
  unsigned mask = 0;  // of the shuffle it waits at
  uint3 idx{};
};

struct Launch {
  const char* name;
  const std::function<void()>* body;
  unsigned threads;
  std::vector<Fiber> fibers;
  std::vector<uint64_t> exchange;  // 32 slots per warp
  std::vector<unsigned char> smem;
  unsigned char* smem_aligned = nullptr;
  size_t smem_bytes = 0;
  Context scheduler;
  Fiber* current = nullptr;
  std::exception_ptr error;
};

thread_local Launch* t_launch = nullptr;

// Dynamic shared memory limits raised by set_max_dynamic_smem, by kernel name.
std::mutex smem_limits_mutex;
std::map<std::string, size_t>& smem_limits() {
  static std::map<std::string, size_t> limits;
  return limits;
}

size_t dynamic_smem_limit(const std::string& kernel) {
  const std::lock_guard<std::mutex> lock(smem_limits_mutex);
  const auto it = smem_limits().find(kernel);
  return it == smem_limits().end() ? kMaxDynamicSmem : std::max(kMaxDynamicSmem, it->second);
}

Launch& active(const char* what) {
  TORCH_CHECK(t_launch != nullptr && t_launch->current != nullptr, "nvae_fast CUDA emulation: ", what,
              " called outside a kernel");
  return *t_launch;
}

std::string where(const Launch& l, const Fiber& f) {
  return std::string(l.name) + ": block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " +
         std::to_string(blockIdx.z) + ") thread (" + std::to_string(f.idx.x) + ", " + std::to_string(f.idx.y) + ", " +
         std::to_string(f.idx.z) + ")";
}

// Suspends the calling fiber in `state` until the scheduler releases it.
void suspend(Launch& l, State state, unsigned mask) {
  Fiber& f = *l.current;
  f.state = state;
  f.mask = mask;
  switch_context(f.ctx, l.scheduler);
}

struct Counts {
  unsigned at_barrier = 0, at_shuffle = 0, exited = 0;
};

Counts count_states(const Launch& l) {
  Counts c;
  for (const Fiber& f : l.fibers) {
    c.at_barrier += f.state == State::AtBarrier;
    c.at_shuffle += f.state == State::AtShuffle;
    c.exited += f.state == State::Exited;
  }
  return c;
}

// Releases what can go on after every fiber has run to a synchronisation point or its end (`c` counts
// their states); false when nothing can (a deadlock). Raises for a shuffle whose lanes disagree or have
// exited.
bool release(Launch& l, const Counts& c) {
  if (c.at_barrier > 0 && c.at_barrier + c.exited == l.threads) {
    for (Fiber& f : l.fibers) {
      if (f.state == State::AtBarrier) f.state = State::Runnable;
    }
    return true;
  }
  bool any = false;
  for (unsigned w = 0; w * 32 < l.threads; ++w) {
    Fiber* lanes = l.fibers.data() + w * 32;
    const unsigned count = std::min(32u, l.threads - w * 32);
    for (unsigned i = 0; i < count; ++i) {  // every waiting lane agrees with the lanes its mask names
      if (lanes[i].state != State::AtShuffle) continue;
      const unsigned mask = lanes[i].mask;
      for (unsigned k = 0; k < count; ++k) {
        if (!((mask >> k) & 1u)) continue;
        const Fiber& f = lanes[k];
        TORCH_CHECK(f.state != State::Exited, where(l, lanes[i]), ": a shuffle with mask ", mask,
                    " waits for lane ", k, ", which has exited");
        TORCH_CHECK(f.state != State::AtShuffle || f.mask == mask, where(l, lanes[i]),
                    ": lanes of one warp are at a shuffle with different masks (", mask, " and ", f.mask, ")");
      }
    }
    for (unsigned i = 0; i < count; ++i) {  // then the groups whose lanes have all arrived go on
      if (lanes[i].state != State::AtShuffle) continue;
      const unsigned mask = lanes[i].mask;
      bool ready = true;
      for (unsigned k = 0; k < count; ++k) {
        ready = ready && (!((mask >> k) & 1u) || lanes[k].state == State::AtShuffle);
      }
      if (!ready) continue;
      for (unsigned k = 0; k < count; ++k) {
        if ((mask >> k) & 1u) lanes[k].state = State::Runnable;
      }
      any = true;
    }
  }
  return any;
}

void run_block(Launch& l, const Stacks& stacks) {
  for (unsigned i = 0; i < l.threads; ++i) {
    Fiber& f = l.fibers[i];
    f.state = State::Runnable;
    f.idx = uint3{i % blockDim.x, (i / blockDim.x) % blockDim.y, i / (blockDim.x * blockDim.y)};
    start_context(f.ctx, stacks.fresh(i), kStackBytes);
  }
  std::memset(l.smem_aligned, 0xff, l.smem_bytes);
  for (;;) {
    for (Fiber& f : l.fibers) {
      if (f.state != State::Runnable) continue;
      threadIdx = f.idx;
      l.current = &f;
      switch_context(l.scheduler, f.ctx);
      l.current = nullptr;
      if (l.error) std::rethrow_exception(l.error);
    }
    const Counts c = count_states(l);
    if (c.exited == l.threads) return;
    TORCH_CHECK(release(l, c), l.name, ": block (", blockIdx.x, ", ", blockIdx.y, ", ", blockIdx.z,
                ") can never finish: ", c.at_barrier, " threads wait at __syncthreads, ", c.at_shuffle,
                " at a shuffle, ", c.exited, " have exited (synchronisation in divergent code)");
  }
}

}  // namespace

void run_grid(const char* signature, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
  const std::string kernel = kernel_name(signature);
  const char* name = kernel.c_str();
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  TORCH_CHECK(threads >= 1 && threads <= kMaxThreads && block.z <= 64, name, ": invalid block (", block.x, ", ",
              block.y, ", ", block.z, "): 1 to 1024 threads, z at most 64");
  TORCH_CHECK(grid.x >= 1 && grid.x <= 0x7fffffffu && grid.y >= 1 && grid.y <= 65535 && grid.z >= 1 &&
                  grid.z <= 65535,
              name, ": invalid grid (", grid.x, ", ", grid.y, ", ", grid.z, ")");
  const size_t smem_limit = dynamic_smem_limit(kernel);
  TORCH_CHECK(smem <= smem_limit, name, ": ", smem, " bytes of dynamic shared memory (at most ", smem_limit,
              smem_limit == kMaxDynamicSmem ? " without an opt-in)" : " as opted in)");
  TORCH_CHECK(t_launch == nullptr, name, ": launched from inside a kernel");
  static thread_local Stacks stacks;

  Launch l;
  l.name = name;
  l.body = &body;
  l.threads = static_cast<unsigned>(threads);
  l.fibers.resize(l.threads);
  l.exchange.assign(((l.threads + 31) / 32) * 32, 0);
  l.smem.resize(smem + 16);
  l.smem_aligned = l.smem.data() + (16 - reinterpret_cast<uintptr_t>(l.smem.data()) % 16) % 16;
  l.smem_bytes = smem;
  struct Reset {
    ~Reset() { t_launch = nullptr; }
  } reset;
  t_launch = &l;
  gridDim = grid;
  blockDim = block;
#if defined(NVAE_FAST_EMULATE_COUNT)
  // The count flavour (traffic.h): the launch's global-memory accesses are counted until run_grid
  // returns, or only its configuration is recorded and no block runs.
  const bool run = traffic::begin(kernel);
  struct EndCount {
    ~EndCount() { traffic::end(); }
  } end_count;
  if (!run) return;
#endif
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        run_block(l, stacks);
      }
    }
  }
}

void sync_block() {
  Launch& l = active("__syncthreads");
  suspend(l, State::AtBarrier, 0);
}

uint64_t warp_exchange(unsigned mask, uint64_t bits, int src) {
  Launch& l = active("a warp shuffle");
  const Fiber& f = *l.current;
  const unsigned tid = static_cast<unsigned>(&f - l.fibers.data());
  const unsigned lane = tid % 32, warp = tid / 32;
  const unsigned lanes = std::min(32u, l.threads - warp * 32);
  TORCH_CHECK((mask >> lane) & 1u, where(l, f), ": a shuffle with mask ", mask, " that leaves out the calling lane ",
              lane);
  TORCH_CHECK(lanes == 32 || (mask >> lanes) == 0, where(l, f), ": a shuffle with mask ", mask,
              " names lanes that do not exist (the last warp has ", lanes, " threads)");
  uint64_t* slots = l.exchange.data() + warp * 32;
  slots[lane] = bits;
  suspend(l, State::AtShuffle, mask);
  uint64_t out = bits;
  if (src >= 0) {
    TORCH_CHECK((mask >> src) & 1u, where(l, f), ": a shuffle reads lane ", src, ", which its mask ", mask,
                " leaves out");
    out = slots[src];
  }
  suspend(l, State::AtShuffle, mask);
  return out;
}

void set_max_dynamic_smem(const std::string& kernel, size_t bytes) {
  TORCH_CHECK(bytes <= kMaxDynamicSmemOptin, kernel, ": cannot opt in to ", bytes,
              " bytes of dynamic shared memory (the device allows at most ", kMaxDynamicSmemOptin, ")");
  const std::lock_guard<std::mutex> lock(smem_limits_mutex);
  smem_limits()[kernel] = bytes;
}

unsigned char* dynamic_smem() { return active("dynamic shared memory").smem_aligned; }

namespace {

// The integer in environment variable `name`, `fallback` when it is unset or empty; raises c10::Error
// ("<name> must be <what>, got '<value>'") unless it is a whole number in [lo, hi].
int64_t env_number(const char* name, int64_t fallback, int64_t lo, int64_t hi, const char* what) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return fallback;
  char* end = nullptr;
  const long long v = std::strtoll(env, &end, 10);
  TORCH_CHECK(*end == '\0' && v >= lo && v <= hi, name, " must be ", what, ", got '", env, "'");
  return static_cast<int64_t>(v);
}

}  // namespace

int multiprocessors() {
  return static_cast<int>(
      env_number("NVAE_FAST_EMULATE_SMS", 132, 1, 1024, "a number of multiprocessors in [1, 1024]"));
}

int64_t l2_bytes() {
  return env_number("NVAE_FAST_EMULATE_L2_BYTES", int64_t(50) << 20, 1024, std::numeric_limits<int64_t>::max(),
                    "a number of bytes >= 1024");
}

}  // namespace emu
}  // namespace nvae_fast

// Entry of every fiber: runs the kernel body as the current thread, records the first error, and returns
// to the scheduler for good.
extern "C" [[noreturn]] void nvae_emu_fiber_main() {
  using namespace nvae_fast::emu;
  Launch& l = *t_launch;
  try {
    (*l.body)();
  } catch (...) {
    if (!l.error) l.error = std::current_exception();
  }
  Fiber& f = *l.current;
  f.state = State::Exited;
  switch_context(f.ctx, l.scheduler);
  std::abort();  // an exited fiber is never resumed
}
