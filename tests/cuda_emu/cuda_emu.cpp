// The emulator's scheduler: fibers, thread orders, the barrier check, the warp exchange, shared
// memory and the launch (cuda_emu.h for the model it implements, docs/cuda.md for why; the
// runtime API is in cuda_emu_runtime.cpp).
#include "cuda_emu.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <new>
#include <numeric>
#include <random>
#include <sstream>
#include <vector>

#include "cuda_emu_internal.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

// Static __shared__ variables of non-template functions land in this section
// (kernels/cuda_compat.cuh); the linker defines its bounds, absent when it is empty.
extern "C" {
extern char __start_ssmtune_emu_shared[] __attribute__((weak));
extern char __stop_ssmtune_emu_shared[] __attribute__((weak));
}

namespace cuda_emu {
namespace {

using internal::fail;
using internal::kPoison;

constexpr unsigned kFullMask = 0xffffffffu;
constexpr std::size_t kDefaultSharedLimit = 48 << 10;  // without cudaFuncSetAttribute
constexpr std::size_t kMaxSharedOptIn = 227 << 10;     // sm_90's opt-in limit per block

std::string g_launch_detail;  // detail of the most recent failed launch

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "cuda_emu: %s\n", what);
  std::abort();
}

// ---------------------------------------------------------------------------------------------
// Fibers

enum class FiberState { kReady, kAtBarrier, kAtWarpOp, kDone, kFailed };
enum class WarpOp { kShuffle, kBallot, kSyncwarp };

struct Fiber {
  ucontext_t context;
  const void* stack_bottom;  // its stack, for AddressSanitizer's switch annotations
  std::size_t stack_bytes;
  void* asan_fake_stack;  // AddressSanitizer's state of the fiber while it is switched out
  uint3 tid;
  unsigned linear;  // x + y * blockDim.x + z * blockDim.x * blockDim.y
  FiberState state;
  std::int64_t barriers;  // __syncthreads reached so far
  // The warp operation the fiber waits at (state kAtWarpOp).
  WarpOp op;
  detail::ShuffleKind kind;
  unsigned mask;
  long long arg;
  int width;
  std::uint64_t in, out;
};

struct KernelRun {
  detail::KernelBody body{};
  const char* name = "";
  std::vector<Fiber> fibers;
  std::vector<unsigned> order;
  ucontext_t scheduler{};
  Fiber* current = nullptr;
  unsigned n_threads = 0;
  std::string error;  // first error of the running block
};
KernelRun g_run;

Schedule g_schedule = Schedule::kForward;
std::uint64_t g_seed = 1;
std::uint64_t g_launches_since_seed = 0;
std::size_t g_stack_bytes = 64 << 10;

// One mapping holding every fiber's stack, each above a PROT_NONE guard page; reused.
struct StackPool {
  char* base = nullptr;
  std::size_t slot = 0, count = 0;
  char* stack(unsigned i) const { return base + i * slot + page(); }
  static std::size_t page() { return std::size_t(sysconf(_SC_PAGESIZE)); }
  void ensure(unsigned n, std::size_t stack_bytes) {
    const std::size_t want = page() + (stack_bytes + page() - 1) / page() * page();
    if (n <= count && want == slot) return;
    if (base) munmap(base, slot * count);
    slot = want;
    count = n;
    void* m =
        mmap(nullptr, slot * count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) die("cannot map fiber stacks");
    base = static_cast<char*>(m);
    for (unsigned i = 0; i < count; ++i)
      if (mprotect(base + i * slot, page(), PROT_NONE) != 0) die("cannot protect a guard page");
  }
  std::size_t stack_size() const { return slot - page(); }
};
StackPool g_stacks;

struct SharedBuffer {
  unsigned char* data = nullptr;
  std::size_t capacity = 0;
  void ensure(std::size_t bytes) {
    bytes = std::max<std::size_t>(bytes, 16);
    if (bytes <= capacity) return;
    ::operator delete (data, std::align_val_t{128});
    data = static_cast<unsigned char*>(::operator new (bytes, std::align_val_t{128}));
    capacity = bytes;
  }
};
SharedBuffer g_dynamic_shared;

std::map<const void*, std::size_t>& shared_limits() {
  static std::map<const void*, std::size_t> limits;
  return limits;
}

