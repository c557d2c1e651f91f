// Counts the global-memory bytes that the emulated kernels read and write (NVAE_FAST_CUDA_EMULATE=count).
//
// How: the kernel library of that flavour is compiled with -fsanitize=thread but linked without the
// ThreadSanitizer runtime; this library (compiled without it) defines the callbacks the compiler inserts
// before every load and store (__tsan_readN / __tsan_writeN for N = 1, 2, 4, 8, 16, their unaligned and
// range variants, and the atomic operations, which it must also carry out). A callback counts the access
// only while a launch runs on the calling thread (traffic::begin .. traffic::end, called by run_grid) and
// only when its address lies in a live allocation of the CPU allocator, which this library replaces by a
// recording wrapper when it is loaded: tensor memory, i.e. device global memory on the GPU. Everything
// else is left out by construction: the fibers' stacks (registers and local arrays), the block's dynamic
// shared memory (a std::vector) and static __shared__ arrays (thread_local), the host thread's stack
// (kernel arguments), and the scheduler's own data. Tensors allocated before the library was loaded are
// not tracked (load it before making the kernels' inputs).
//
// Two counts per launch and direction:
//   distinct   bytes of global memory the launch reads (writes), each byte once: the DRAM traffic of a
//              launch whose re-reads all hit a cache, the figure that compares with a minimum-traffic
//              model;
//   requested  the sizes of all accesses added up: what the kernel asks of the memory system, re-reads
//              (per-channel constants loaded for every vector, stencil neighbours) included.
// Both are of the host compiler's code for the kernel sources: one access per load or store instruction
// it keeps (a value it holds in a register is read once), which a GPU compiler may schedule differently.
//
// Registered as torch.ops.nvae_fast_traffic: take() returns the launches recorded since the last call,
// one line each, "kernel\tread\twritten\tread_requested\twritten_requested" (kernel as emu::kernel_name
// gives it); set_plan_only(on) makes later launches record only their kernel, without running (byte
// counts 0).
#include "traffic.h"

#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <utility>
#include <vector>

namespace nvae_fast {
namespace emu {
namespace traffic {
namespace {

// --- Live allocations of the CPU allocator ---------------------------------------------------------------
struct Range {
  uintptr_t begin, end;
};

// The CPU allocator in this process: the previous one, with every allocation recorded while it lives.
// Its data pointers are simple (context == data), so raw_allocate / raw_deallocate work as before.
class RecordingAllocator final : public c10::Allocator {
 public:
  explicit RecordingAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = base_->allocate(n);
    void* p = inner.get();
    if (p == nullptr) return inner;
    const c10::Device device = inner.device();
    std::lock_guard<std::mutex> lock(mutex_);
    live_.emplace(reinterpret_cast<uintptr_t>(p), Live{n, std::move(inner)});
    return {p, p, &release, device};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // The live allocations, sorted by address (they do not overlap).
  std::vector<Range> snapshot() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<Range> out;
    out.reserve(live_.size());
    for (const auto& [begin, live] : live_) out.push_back({begin, begin + live.bytes});
    return out;
  }

  // The process's instance, installed as the CPU allocator on first use.
  static RecordingAllocator* instance();

 private:
  struct Live {
    size_t bytes;
    c10::DataPtr inner;  // frees the memory through the previous allocator's deleter
  };

  static void release(void* p) {
    RecordingAllocator* self = instance();
    c10::DataPtr inner;  // freed after the lock is released
    std::lock_guard<std::mutex> lock(self->mutex_);
    auto it = self->live_.find(reinterpret_cast<uintptr_t>(p));
    if (it == self->live_.end()) return;
    inner = std::move(it->second.inner);
    self->live_.erase(it);
  }

  c10::Allocator* base_;
  mutable std::mutex mutex_;
  std::map<uintptr_t, Live> live_;
};

RecordingAllocator* RecordingAllocator::instance() {
  static RecordingAllocator* a = [] {
    auto* wrapper = new RecordingAllocator(c10::GetCPUAllocator());  // lives as long as the process
    c10::SetCPUAllocator(wrapper, /*priority=*/UINT8_MAX);
    return wrapper;
  }();
  return a;
}

// Installed when the library is loaded, before the kernels' tensors are allocated.
[[maybe_unused]] const bool installed = RecordingAllocator::instance() != nullptr;

// --- Counting --------------------------------------------------------------------------------------------
// Bytes of one direction (read or written) of a launch: `requested` adds every access, `distinct` each
// byte once, through one bitmap per allocation (allocated when the launch first touches it).
struct Direction {
  uint64_t requested = 0, distinct = 0;
  std::vector<std::vector<uint64_t>> bits;  // per range of the snapshot

