// The emulator's runtime API: device memory as host memory with a registry of cudaMalloc
// blocks, copies and sets checked against it, synchronous streams and events, and CUDA's
// pending-error rules (cuda_emu.h).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <new>
#include <set>
#include <string>

#include "cuda_emu.h"
#include "cuda_emu_internal.h"

namespace cuda_emu {
namespace {

using internal::fail;
using internal::kPoison;
using internal::valid_stream;
std::size_t g_device_bytes = std::size_t(1) << 36;  // set_device_memory_bytes

// ---------------------------------------------------------------------------------------------
// Errors

cudaError_t g_pending = cudaSuccess;  // the error cudaGetLastError will return
cudaError_t g_detail_error = cudaSuccess;
std::string g_detail;  // detail of the most recent failure

}  // namespace

cudaError_t internal::fail(cudaError_t error, std::string detail) {
  if (g_pending == cudaSuccess) g_pending = error;
  g_detail_error = error;
  g_detail = std::move(detail);
  return error;
}

namespace {

// ---------------------------------------------------------------------------------------------
// Device memory registry: base address -> size of every live cudaMalloc block.

std::map<const char*, std::size_t>& allocations() {
  static std::map<const char*, std::size_t> blocks;
  return blocks;
}

bool in_device_block(const void* ptr, std::size_t bytes) {
  const char* p = static_cast<const char*>(ptr);
  auto& blocks = allocations();
  auto it = blocks.upper_bound(p);
  if (it == blocks.begin()) return false;
  --it;
  const std::size_t offset = std::size_t(p - it->first);
  // A pointer one past the end is still "inside" when no byte is touched (bytes == 0).
  return offset <= it->second && bytes <= it->second - offset;
}

std::set<Stream*>& streams() {
  static std::set<Stream*> live;
  return live;
}

}  // namespace

bool internal::valid_stream(cudaStream_t s) { return s == nullptr || streams().count(s) > 0; }

struct Stream {
  int unused = 0;
};
struct Event {
  std::chrono::steady_clock::time_point time{};
  bool recorded = false;
};

namespace {
std::set<Event*>& events() {
  static std::set<Event*> live;
  return live;
}
}  // namespace

// ---------------------------------------------------------------------------------------------
// Runtime API

cudaError_t cudaMalloc(void** ptr, std::size_t bytes) {
  if (!ptr) return fail(cudaErrorInvalidValue, "cudaMalloc: null result pointer");
  *ptr = nullptr;
  if (bytes > g_device_bytes)
    return fail(cudaErrorMemoryAllocation,
                "cudaMalloc: " + std::to_string(bytes) + " bytes is more than the emulator lends");
  const std::size_t size = std::max<std::size_t>(bytes, 1);
  void* p = ::operator new (size, std::align_val_t{256}, std::nothrow);
  if (!p) return fail(cudaErrorMemoryAllocation, "cudaMalloc: out of host memory");
  std::memset(p, kPoison, size);  // uninitialised device memory reads as NaN
  allocations()[static_cast<const char*>(p)] = size;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (!ptr) return cudaSuccess;
  auto it = allocations().find(static_cast<const char*>(ptr));
  if (it == allocations().end())
    return fail(cudaErrorInvalidValue, "cudaFree: pointer is not the start of a cudaMalloc block");
  allocations().erase(it);
  ::operator delete (ptr, std::align_val_t{256});
  return cudaSuccess;
}

static std::set<void*>& pinned_blocks() {
  static std::set<void*> blocks;
  return blocks;
}

cudaError_t cudaMallocHost(void** ptr, std::size_t bytes) {
  if (!ptr) return fail(cudaErrorInvalidValue, "cudaMallocHost: null result pointer");
  *ptr = ::operator new (std::max<std::size_t>(bytes, 1), std::nothrow);
  if (!*ptr) return fail(cudaErrorMemoryAllocation, "cudaMallocHost: out of host memory");
  pinned_blocks().insert(*ptr);
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  if (!ptr) return cudaSuccess;
  if (!pinned_blocks().erase(ptr))
    return fail(cudaErrorInvalidValue, "cudaFreeHost: pointer is not from cudaMallocHost");
  ::operator delete (ptr);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
  if (bytes == 0) return cudaSuccess;
  if (!dst || !src) return fail(cudaErrorInvalidValue, "cudaMemcpy: null pointer");
  const bool dst_device = in_device_block(dst, bytes), src_device = in_device_block(src, bytes);
  bool ok = true;
  switch (kind) {
    case cudaMemcpyHostToHost: ok = !dst_device && !src_device; break;
    case cudaMemcpyHostToDevice: ok = dst_device && !src_device; break;
    case cudaMemcpyDeviceToHost: ok = !dst_device && src_device; break;
    case cudaMemcpyDeviceToDevice: ok = dst_device && src_device; break;
    case cudaMemcpyDefault: break;
    default: return fail(cudaErrorInvalidMemcpyDirection, "cudaMemcpy: unknown direction");
  }
  if (!ok)
    return fail(cudaErrorInvalidValue,
                "cudaMemcpy of " + std::to_string(bytes) + " bytes: source " +
                    (src_device ? "is" : "is not") + " and destination " +
                    (dst_device ? "is" : "is not") +
                    " inside a cudaMalloc block, which the copy direction contradicts");
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle, "invalid stream");
  return cudaMemcpy(dst, src, bytes, kind);
}