// AddressSanitizer's fiber annotations (sanitizer/common_interface_defs.h). Without them it
// takes a fiber's stack for the thread's: __asan_handle_no_return (before fail_in_fiber, a
// [[noreturn]] call) ignores the fiber stack and warns that false reports may follow. Every
// swapcontext is wrapped in start (the stack switched to) and finish (the stack switched from).
// No-ops in other builds.
#if defined(__SANITIZE_ADDRESS__)
void asan_start_switch(void** fake_stack_save, const void* bottom, std::size_t bytes) {
  __sanitizer_start_switch_fiber(fake_stack_save, bottom, bytes);
}
void asan_finish_switch(void* fake_stack_save, const void** bottom_old, std::size_t* bytes_old) {
  __sanitizer_finish_switch_fiber(fake_stack_save, bottom_old, bytes_old);
}
#else
void asan_start_switch(void**, const void*, std::size_t) {}
void asan_finish_switch(void*, const void**, std::size_t*) {}
#endif
// The scheduler's stack (the launching thread's), learnt when a fiber first runs.
const void* g_scheduler_stack_bottom = nullptr;
std::size_t g_scheduler_stack_bytes = 0;

void fiber_main() {
  asan_finish_switch(nullptr, &g_scheduler_stack_bottom, &g_scheduler_stack_bytes);
  g_run.body.run(g_run.body.context);
  g_run.current->state = FiberState::kDone;
  // Returning switches to uc_link, the scheduler; the fiber's stack is done with.
  asan_start_switch(nullptr, g_scheduler_stack_bottom, g_scheduler_stack_bytes);
}

Fiber& current_fiber(const char* builtin) {
  if (!g_run.current) {
    std::string what = std::string(builtin) + " called outside a kernel";
    die(what.c_str());
  }
  return *g_run.current;
}

void yield(Fiber& f) {
  asan_start_switch(&f.asan_fake_stack, g_scheduler_stack_bottom, g_scheduler_stack_bytes);
  swapcontext(&f.context, &g_run.scheduler);
  asan_finish_switch(f.asan_fake_stack, &g_scheduler_stack_bottom, &g_scheduler_stack_bytes);
}

// Records the error and leaves the fiber parked for good: the scheduler abandons the block.
[[noreturn]] void fail_in_fiber(Fiber& f, const std::string& what) {
  if (g_run.error.empty()) g_run.error = what;
  f.state = FiberState::kFailed;
  yield(f);
  die("a failed fiber was resumed");
}

std::string thread_str(const uint3& t) {
  return "(" + std::to_string(t.x) + "," + std::to_string(t.y) + "," + std::to_string(t.z) + ")";
}

std::string block_str() { return "block " + thread_str(blockIdx); }

std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

const char* op_name(const Fiber& f) {
  if (f.op == WarpOp::kBallot) return "__ballot_sync";
  if (f.op == WarpOp::kSyncwarp) return "__syncwarp";
  switch (f.kind) {
    case detail::ShuffleKind::kIndex: return "__shfl_sync";
    case detail::ShuffleKind::kUp: return "__shfl_up_sync";
    case detail::ShuffleKind::kDown: return "__shfl_down_sync";
    case detail::ShuffleKind::kXor: return "__shfl_xor_sync";
  }
  return "?";
}

// Lanes of warp `warp` that exist in this block (the last warp of a block may be partial).
unsigned existing_lanes(unsigned warp) {
  const unsigned first = warp * 32, n = std::min(32u, g_run.n_threads - first);
  return n == 32 ? kFullMask : (1u << n) - 1;
}

// Source lane of a shuffle (CUDA programming guide, warp shuffle functions).
long long shuffle_source(const Fiber& f, unsigned lane) {
  const long long seg = lane & ~unsigned(f.width - 1), end = seg + f.width;
  switch (f.kind) {
    case detail::ShuffleKind::kIndex: return seg + (f.arg & (f.width - 1));
    case detail::ShuffleKind::kUp: return lane - f.arg >= seg ? lane - f.arg : lane;
    case detail::ShuffleKind::kDown: return lane + f.arg < end ? lane + f.arg : lane;
    case detail::ShuffleKind::kXor: return (lane ^ f.arg) < end ? (lane ^ f.arg) : lane;
  }
  return lane;
}