  void add(size_t range, const Range& r, uintptr_t a, size_t n) {
    requested += n;
    std::vector<uint64_t>& b = bits[range];
    if (b.empty()) b.assign((r.end - r.begin + 63) / 64, 0);
    size_t off = a - r.begin;
    n = std::min<size_t>(n, r.end - a);
    while (n > 0) {
      const size_t word = off / 64, bit = off % 64, k = std::min<size_t>(n, 64 - bit);
      const uint64_t mask = (k == 64 ? ~uint64_t{0} : (uint64_t{1} << k) - 1) << bit;
      distinct += static_cast<uint64_t>(__builtin_popcountll(mask & ~b[word]));
      b[word] |= mask;
      off += k;
      n -= k;
    }
  }
};

// An interval of addresses that lies in one allocation (range >= 0) or between two (range < 0).
struct Interval {
  uintptr_t begin = 0, end = 0;
  ptrdiff_t range = -1;
};

struct Counting {
  std::vector<Range> ranges;  // the live allocations when the launch began
  Interval recent[4];         // the intervals of the last lookups, most of which repeat
  unsigned next = 0;          // the entry of `recent` to replace
  Direction read, written;
};

// The counts of the launch that runs on this thread, or null. initial-exec: one load per callback
// instead of a call to __tls_get_addr.
thread_local Counting* t_counting __attribute__((tls_model("initial-exec"))) = nullptr;

struct Record {
  std::string kernel;
  uint64_t read, written, read_requested, written_requested;
};

struct Recorded {
  std::mutex mutex;
  std::vector<Record> launches;
  bool plan_only = false;
};

Recorded& recorded() {
  static Recorded r;
  return r;
}

thread_local Record t_launch;

// The index of the range that holds address a, or -1 (not global memory).
ptrdiff_t find(Counting& c, uintptr_t a) {
  for (const Interval& i : c.recent) {
    if (a - i.begin < i.end - i.begin) return i.range;
  }
  auto it = std::upper_bound(c.ranges.begin(), c.ranges.end(), a,
                             [](uintptr_t v, const Range& r) { return v < r.begin; });
  Interval found;
  found.end = it == c.ranges.end() ? UINTPTR_MAX : it->begin;
  if (it != c.ranges.begin()) {
    --it;
    if (a < it->end) {
      found = Interval{it->begin, it->end, it - c.ranges.begin()};
    } else {
      found.begin = it->end;
    }
  }
  c.recent[c.next] = found;
  c.next = (c.next + 1) % 4;
  return found.range;
}

void count(Counting& c, Direction Counting::*direction, const volatile void* p, size_t n) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const ptrdiff_t r = find(c, a);
  if (r >= 0) (c.*direction).add(static_cast<size_t>(r), c.ranges[static_cast<size_t>(r)], a, n);
}

inline void on_read(const volatile void* p, size_t n) {
  if (Counting* c = t_counting) count(*c, &Counting::read, p, n);
}

inline void on_write(const volatile void* p, size_t n) {
  if (Counting* c = t_counting) count(*c, &Counting::written, p, n);
}

}  // namespace

bool begin(const std::string& kernel) {
  bool plan_only;
  {
    Recorded& r = recorded();
    std::lock_guard<std::mutex> lock(r.mutex);
    plan_only = r.plan_only;
  }
  t_launch = Record{kernel, 0, 0, 0, 0};
  if (!plan_only) {
    auto* c = new Counting;
    c->ranges = RecordingAllocator::instance()->snapshot();
    c->read.bits.resize(c->ranges.size());
    c->written.bits.resize(c->ranges.size());
    t_counting = c;
  }
  return !plan_only;
}

void end() {
  const std::unique_ptr<Counting> c(t_counting);
  t_counting = nullptr;
  if (c) {
    t_launch.read = c->read.distinct;
    t_launch.written = c->written.distinct;
    t_launch.read_requested = c->read.requested;
    t_launch.written_requested = c->written.requested;
  }
  Recorded& r = recorded();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.launches.push_back(std::move(t_launch));
}

namespace {

std::string take() {
  Recorded& r = recorded();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::ostringstream out;
  for (const Record& l : r.launches) {
    out << l.kernel << '\t' << l.read << '\t' << l.written << '\t' << l.read_requested << '\t' << l.written_requested
        << '\n';
  }
  r.launches.clear();
  return out.str();
}

void set_plan_only(bool on) {
  Recorded& r = recorded();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.plan_only = on;
}

}  // namespace
}  // namespace traffic
}  // namespace emu
}  // namespace nvae_fast

