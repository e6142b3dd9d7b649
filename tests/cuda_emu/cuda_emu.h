// CUDA on the CPU for the tests (docs/cuda.md "The emulator"): the
// builtins and the subset of the runtime API that kernels/ uses, so the kernel sources compile
// unmodified as C++ (g++ -DSSMTUNE_CUDA_EMU, through kernels/cuda_compat.cuh) and run on a
// machine without a GPU. Never include cuda_runtime.h next to this header.
//
// Execution: a launch runs its blocks one after another on the calling OS thread. A block's
// threads are ucontext fibers that switch only at __syncthreads, at warp operations
// (__shfl*_sync, __ballot_sync, __all/any_sync, __syncwarp) and when they return. Between two
// switch points the runnable threads run one after another in the order of the current
// Schedule (forward, reverse or shuffled; blocks too), so a missing barrier changes the answer
// in some order. A __syncthreads that some live thread of the block never reaches, or a warp
// operation a named lane never joins, fails the launch (cudaErrorLaunchFailure, with the detail
// in cudaGetErrorString and last_launch_error()) instead of hanging.
//
// Memory: device memory is host memory. cudaMalloc fills new blocks with 0xFF bytes (a NaN in
// every float) and every block's dynamic shared memory is refilled with them, so a read of
// something never written shows. Static __shared__ variables are function statics (correct
// only because blocks run one at a time). Streams and events exist, but every call runs to the
// end before it returns, in call order.
#pragma once

#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace cuda_emu {

// ---------------------------------------------------------------------------------------------
// Built-in types and variables

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}  // NOLINT: implicit, as in CUDA
};

// The current fiber's indices. The scheduler writes them before it resumes a fiber: all fibers
// share this one OS thread, so thread_local would not tell them apart.
inline uint3 threadIdx{0, 0, 0};
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim{1, 1, 1};
inline dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------
// Device builtins

void __syncthreads();
void __syncwarp(unsigned mask = 0xffffffffu);
// Bit l set for each lane l of `mask` (that exists in this block) whose predicate is non-zero.
unsigned __ballot_sync(unsigned mask, int predicate);
inline int __all_sync(unsigned mask, int predicate) { return __ballot_sync(mask, !predicate) == 0; }
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }

// Start of the launch's dynamic shared memory (kernels reach it through SSMTUNE_DYNAMIC_SHARED).
void* dynamic_shared_memory();

namespace detail {
enum class ShuffleKind { kIndex, kUp, kDown, kXor };
// The warp exchange point: waits until every lane of `mask` has arrived at the same operation,
// then returns the bits of the source lane. A source lane outside the operation's lanes gives
// all-one bits (a NaN float, -1 as an integer): the GPU leaves that value undefined.
std::uint64_t warp_shuffle(ShuffleKind kind, unsigned mask, std::uint64_t bits, long long arg,
                           int width);

template <class T>
T shuffle_as(ShuffleKind kind, unsigned mask, T var, long long arg, int width) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle of 1 to 8 bytes");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = warp_shuffle(kind, mask, bits, arg, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}
}  // namespace detail

// CUDA's semantics, lane = linear thread index % 32, segments of `width` lanes:
// __shfl_sync reads lane (srcLane mod width) of the caller's segment; _up / _down read
// lane -/+ delta and keep the caller's own value when that leaves the segment; _xor reads
// lane ^ laneMask and keeps its own value when that lies in a later segment.
template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  return detail::shuffle_as(detail::ShuffleKind::kIndex, mask, var, src_lane, width);
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return detail::shuffle_as(detail::ShuffleKind::kUp, mask, var, delta, width);
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return detail::shuffle_as(detail::ShuffleKind::kDown, mask, var, delta, width);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  return detail::shuffle_as(detail::ShuffleKind::kXor, mask, var, lane_mask, width);
}

// Atomics: fibers on one OS thread never interrupt each other between two switch points, so a
// plain read-modify-write is atomic here. Each returns the old value, as CUDA's do.
namespace detail {
template <class T, class F>
T read_modify_write(T* address, F update) {
  const T old = *address;
  *address = update(old);
  return old;
}
template <class T>
using NoDeduce = std::type_identity_t<T>;  // T comes from the pointer alone, as in CUDA
}  // namespace detail
template <class T>
T atomicAdd(T* a, detail::NoDeduce<T> v) {
  return detail::read_modify_write(a, [v](T old) { return T(old + v); });
}
template <class T>
T atomicSub(T* a, detail::NoDeduce<T> v) {
  return detail::read_modify_write(a, [v](T old) { return T(old - v); });
}
template <class T>
T atomicMax(T* a, detail::NoDeduce<T> v) {
  return detail::read_modify_write(a, [v](T old) { return old < v ? v : old; });
}
template <class T>
T atomicMin(T* a, detail::NoDeduce<T> v) {
  return detail::read_modify_write(a, [v](T old) { return v < old ? v : old; });
}
template <class T>
T atomicExch(T* a, detail::NoDeduce<T> v) {
  return detail::read_modify_write(a, [v](T) { return v; });
}
template <class T>
T atomicCAS(T* a, detail::NoDeduce<T> compare, detail::NoDeduce<T> v) {
  return detail::read_modify_write(a, [=](T old) { return old == compare ? v : old; });
}