cudaError_t cudaMemset(void* ptr, int value, std::size_t bytes) {
  if (bytes == 0) return cudaSuccess;
  if (!in_device_block(ptr, bytes))
    return fail(cudaErrorInvalidValue, "cudaMemset: range is not inside a cudaMalloc block");
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, std::size_t bytes, cudaStream_t stream) {
  if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle, "invalid stream");
  return cudaMemset(ptr, value, bytes);
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  if (!stream) return fail(cudaErrorInvalidValue, "cudaStreamCreate: null result pointer");
  *stream = new Stream;
  streams().insert(*stream);
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (!stream || !streams().erase(stream))
    return fail(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: not a live stream");
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle, "invalid stream");
  return g_pending;
}

cudaError_t cudaStreamQuery(cudaStream_t stream) { return cudaStreamSynchronize(stream); }

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned) {
  if (!valid_stream(stream) || !events().count(event))
    return fail(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: invalid stream or event");
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  if (!event) return fail(cudaErrorInvalidValue, "cudaEventCreate: null result pointer");
  *event = new Event;
  events().insert(*event);
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (!event || !events().erase(event))
    return fail(cudaErrorInvalidResourceHandle, "cudaEventDestroy: not a live event");
  delete event;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (!events().count(event) || !valid_stream(stream))
    return fail(cudaErrorInvalidResourceHandle, "cudaEventRecord: invalid event or stream");
  event->time = std::chrono::steady_clock::now();
  event->recorded = true;
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (!events().count(event))
    return fail(cudaErrorInvalidResourceHandle, "cudaEventSynchronize: not a live event");
  return g_pending;
}

cudaError_t cudaEventQuery(cudaEvent_t event) { return cudaEventSynchronize(event); }

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!ms) return fail(cudaErrorInvalidValue, "cudaEventElapsedTime: null result pointer");
  if (!events().count(start) || !events().count(end) || !start->recorded || !end->recorded)
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: event not recorded");
  *ms = std::chrono::duration<float, std::milli>(end->time - start->time).count();
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return g_pending; }

cudaError_t cudaGetLastError() {
  const cudaError_t e = g_pending;
  g_pending = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return g_pending; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error) {
  const char* base = "unknown error";
  switch (error) {
    case cudaSuccess: base = "no error"; break;
    case cudaErrorInvalidValue: base = "invalid argument"; break;
    case cudaErrorMemoryAllocation: base = "out of memory"; break;
    case cudaErrorInvalidConfiguration: base = "invalid configuration argument"; break;
    case cudaErrorInvalidDevicePointer: base = "invalid device pointer"; break;
    case cudaErrorInvalidMemcpyDirection: base = "invalid copy direction for memcpy"; break;
    case cudaErrorInvalidResourceHandle: base = "invalid resource handle"; break;
    case cudaErrorNotReady: base = "device not ready"; break;
    case cudaErrorLaunchFailure: base = "unspecified launch failure"; break;
  }
  if (error == cudaSuccess || error != g_detail_error || g_detail.empty()) return base;
  static std::string message;
  message = std::string(base) + " (emulator: " + g_detail + ")";
  return message.c_str();
}

bool is_device_pointer(const void* ptr, std::size_t bytes) { return in_device_block(ptr, bytes); }

cudaError_t cudaGetDeviceCount(int* count) {
  if (!count) return fail(cudaErrorInvalidValue, "cudaGetDeviceCount: null count");
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess
                     : fail(cudaErrorInvalidValue, "cudaSetDevice: the emulator has device 0 only");
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (!prop || device != 0) return fail(cudaErrorInvalidValue, "cudaGetDeviceProperties");
  *prop = cudaDeviceProp{};
  std::strncpy(prop->name, "cuda-emu (CUDA on the CPU)", sizeof(prop->name) - 1);
  prop->major = 9;
  prop->minor = 0;
  prop->totalGlobalMem = g_device_bytes;
  prop->sharedMemPerBlock = 48 * 1024;
  prop->maxThreadsPerBlock = 1024;
  prop->multiProcessorCount = 1;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(std::size_t* free_bytes, std::size_t* total_bytes) {
  if (!free_bytes || !total_bytes) return fail(cudaErrorInvalidValue, "cudaMemGetInfo");
  *total_bytes = g_device_bytes;
  *free_bytes = g_device_bytes - std::min(g_device_bytes, device_bytes_in_use());
  return cudaSuccess;
}

void set_device_memory_bytes(std::size_t bytes) { g_device_bytes = bytes; }

std::size_t device_bytes_in_use() {
  std::size_t total = 0;
  for (const auto& [base, size] : allocations()) total += size;
  return total;
}

}  // namespace cuda_emu