TORCH_LIBRARY(nvae_fast_traffic, m) {
  m.def("take() -> str", &nvae_fast::emu::traffic::take);
  m.def("set_plan_only(bool on) -> ()", &nvae_fast::emu::traffic::set_plan_only);
}

// --- The compiler's instrumentation callbacks ----------------------------------------------------------------
#define NVAE_TSAN extern "C" __attribute__((visibility("default")))

namespace {
using nvae_fast::emu::traffic::on_read;
using nvae_fast::emu::traffic::on_write;
}  // namespace

NVAE_TSAN void __tsan_init() {}
NVAE_TSAN void __tsan_func_entry(void*) {}
NVAE_TSAN void __tsan_func_exit() {}
NVAE_TSAN void __tsan_vptr_update(void**, void*) {}  // a notification: the compiler keeps the store
NVAE_TSAN void __tsan_vptr_read(void**) {}
NVAE_TSAN void __tsan_read_range(void* p, unsigned long n) { on_read(p, n); }
NVAE_TSAN void __tsan_write_range(void* p, unsigned long n) { on_write(p, n); }

#define NVAE_TSAN_ACCESS(N)                                                  \
  NVAE_TSAN void __tsan_read##N(void* p) { on_read(p, N); }                  \
  NVAE_TSAN void __tsan_write##N(void* p) { on_write(p, N); }                \
  NVAE_TSAN void __tsan_unaligned_read##N(void* p) { on_read(p, N); }        \
  NVAE_TSAN void __tsan_unaligned_write##N(void* p) { on_write(p, N); }
NVAE_TSAN_ACCESS(1)
NVAE_TSAN_ACCESS(2)
NVAE_TSAN_ACCESS(4)
NVAE_TSAN_ACCESS(8)
NVAE_TSAN_ACCESS(16)

// Atomic operations: the instrumented code calls these instead of the instructions, so they must carry
// them out (sequentially consistent, which every requested order allows) and are counted like accesses.
NVAE_TSAN void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
NVAE_TSAN void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

#define NVAE_TSAN_RMW(N, T, op)                                                        \
  NVAE_TSAN T __tsan_atomic##N##_##op(volatile T* a, T v, int) {                       \
    on_read(a, sizeof(T));                                                             \
    on_write(a, sizeof(T));                                                            \
    return __atomic_##op(a, v, __ATOMIC_SEQ_CST);                                      \
  }
#define NVAE_TSAN_ATOMIC(N, T)                                                         \
  NVAE_TSAN T __tsan_atomic##N##_load(const volatile T* a, int) {                      \
    on_read(a, sizeof(T));                                                             \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                       \
  }                                                                                    \
  NVAE_TSAN void __tsan_atomic##N##_store(volatile T* a, T v, int) {                   \
    on_write(a, sizeof(T));                                                            \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                          \
  }                                                                                    \
  NVAE_TSAN T __tsan_atomic##N##_exchange(volatile T* a, T v, int) {                   \
    on_read(a, sizeof(T));                                                             \
    on_write(a, sizeof(T));                                                            \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                \
  }                                                                                    \
  NVAE_TSAN_RMW(N, T, fetch_add)                                                       \
  NVAE_TSAN_RMW(N, T, fetch_sub)                                                       \
  NVAE_TSAN_RMW(N, T, fetch_and)                                                       \
  NVAE_TSAN_RMW(N, T, fetch_or)                                                        \
  NVAE_TSAN_RMW(N, T, fetch_xor)                                                       \
  NVAE_TSAN_RMW(N, T, fetch_nand)                                                      \
  NVAE_TSAN int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) { \
    on_read(a, sizeof(T));                                                             \
    on_write(a, sizeof(T));                                                            \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); \
  }                                                                                    \
  NVAE_TSAN int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) { \
    on_read(a, sizeof(T));                                                             \
    on_write(a, sizeof(T));                                                            \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); \
  }                                                                                    \
  NVAE_TSAN T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int, int) { \
    on_read(a, sizeof(T));                                                             \
    on_write(a, sizeof(T));                                                            \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);  \
    return c;                                                                          \
  }
NVAE_TSAN_ATOMIC(8, int8_t)
NVAE_TSAN_ATOMIC(16, int16_t)
NVAE_TSAN_ATOMIC(32, int32_t)
NVAE_TSAN_ATOMIC(64, int64_t)