// Called when fiber `f` has parked at a warp operation: if every lane of its group is now
// parked at the same operation with the same mask, performs the exchange and makes the group
// runnable. Otherwise the group stays parked (a deadlock is reported once nothing can run).
void try_complete_warp_op(Fiber& f) {
  const unsigned warp = f.linear / 32;
  const unsigned group = f.mask & existing_lanes(warp);
  Fiber* lanes = g_run.fibers.data() + warp * 32;
  for (unsigned l = 0; l < 32; ++l) {
    if (!(group >> l & 1)) continue;
    const Fiber& g = lanes[l];
    if (g.state != FiberState::kAtWarpOp || g.op != f.op || g.mask != f.mask) return;
    if (g.op == WarpOp::kShuffle && g.kind != f.kind) return;
  }
  unsigned ballot = 0;
  if (f.op == WarpOp::kBallot)
    for (unsigned l = 0; l < 32; ++l)
      if ((group >> l & 1) && lanes[l].in) ballot |= 1u << l;
  for (unsigned l = 0; l < 32; ++l) {
    if (!(group >> l & 1)) continue;
    Fiber& g = lanes[l];
    if (f.op == WarpOp::kShuffle) {
      const long long src = shuffle_source(g, l);
      g.out = (src >= 0 && src < 32 && (group >> src & 1)) ? lanes[src].in : ~std::uint64_t(0);
    } else {
      g.out = ballot;
    }
    g.state = FiberState::kReady;
  }
}

// Parks the current fiber at a warp operation and returns the exchanged value.
std::uint64_t warp_op(const char* name, WarpOp op, detail::ShuffleKind kind, unsigned mask,
                      std::uint64_t in, long long arg, int width) {
  Fiber& f = current_fiber(name);
  const unsigned lane = f.linear % 32;
  if (!(mask >> lane & 1))
    fail_in_fiber(f, std::string(name) + ": thread " + thread_str(f.tid) + " of " + block_str() +
                         " (lane " + std::to_string(lane) + ") is not in its own mask " +
                         hex(mask));
  if (width < 1 || width > 32 || (width & (width - 1)))
    fail_in_fiber(f, std::string(name) + ": width " + std::to_string(width) +
                         " is not a power of two in [1, 32]");
  if (op == WarpOp::kShuffle && kind == detail::ShuffleKind::kXor && (arg < 0 || arg > 31))
    fail_in_fiber(f, std::string(name) + ": lane mask " + std::to_string(arg) + " outside [0, 31]");
  f.op = op;
  f.kind = kind;
  f.mask = mask;
  f.in = in;
  f.arg = arg;
  f.width = width;
  f.state = FiberState::kAtWarpOp;
  yield(f);
  return f.out;
}

// Why no fiber can run although some are live: names one waiting thread and what blocks it.
std::string describe_stall() {
  std::ostringstream os;
  os << g_run.name << ": " << block_str() << ": ";
  const auto& fibers = g_run.fibers;
  const auto exited = std::count_if(fibers.begin(), fibers.end(),
                                    [](const Fiber& f) { return f.state == FiberState::kDone; });
  for (const Fiber& f : fibers) {
    if (f.state != FiberState::kAtWarpOp) continue;
    const unsigned warp = f.linear / 32, group = f.mask & existing_lanes(warp);
    for (unsigned l = 0; l < 32; ++l) {
      if (!(group >> l & 1)) continue;
      const Fiber& g = fibers[warp * 32 + l];
      if (g.state == FiberState::kAtWarpOp && g.op == f.op && g.mask == f.mask &&
          (g.op != WarpOp::kShuffle || g.kind == f.kind))
        continue;
      os << "thread " << thread_str(f.tid) << " waits at " << op_name(f) << " with mask "
         << hex(f.mask) << " but lane " << l << " of its warp ";
      if (g.state == FiberState::kDone)
        os << "has exited";
      else if (g.state == FiberState::kAtBarrier)
        os << "waits at __syncthreads";
      else
        os << "waits at " << op_name(g) << " with mask " << hex(g.mask);
      return os.str();
    }
  }
  // Only barrier waiters and exited threads are left.
  for (const Fiber& f : fibers) {
    if (f.state != FiberState::kAtBarrier) continue;
    os << "barrier count mismatch: thread " << thread_str(f.tid) << " waits at __syncthreads #"
       << f.barriers << " but " << exited << " thread(s) of the block exited";
    for (const Fiber& g : fibers)
      if (g.state == FiberState::kDone) {
        os << " (e.g. thread " << thread_str(g.tid) << " after " << g.barriers << " barrier(s))";
        break;
      }
    os << ": a __syncthreads in divergent code or after an early return";
    return os.str();
  }
  return os.str() + "no runnable thread";
}