// Memory fences order nothing here: one OS thread runs every fiber.
inline void __threadfence() {}
inline void __threadfence_block() {}
template <class T>
T __ldg(const T* p) {
  return *p;
}

// Intrinsics that are approximations on the GPU are exact here (tests compare with tolerances).
// glibc's math.h already declares __expf and __logf (exact aliases of expf and logf).
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }

// ---------------------------------------------------------------------------------------------
// Runtime API (host side). Error codes have CUDA's values.

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;

enum cudaMemcpyKind : int {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

struct Stream;
struct Event;
using cudaStream_t = Stream*;  // nullptr is the default stream
using cudaEvent_t = Event*;

cudaError_t cudaMalloc(void** ptr, std::size_t bytes);
template <class T>
cudaError_t cudaMalloc(T** ptr, std::size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(ptr), bytes);
}
cudaError_t cudaFree(void* ptr);
// Page-locked host memory: plain host memory here (a host range for cudaMemcpy's checks),
// registered so cudaFreeHost refuses anything else.
cudaError_t cudaMallocHost(void** ptr, std::size_t bytes);
cudaError_t cudaFreeHost(void* ptr);
// Device ranges must lie inside one cudaMalloc block and host ranges outside all of them, as
// `kind` says (cudaMemcpyDefault accepts both), else cudaErrorInvalidValue.
cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* ptr, int value, std::size_t bytes);
cudaError_t cudaMemsetAsync(void* ptr, int value, std::size_t bytes, cudaStream_t stream = nullptr);

cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventQuery(cudaEvent_t event);
// Host wall time between the two records (the emulator's time, not a GPU's).
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);

// The launch error (if any) is pending until cudaGetLastError returns and clears it;
// synchronising calls return it too, without clearing it.
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorName(cudaError_t error);
// For the most recent failure, the description ends with the emulator's detail.
const char* cudaGetErrorString(cudaError_t error);

cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attribute, int value);

// One emulated device, "cuda-emu", compute capability 9.0, with the properties a launch
// checks against. cudaSetDevice accepts 0 only.
struct cudaDeviceProp {
  char name[256];
  int major, minor;
  std::size_t totalGlobalMem, sharedMemPerBlock;
  int maxThreadsPerBlock, multiProcessorCount;
};
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaMemGetInfo(std::size_t* free_bytes, std::size_t* total_bytes);
template <class... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attribute, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attribute, value);
}

// ---------------------------------------------------------------------------------------------
// Emulator controls (tests)

// The order in which the runnable threads of a block (and the blocks of a grid) run between
// two switch points. kShuffled draws a fresh permutation for every block from `seed`.
enum class Schedule { kForward, kReverse, kShuffled };
const char* schedule_name(Schedule schedule);
void set_schedule(Schedule schedule, std::uint64_t seed = 1);
Schedule schedule();

// Sets a schedule for one scope and puts the previous one back.
class ScheduleScope {
 public:
  explicit ScheduleScope(Schedule s, std::uint64_t seed = 1);
  ~ScheduleScope();
  ScheduleScope(const ScheduleScope&) = delete;
  ScheduleScope& operator=(const ScheduleScope&) = delete;

 private:
  Schedule previous_;
  std::uint64_t previous_seed_;
};

// Stack of every fiber (default 64 KiB, rounded up to whole pages, with a guard page below it
// so an overflow faults instead of corrupting a neighbour): large per-thread local arrays need
// more.
void set_fiber_stack_bytes(std::size_t bytes);
// What went wrong in the most recent failed launch ("" if none failed yet).
std::string last_launch_error();
// True if [ptr, ptr + bytes) lies inside one live cudaMalloc block.
bool is_device_pointer(const void* ptr, std::size_t bytes = 1);
// Bytes in live cudaMalloc blocks (leak checks in tests).
std::size_t device_bytes_in_use();
// The emulated device's memory (64 GiB unless set): what cudaMemGetInfo and
// cudaGetDeviceProperties report and the largest cudaMalloc it lends. Tests of size checks
// set a small one.
void set_device_memory_bytes(std::size_t bytes);

// ---------------------------------------------------------------------------------------------
// Launch (SSMTUNE_LAUNCH in kernels/launch.cuh expands to this under the emulator)