void resume(Fiber& f) {
  g_run.current = &f;
  threadIdx = f.tid;
  void* scheduler_fake_stack = nullptr;
  asan_start_switch(&scheduler_fake_stack, f.stack_bottom, f.stack_bytes);
  swapcontext(&g_run.scheduler, &f.context);
  asan_finish_switch(scheduler_fake_stack, nullptr, nullptr);
  g_run.current = nullptr;
}

// Makes fiber i ready to run the kernel from its start, on its own stack. Not inlined:
// getcontext returns twice in principle, which would make the caller's locals "clobbered".
[[gnu::noinline]] void start_fiber(unsigned i) {
  Fiber& f = g_run.fibers[i];
  f.linear = i;
  f.tid = {i % blockDim.x, i / blockDim.x % blockDim.y, i / (blockDim.x * blockDim.y)};
  f.state = FiberState::kReady;
  f.barriers = 0;
  f.stack_bottom = g_stacks.stack(i);
  f.stack_bytes = g_stacks.stack_size();
  f.asan_fake_stack = nullptr;
  if (getcontext(&f.context) != 0) die("getcontext failed");
  f.context.uc_stack.ss_sp = g_stacks.stack(i);
  f.context.uc_stack.ss_size = g_stacks.stack_size();
  f.context.uc_link = &g_run.scheduler;
  makecontext(&f.context, fiber_main, 0);
}

// Runs one block to the end. Returns false (g_run.error says why) on a failed or stalled block.
bool run_block() {
  const unsigned n = g_run.n_threads;
  for (unsigned i = 0; i < n; ++i) start_fiber(i);
  unsigned live = n;
  for (;;) {
    bool ran = false;
    for (unsigned i : g_run.order) {
      Fiber& f = g_run.fibers[i];
      if (f.state != FiberState::kReady) continue;
      resume(f);
      ran = true;
      if (f.state == FiberState::kFailed) return false;
      if (f.state == FiberState::kDone) --live;
      if (f.state == FiberState::kAtWarpOp) try_complete_warp_op(f);
    }
    if (live == 0) return true;
    if (ran) continue;
    // Nothing can run: the only way on is a __syncthreads that every thread waits at.
    const bool all_at_barrier =
        live == n && std::all_of(g_run.fibers.begin(), g_run.fibers.begin() + n,
                                 [](const Fiber& f) { return f.state == FiberState::kAtBarrier; });
    if (!all_at_barrier) {
      g_run.error = describe_stall();
      return false;
    }
    for (unsigned i = 0; i < n; ++i) g_run.fibers[i].state = FiberState::kReady;
  }
}

void poison_shared_memory() {
  std::memset(g_dynamic_shared.data, kPoison, g_dynamic_shared.capacity);
  if (!__start_ssmtune_emu_shared || !__stop_ssmtune_emu_shared) return;
  // Addresses, not pointer arithmetic: the two symbols are distinct objects to the compiler.
  const auto begin = reinterpret_cast<std::uintptr_t>(__start_ssmtune_emu_shared);
  const auto end = reinterpret_cast<std::uintptr_t>(__stop_ssmtune_emu_shared);
  std::memset(__start_ssmtune_emu_shared, kPoison, end - begin);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Builtins

void __syncthreads() {
  Fiber& f = current_fiber("__syncthreads");
  ++f.barriers;
  f.state = FiberState::kAtBarrier;
  yield(f);
}

void __syncwarp(unsigned mask) {
  warp_op("__syncwarp", WarpOp::kSyncwarp, detail::ShuffleKind::kIndex, mask, 0, 0, 32);
}

unsigned __ballot_sync(unsigned mask, int predicate) {
  return unsigned(warp_op("__ballot_sync", WarpOp::kBallot, detail::ShuffleKind::kIndex, mask,
                          predicate != 0, 0, 32));
}

std::uint64_t detail::warp_shuffle(ShuffleKind kind, unsigned mask, std::uint64_t bits,
                                   long long arg, int width) {
  static constexpr const char* kNames[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                           "__shfl_xor_sync"};
  return warp_op(kNames[int(kind)], WarpOp::kShuffle, kind, mask, bits, arg, width);
}

void* dynamic_shared_memory() {
  current_fiber("dynamic shared memory");
  return g_dynamic_shared.data;
}

// ---------------------------------------------------------------------------------------------
// Launch

void detail::fail_launch(cudaError_t error, const std::string& detail) {
  g_launch_detail = detail;
  fail(error, detail);
}

void detail::launch(const char* name, const void* kernel, dim3 grid, dim3 block,
                    std::size_t shared_bytes, cudaStream_t stream, KernelBody body) {
  if (g_run.current) die("a kernel launched a kernel (dynamic parallelism is not emulated)");
  const std::string who = std::string(name) + ": ";
  const std::uint64_t threads = std::uint64_t(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
      grid.z > 65535)
    return fail_launch(cudaErrorInvalidConfiguration,
                       who + "grid " + thread_str({grid.x, grid.y, grid.z}) + " out of range");
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64)
    return fail_launch(cudaErrorInvalidConfiguration, who + "block " +
                                                          thread_str({block.x, block.y, block.z}) +
                                                          " out of range (at most 1024 threads)");
  auto limit_it = shared_limits().find(kernel);
  const std::size_t limit =
      limit_it == shared_limits().end() ? kDefaultSharedLimit : limit_it->second;
  if (shared_bytes > limit)
    return fail_launch(cudaErrorInvalidValue, who + std::to_string(shared_bytes) +
                                                  " bytes of dynamic shared memory, over " +
                                                  std::to_string(limit) +
                                                  " (cudaFuncSetAttribute raises the limit)");
  if (!internal::valid_stream(stream))
    return fail_launch(cudaErrorInvalidResourceHandle, who + "invalid stream");

  g_run.body = body;
  g_run.name = name;
  g_run.n_threads = unsigned(threads);
  g_run.error.clear();
  if (g_run.fibers.size() < threads) g_run.fibers.resize(threads);
  g_stacks.ensure(unsigned(threads), g_stack_bytes);
  g_dynamic_shared.ensure(shared_bytes);
  blockDim = block;
  gridDim = grid;

  std::mt19937_64 rng(g_seed * 0x9E3779B97F4A7C15ull + g_launches_since_seed++);
  const std::uint64_t n_blocks = std::uint64_t(grid.x) * grid.y * grid.z;
  // Blocks in schedule order too, so a kernel that relies on block order fails.
  std::vector<std::uint64_t> block_order(n_blocks);
  std::iota(block_order.begin(), block_order.end(), 0);
  if (g_schedule == Schedule::kReverse) std::reverse(block_order.begin(), block_order.end());
  if (g_schedule == Schedule::kShuffled) std::shuffle(block_order.begin(), block_order.end(), rng);
  g_run.order.resize(threads);
  std::iota(g_run.order.begin(), g_run.order.end(), 0u);
  if (g_schedule == Schedule::kReverse) std::reverse(g_run.order.begin(), g_run.order.end());

  for (const std::uint64_t b : block_order) {
    blockIdx = {unsigned(b % grid.x), unsigned(b / grid.x % grid.y),
                unsigned(b / (std::uint64_t(grid.x) * grid.y))};
    if (g_schedule == Schedule::kShuffled)
      std::shuffle(g_run.order.begin(), g_run.order.end(), rng);
    poison_shared_memory();
    if (!run_block()) {
      fail_launch(cudaErrorLaunchFailure, g_run.error);
      break;
    }
  }
  threadIdx = {0, 0, 0};
  blockIdx = {0, 0, 0};
}

cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      std::size_t(value) > kMaxSharedOptIn)
    return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: unsupported attribute or value");
  shared_limits()[kernel] = std::size_t(value);
  return cudaSuccess;
}

// ---------------------------------------------------------------------------------------------
// Controls

const char* schedule_name(Schedule schedule) {
  switch (schedule) {
    case Schedule::kForward: return "forward";
    case Schedule::kReverse: return "reverse";
    case Schedule::kShuffled: return "shuffled";
  }
  return "?";
}

void set_schedule(Schedule s, std::uint64_t seed) {
  g_schedule = s;
  g_seed = seed;
  g_launches_since_seed = 0;
}

Schedule schedule() { return g_schedule; }

ScheduleScope::ScheduleScope(Schedule s, std::uint64_t seed)
    : previous_(g_schedule), previous_seed_(g_seed) {
  set_schedule(s, seed);
}
ScheduleScope::~ScheduleScope() { set_schedule(previous_, previous_seed_); }

void set_fiber_stack_bytes(std::size_t bytes) {
  g_stack_bytes = std::max<std::size_t>(bytes, 16 << 10);
}

std::string last_launch_error() { return g_launch_detail; }

}  // namespace cuda_emu