namespace detail {
struct KernelBody {
  void (*run)(void* context);  // runs one thread of the kernel, calls the kernel once
  void* context;
};
void launch(const char* name, const void* kernel, dim3 grid, dim3 block, std::size_t shared_bytes,
            cudaStream_t stream, KernelBody body);
void fail_launch(cudaError_t error, const std::string& detail);

template <class T>
bool is_host_pointer_argument(const T& value) {
  if constexpr (std::is_pointer_v<T>)
    return value != nullptr && !is_device_pointer(value, 0);
  else
    return false;
}
template <class Tuple, std::size_t... I>
int first_host_pointer_argument(const Tuple& params, std::index_sequence<I...>) {
  int bad = -1;
  ((bad < 0 && is_host_pointer_argument(std::get<I>(params)) ? bad = int(I) : 0), ...);
  return bad;
}
}  // namespace detail

// Converts the arguments to the kernel's parameter types, as a launch does; every thread then
// calls the kernel with its own copy of them. A non-null pointer argument that points into no
// cudaMalloc block fails the launch (on a GPU it would be an illegal address).
template <class... P, class... A>
void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, std::size_t shared_bytes,
            cudaStream_t stream, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong argument count");
  std::tuple<std::decay_t<P>...> params(static_cast<std::decay_t<P>>(std::forward<A>(args))...);
  const int bad = detail::first_host_pointer_argument(params, std::index_sequence_for<P...>{});
  if (bad >= 0) {
    detail::fail_launch(
        cudaErrorInvalidValue,
        std::string(name) + ": argument " + std::to_string(bad + 1) + " is not a device pointer");
    return;
  }
  auto run = [&] { std::apply(kernel, params); };
  detail::launch(name, reinterpret_cast<const void*>(kernel), grid, block, shared_bytes, stream,
                 {[](void* c) { (*static_cast<decltype(run)*>(c))(); }, &run});
}

}  // namespace cuda_emu

// CUDA spells these without a namespace.
using cuda_emu::__all_sync;
using cuda_emu::__any_sync;
using cuda_emu::__ballot_sync;
using cuda_emu::__fdividef;
using cuda_emu::__ldg;
using cuda_emu::__popc;
using cuda_emu::__shfl_down_sync;
using cuda_emu::__shfl_sync;
using cuda_emu::__shfl_up_sync;
using cuda_emu::__shfl_xor_sync;
using cuda_emu::__syncthreads;
using cuda_emu::__syncwarp;
using cuda_emu::__threadfence;
using cuda_emu::__threadfence_block;
using cuda_emu::atomicAdd;
using cuda_emu::atomicCAS;
using cuda_emu::atomicExch;
using cuda_emu::atomicMax;
using cuda_emu::atomicMin;
using cuda_emu::atomicSub;
using cuda_emu::blockDim;
using cuda_emu::blockIdx;
using cuda_emu::cudaDeviceSynchronize;
using cuda_emu::cudaError;
using cuda_emu::cudaError_t;
using cuda_emu::cudaEvent_t;
using cuda_emu::cudaEventCreate;
using cuda_emu::cudaEventDestroy;
using cuda_emu::cudaEventElapsedTime;
using cuda_emu::cudaEventQuery;
using cuda_emu::cudaEventRecord;
using cuda_emu::cudaEventSynchronize;
using cuda_emu::cudaDeviceProp;
using cuda_emu::cudaFree;
using cuda_emu::cudaFreeHost;
using cuda_emu::cudaMallocHost;
using cuda_emu::cudaGetDeviceCount;
using cuda_emu::cudaGetDeviceProperties;
using cuda_emu::cudaMemGetInfo;
using cuda_emu::cudaSetDevice;
using cuda_emu::cudaFuncAttribute;
using cuda_emu::cudaFuncSetAttribute;
using cuda_emu::cudaGetErrorName;
using cuda_emu::cudaGetErrorString;
using cuda_emu::cudaGetLastError;
using cuda_emu::cudaMalloc;
using cuda_emu::cudaMemcpy;
using cuda_emu::cudaMemcpyAsync;
using cuda_emu::cudaMemcpyKind;
using cuda_emu::cudaMemset;
using cuda_emu::cudaMemsetAsync;
using cuda_emu::cudaPeekAtLastError;
using cuda_emu::cudaStream_t;
using cuda_emu::cudaStreamCreate;
using cuda_emu::cudaStreamDestroy;
using cuda_emu::cudaStreamQuery;
using cuda_emu::cudaStreamSynchronize;
using cuda_emu::cudaStreamWaitEvent;
using cuda_emu::dim3;
using cuda_emu::gridDim;
using cuda_emu::rsqrtf;
using cuda_emu::threadIdx;
using cuda_emu::uint3;
using cuda_emu::warpSize;
// Unscoped enumerators (cudaSuccess, cudaMemcpyHostToDevice, ...) are spelled unqualified too.
using enum cuda_emu::cudaError_t;
using enum cuda_emu::cudaMemcpyKind;
using enum cuda_emu::cudaFuncAttribute;
