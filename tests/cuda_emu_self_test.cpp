// The CUDA-on-CPU emulator itself (tests/cuda_emu/cuda_emu.h): that thread orders expose
// missing barriers, that barrier and warp misuse fail a launch instead of hanging, that warp
// shuffles and ballots follow CUDA's documented lane rules, that indices, shared memory and
// atomics behave as on a GPU, and that the runtime shim checks what a GPU would reject.
// The kernels here are test kernels, compiled only by the host compiler.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "cuda_emu_test_util.h"
#include "kernels/launch.cuh"

namespace {

using cuda_emu::Schedule;
using ssmtune::testing::kSchedules;
using ssmtune::testing::require_launch_ok;

template <class T>
struct DeviceArray {
  explicit DeviceArray(std::size_t count) : n(count) {
    REQUIRE(cudaMalloc(&data, n * sizeof(T)) == cudaSuccess);
  }
  ~DeviceArray() { cudaFree(data); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  void upload(const std::vector<T>& host) {
    REQUIRE(host.size() == n);
    REQUIRE(cudaMemcpy(data, host.data(), n * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  std::vector<T> download() const {
    std::vector<T> host(n);
    REQUIRE(cudaMemcpy(host.data(), data, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return host;
  }
  std::size_t n;
  T* data = nullptr;
};

// Fails unless the last launch failed with `error` and a detail containing `needle`.
void require_launch_error(cudaError_t error, const std::string& needle) {
  const cudaError_t e = cudaGetLastError();
  INFO("error " << cudaGetErrorName(e) << ": " << cudaGetErrorString(e));
  REQUIRE(e == error);
  CHECK(cuda_emu::last_launch_error().find(needle) != std::string::npos);
  CHECK(std::string(cudaGetErrorString(e)).find("emulator") != std::string::npos);
  CHECK(cudaGetLastError() == cudaSuccess);  // reading the error cleared it
}

// ---------------------------------------------------------------------------------------------
// Missing barriers

constexpr int kTreeThreads = 256;

// Tree sum of each block's kTreeThreads inputs. drop = 1 leaves out the barrier between the
// stores and the first reads, drop = 2 the one inside the loop. (The flag is uniform across
// the block, so the barriers that remain are legal.)
__global__ void tree_sum(const float* in, float* out, int drop) {
  __shared__ float buf[kTreeThreads];
  const unsigned t = threadIdx.x;
  buf[t] = in[blockIdx.x * kTreeThreads + t];
  if (drop != 1) __syncthreads();
  for (unsigned half = kTreeThreads / 2; half > 0; half >>= 1) {
    if (t < half) buf[t] += buf[t + half];
    if (drop != 2) __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = buf[0];
}

// out[t] = in[t - 1] (0 for t = 0) through shared memory; drop = 1 leaves out the barrier.
__global__ void shift_right(const float* in, float* out, int drop) {
  __shared__ float buf[kTreeThreads];
  const unsigned t = threadIdx.x;
  buf[t] = in[t];
  if (drop != 1) __syncthreads();
  out[t] = t > 0 ? buf[t - 1] : 0.0f;
}

// Sums of 3 blocks of the integers 1..768 (exact in float) by tree_sum under `order`.
bool tree_sum_right(Schedule order, int drop) {
  cuda_emu::ScheduleScope scope(order);
  const int blocks = 3;
  std::vector<float> in(blocks * kTreeThreads);
  std::iota(in.begin(), in.end(), 1.0f);
  DeviceArray<float> d_in(in.size()), d_out(blocks);
  d_in.upload(in);
  SSMTUNE_LAUNCH(tree_sum, dim3(blocks), dim3(kTreeThreads), 0, nullptr, d_in.data, d_out.data,
                 drop);
  require_launch_ok();
  const std::vector<float> out = d_out.download();
  for (int b = 0; b < blocks; ++b) {
    const double first = b * kTreeThreads + 1, last = first + kTreeThreads - 1;
    if (out[b] != float((first + last) * kTreeThreads / 2)) return false;
  }
  return true;
}

bool shift_right_right(Schedule order, int drop) {
  cuda_emu::ScheduleScope scope(order);
  std::vector<float> in(kTreeThreads);
  std::iota(in.begin(), in.end(), 1.0f);
  DeviceArray<float> d_in(in.size()), d_out(in.size());
  d_in.upload(in);
  SSMTUNE_LAUNCH(shift_right, dim3(1), dim3(kTreeThreads), 0, nullptr, d_in.data, d_out.data, drop);
  require_launch_ok();
  const std::vector<float> out = d_out.download();
  for (int t = 0; t < kTreeThreads; ++t)
    if (out[t] != (t > 0 ? in[t - 1] : 0.0f)) return false;
  return true;
}

TEST_CASE(
    "a block reduction missing a __syncthreads is wrong in some thread order, the "
    "correct one right in all",
    "[cuda-emu]") {
  for (const Schedule order : kSchedules) {
    INFO("schedule " << cuda_emu::schedule_name(order));
    CHECK(tree_sum_right(order, 0));
    CHECK(shift_right_right(order, 0));
  }
  for (const int drop : {1, 2}) {
    INFO("tree_sum without barrier " << drop);
    bool some_order_wrong = false;
    for (const Schedule order : kSchedules) some_order_wrong |= !tree_sum_right(order, drop);
    CHECK(some_order_wrong);
    // Pitfall 6 of docs/cuda.md "The emulator": one fixed order hides a missing barrier. In the
    // reverse order every writer runs before its reader, so only the other orders catch these
    // two...
    CHECK_FALSE(tree_sum_right(Schedule::kForward, drop));
    CHECK(tree_sum_right(Schedule::kReverse, drop));
  }
  // ... and a reader of a lower thread's slot is caught only by the reverse order.
  CHECK(shift_right_right(Schedule::kForward, 1));
  CHECK_FALSE(shift_right_right(Schedule::kReverse, 1));
}

// ---------------------------------------------------------------------------------------------
// Barrier and warp misuse fail the launch

__global__ void barrier_in_divergent_code(float* out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1.0f;
}

__global__ void early_return_before_barrier(float* out, unsigned n) {
  if (threadIdx.x >= n) return;
  out[threadIdx.x] = 1.0f;
  __syncthreads();
}

__global__ void half_warp_joins_full_mask_shuffle(float* out) {
  float v = float(threadIdx.x);
  if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void shuffle_against_barrier(float* out) {
  float v = float(threadIdx.x);
  if (threadIdx.x < 16)
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  else
    __syncthreads();
  out[threadIdx.x] = v;
}

TEST_CASE("__syncthreads not reached by every thread of a block is a launch error, not a hang",
          "[cuda-emu]") {
  for (const Schedule order : kSchedules) {
    INFO("schedule " << cuda_emu::schedule_name(order));
    cuda_emu::ScheduleScope scope(order);
    DeviceArray<float> out(64);
    SSMTUNE_LAUNCH(barrier_in_divergent_code, dim3(2), dim3(64), 0, nullptr, out.data);
    require_launch_error(cudaErrorLaunchFailure, "barrier count mismatch");
    SSMTUNE_LAUNCH(early_return_before_barrier, dim3(1), dim3(64), 0, nullptr, out.data, 40u);
    require_launch_error(cudaErrorLaunchFailure, "barrier count mismatch");
    SSMTUNE_LAUNCH(early_return_before_barrier, dim3(1), dim3(64), 0, nullptr, out.data, 64u);
    require_launch_ok();
  }
}

TEST_CASE("a warp operation some lane of its mask never joins is a launch error", "[cuda-emu]") {
  for (const Schedule order : kSchedules) {
    INFO("schedule " << cuda_emu::schedule_name(order));
    cuda_emu::ScheduleScope scope(order);
    DeviceArray<float> out(32);
    SSMTUNE_LAUNCH(half_warp_joins_full_mask_shuffle, dim3(1), dim3(32), 0, nullptr, out.data);
    require_launch_error(cudaErrorLaunchFailure, "has exited");
    SSMTUNE_LAUNCH(shuffle_against_barrier, dim3(1), dim3(32), 0, nullptr, out.data);
    require_launch_error(cudaErrorLaunchFailure, "waits at __syncthreads");
  }
}

// ---------------------------------------------------------------------------------------------
// Warp operations

constexpr int kProbes = 13;

// Block (16, 4): two warps of a 2-D block, lane = (x + 16 y) % 32. Each thread writes kProbes
// results; the expected values below follow CUDA's documentation, not the emulator's code.
__global__ void warp_probe(int* out) {
  __shared__ int slots[64];
  const unsigned linear = threadIdx.x + 16 * threadIdx.y, lane = linear % 32;
  const int value = 1000 + int(linear);
  int* o = out + linear * kProbes;
  o[0] = __shfl_sync(0xffffffffu, value, int(lane * 7 + 3) % 32);
  o[1] = __shfl_sync(0xffffffffu, value, int(lane) + 5, 8);
  o[2] = __shfl_up_sync(0xffffffffu, value, 3, 8);
  o[3] = __shfl_down_sync(0xffffffffu, value, 5, 16);
  o[4] = __shfl_xor_sync(0xffffffffu, value, 9);
  o[5] = __shfl_xor_sync(0xffffffffu, value, 6, 4);
  o[6] = int(__ballot_sync(0xffffffffu, lane % 3 == 0));
  o[7] = __all_sync(0xffffffffu, value > 0) + 2 * __all_sync(0xffffffffu, lane < 31) +
         4 * __any_sync(0xffffffffu, lane == 31) + 8 * __any_sync(0xffffffffu, lane > 31);
  o[8] = lane < 16 ? __shfl_xor_sync(0x0000ffffu, value, 1) : -1;
  o[9] = int(__shfl_down_sync(0xffffffffu, float(value) * 0.5f, 1) * 2.0f);
  o[10] = int(__shfl_sync(0xffffffffu, double(value) + 0.25, 0) - 0.25);
  // Shared memory handed between lanes of one warp, ordered by __syncwarp alone.
  slots[linear] = value;
  __syncwarp();
  o[11] = slots[linear - lane + (lane + 1) % 32];
  __syncwarp();
  // A lane whose source lies outside the operation's lanes gets no defined value: the
  // emulator gives all-one bits (-1).
  o[12] = lane < 16 ? __shfl_down_sync(0x0000ffffu, value, 8) : -2;
}

TEST_CASE("warp shuffles, ballots and __syncwarp follow CUDA's lane rules in every order",
          "[cuda-emu]") {
  for (const Schedule order : kSchedules) {
    INFO("schedule " << cuda_emu::schedule_name(order));
    cuda_emu::ScheduleScope scope(order);
    DeviceArray<int> out(64 * kProbes);
    SSMTUNE_LAUNCH(warp_probe, dim3(1), dim3(16, 4), 0, nullptr, out.data);
    require_launch_ok();
    const std::vector<int> got = out.download();
    unsigned ballot = 0;
    for (int l = 0; l < 32; l += 3) ballot |= 1u << l;
    for (int linear = 0; linear < 64; ++linear) {
      const int lane = linear % 32, warp0 = linear - lane;
      const auto v = [&](int src_lane) { return 1000 + warp0 + src_lane; };
      const int seg8 = lane / 8 * 8, seg4 = lane / 4 * 4, seg16 = lane / 16 * 16;
      const int want[kProbes] = {
          v((lane * 7 + 3) % 32),
          v(seg8 + (lane + 5) % 8),
          v(lane - seg8 >= 3 ? lane - 3 : lane),
          v(lane - seg16 + 5 < 16 ? lane + 5 : lane),
          v(lane ^ 9),
          v((lane ^ 6) < seg4 + 4 ? lane ^ 6 : lane),  // a later segment gives its own value
          int(ballot),
          1 + 0 + 4 + 0,
          lane < 16 ? v(lane ^ 1) : -1,
          lane < 31 ? v(lane + 1) : v(lane),
          v(0),
          v((lane + 1) % 32),
          lane < 16 ? (lane < 8 ? v(lane + 8) : -1) : -2,
      };
      for (int k = 0; k < kProbes; ++k) {
        INFO("thread " << linear << ", probe " << k);
        CHECK(got[linear * kProbes + k] == want[k]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Indices, shared memory, atomics

// Each thread records blockIdx/threadIdx/blockDim/gridDim before and after switch points.
__global__ void index_probe(unsigned* out) {
  const auto encode = [] {
    return threadIdx.x | threadIdx.y << 4 | threadIdx.z << 8 | blockIdx.x << 12 | blockIdx.y << 16 |
           blockIdx.z << 20 | (blockDim.x * blockDim.y * blockDim.z) << 24;
  };
  const unsigned before = encode();
  __syncthreads();
  const unsigned after_barrier = encode();
  const unsigned linear = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned mate = __shfl_xor_sync(0xffffu, linear, 5);  // 16 threads: one partial warp
  const unsigned after_shuffle = encode();
  const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  unsigned* o = out + (block * 16 + linear) * 4;
  o[0] = before;
  o[1] = after_barrier;
  o[2] = after_shuffle;
  o[3] = mate;
}

TEST_CASE("threadIdx and blockIdx stay the running thread's across barriers and shuffles",
          "[cuda-emu]") {
  for (const Schedule order : kSchedules) {
    INFO("schedule " << cuda_emu::schedule_name(order));
    cuda_emu::ScheduleScope scope(order);
    DeviceArray<unsigned> out(6 * 16 * 4);
    SSMTUNE_LAUNCH(index_probe, dim3(3, 2, 1), dim3(4, 2, 2), 0, nullptr, out.data);
    require_launch_ok();
    const std::vector<unsigned> got = out.download();
    for (unsigned by = 0; by < 2; ++by)
      for (unsigned bx = 0; bx < 3; ++bx)
        for (unsigned z = 0; z < 2; ++z)
          for (unsigned y = 0; y < 2; ++y)
            for (unsigned x = 0; x < 4; ++x) {
              const unsigned linear = x + 4 * (y + 2 * z), block = bx + 3 * by;
              const unsigned want = x | y << 4 | z << 8 | bx << 12 | by << 16 | 16u << 24;
              const unsigned* o = got.data() + (block * 16 + linear) * 4;
              INFO("block " << block << ", thread " << linear);
              CHECK(o[0] == want);
              CHECK(o[1] == want);
              CHECK(o[2] == want);
              CHECK(o[3] == (linear ^ 5));
            }
  }
}

// first_read: what each thread sees in shared memory before anyone of its block wrote it;
// out: a neighbour's value after the block filled it.
__global__ void dynamic_shared_probe(float* first_read, float* out) {
  SSMTUNE_DYNAMIC_SHARED(float, slots);
  const unsigned t = threadIdx.x, n = blockDim.x;
  first_read[blockIdx.x * n + t] = slots[t];
  __syncthreads();
  slots[t] = float(blockIdx.x * 1000 + t);
  __syncthreads();
  out[blockIdx.x * n + t] = slots[(t + 1) % n];
}

__global__ void static_shared_probe(float* first_read) {
  __shared__ float slots[64];
  first_read[blockIdx.x * 64 + threadIdx.x] = slots[threadIdx.x];
  __syncthreads();
  slots[threadIdx.x] = 1.0f;
}

TEST_CASE("shared memory is per block and reads as NaN until written", "[cuda-emu]") {
  const unsigned n = 64, blocks = 3;
  DeviceArray<float> first(n * blocks), out(n * blocks);
  SSMTUNE_LAUNCH(dynamic_shared_probe, dim3(blocks), dim3(n), n * sizeof(float), nullptr,
                 first.data, out.data);
  require_launch_ok();
  const std::vector<float> f = first.download(), o = out.download();
  for (unsigned b = 0; b < blocks; ++b)
    for (unsigned t = 0; t < n; ++t) {
      INFO("block " << b << ", thread " << t);
      CHECK(std::isnan(f[b * n + t]));  // also in blocks after the first: refilled per block
      CHECK(o[b * n + t] == float(b * 1000 + (t + 1) % n));
    }
  SSMTUNE_LAUNCH(static_shared_probe, dim3(blocks), dim3(64), 0, nullptr, first.data);
  require_launch_ok();
  for (const float v : first.download()) CHECK(std::isnan(v));
}

TEST_CASE("dynamic shared memory above 48 KiB needs cudaFuncSetAttribute, as on a GPU",
          "[cuda-emu]") {
  const std::size_t big = (48 << 10) + 256;
  DeviceArray<float> first(64), out(64);
  SSMTUNE_LAUNCH(dynamic_shared_probe, dim3(1), dim3(64), big, nullptr, first.data, out.data);
  require_launch_error(cudaErrorInvalidValue, "dynamic shared memory");
  REQUIRE(cudaFuncSetAttribute(dynamic_shared_probe, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               int(big)) == cudaSuccess);
  SSMTUNE_LAUNCH(dynamic_shared_probe, dim3(1), dim3(64), big, nullptr, first.data, out.data);
  require_launch_ok();
}

__global__ void atomic_probe(int* counter, float* sum, int* max_seen, int* tickets) {
  const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
  tickets[g] = atomicAdd(counter, 1);
  __syncthreads();  // interleave the second half with the other threads' first
  atomicAdd(sum, float(threadIdx.x));
  atomicMax(max_seen, int(g));
  atomicCAS(counter, int(2 * blockDim.x * gridDim.x), -1);  // no thread matches: no change
}

TEST_CASE("atomics return the old value and every update lands", "[cuda-emu]") {
  for (const Schedule order : kSchedules) {
    INFO("schedule " << cuda_emu::schedule_name(order));
    cuda_emu::ScheduleScope scope(order);
    DeviceArray<int> counter(1), max_seen(1), tickets(256);
    DeviceArray<float> sum(1);
    counter.upload({0});
    max_seen.upload({-1});
    sum.upload({0.0f});
    SSMTUNE_LAUNCH(atomic_probe, dim3(2), dim3(128), 0, nullptr, counter.data, sum.data,
                   max_seen.data, tickets.data);
    require_launch_ok();
    CHECK(counter.download()[0] == 256);
    CHECK(sum.download()[0] == 2 * 127 * 128 / 2.0f);  // integers: exact in any order
    CHECK(max_seen.download()[0] == 255);
    std::vector<int> t = tickets.download();
    std::sort(t.begin(), t.end());
    std::vector<int> all(256);
    std::iota(all.begin(), all.end(), 0);
    CHECK(t == all);
  }
}

__global__ void deep_stack(float* out) {
  volatile float local[24 << 10];  // 96 KiB of stack
  for (unsigned i = 0; i < sizeof(local) / sizeof(float); ++i) local[i] = float(i);
  out[threadIdx.x] = local[sizeof(local) / sizeof(float) - 1 - threadIdx.x];
}

TEST_CASE("the fiber stack size is configurable for kernels with large local arrays",
          "[cuda-emu]") {
  cuda_emu::set_fiber_stack_bytes(256 << 10);
  DeviceArray<float> out(4);
  SSMTUNE_LAUNCH(deep_stack, dim3(1), dim3(4), 0, nullptr, out.data);
  cuda_emu::set_fiber_stack_bytes(64 << 10);
  require_launch_ok();
  const std::vector<float> o = out.download();
  for (int t = 0; t < 4; ++t) CHECK(o[t] == float((24 << 10) - 1 - t));
}

// ---------------------------------------------------------------------------------------------
// Runtime shim

__global__ void fill_kernel(float* out, float value) { out[threadIdx.x] = value; }

TEST_CASE("the runtime shim checks memory, copies, launches, streams and events as a GPU would",
          "[cuda-emu]") {
  const std::size_t in_use = cuda_emu::device_bytes_in_use();
  float* d = nullptr;
  REQUIRE(cudaMalloc(&d, 8 * sizeof(float)) == cudaSuccess);
  CHECK(cuda_emu::is_device_pointer(d, 8 * sizeof(float)));
  CHECK_FALSE(cuda_emu::is_device_pointer(d, 9 * sizeof(float)));
  std::vector<float> host(8, 0.0f);
  REQUIRE(cudaMemcpy(host.data(), d, 32, cudaMemcpyDeviceToHost) == cudaSuccess);
  for (const float v : host) CHECK(std::isnan(v));  // fresh device memory is NaN

  SECTION("copies must go where their direction says") {
    CHECK(cudaMemcpy(d, host.data(), 32, cudaMemcpyHostToDevice) == cudaSuccess);
    CHECK(cudaMemcpy(host.data(), d, 32, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    CHECK(std::string(cudaGetErrorString(cudaErrorInvalidValue)).find("cudaMemcpy") !=
          std::string::npos);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue);
    CHECK(cudaGetLastError() == cudaSuccess);
    std::vector<float> too_long(9);
    CHECK(cudaMemcpy(too_long.data(), d, 36, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(d + 4, d, 16, cudaMemcpyDeviceToDevice) == cudaSuccess);
    CHECK(cudaMemset(d, 0, 32) == cudaSuccess);
    CHECK(cudaMemcpy(host.data(), d, 32, cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(host == std::vector<float>(8, 0.0f));
    CHECK(cudaMemset(host.data(), 0, 32) == cudaErrorInvalidValue);
    CHECK(cudaFree(host.data()) == cudaErrorInvalidValue);
    CHECK(cudaFree(d + 1) == cudaErrorInvalidValue);
    cudaGetLastError();
  }
  SECTION("launches check their configuration and pointer arguments") {
    SSMTUNE_LAUNCH(fill_kernel, dim3(1), dim3(2048), 0, nullptr, d, 1.0f);
    require_launch_error(cudaErrorInvalidConfiguration, "block");
    SSMTUNE_LAUNCH(fill_kernel, dim3(0), dim3(8), 0, nullptr, d, 1.0f);
    require_launch_error(cudaErrorInvalidConfiguration, "grid");
    SSMTUNE_LAUNCH(fill_kernel, dim3(1), dim3(8), 0, nullptr, host.data(), 1.0f);
    require_launch_error(cudaErrorInvalidValue, "argument 1 is not a device pointer");
    SSMTUNE_LAUNCH(fill_kernel, dim3(1), dim3(8), 0, nullptr, d, 2);  // int converts to float
    require_launch_ok();
    REQUIRE(cudaMemcpy(host.data(), d, 32, cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(host == std::vector<float>(8, 2.0f));
  }
  SECTION("streams and events run in call order") {
    cudaStream_t stream = nullptr;
    cudaEvent_t start = nullptr, stop = nullptr;
    REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
    REQUIRE(cudaEventCreate(&start) == cudaSuccess);
    REQUIRE(cudaEventCreate(&stop) == cudaSuccess);
    CHECK(cudaEventRecord(start, stream) == cudaSuccess);
    CHECK(cudaMemsetAsync(d, 0, 32, stream) == cudaSuccess);
    SSMTUNE_LAUNCH(fill_kernel, dim3(1), dim3(4), 0, stream, d, 3.0f);
    require_launch_ok();
    CHECK(cudaMemcpyAsync(host.data(), d, 32, cudaMemcpyDeviceToHost, stream) == cudaSuccess);
    CHECK(cudaEventRecord(stop, stream) == cudaSuccess);
    CHECK(cudaStreamWaitEvent(nullptr, stop) == cudaSuccess);
    CHECK(cudaStreamSynchronize(stream) == cudaSuccess);
    float ms = -1;
    CHECK(cudaEventElapsedTime(&ms, start, stop) == cudaSuccess);
    CHECK(ms >= 0);
    CHECK(host == std::vector<float>{3, 3, 3, 3, 0, 0, 0, 0});
    CHECK(cudaEventDestroy(start) == cudaSuccess);
    CHECK(cudaEventDestroy(stop) == cudaSuccess);
    CHECK(cudaStreamDestroy(stream) == cudaSuccess);
    CHECK(cudaStreamDestroy(stream) == cudaErrorInvalidResourceHandle);
    SSMTUNE_LAUNCH(fill_kernel, dim3(1), dim3(4), 0, stream, d, 3.0f);
    require_launch_error(cudaErrorInvalidResourceHandle, "stream");
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
  }
  CHECK(cudaFree(d) == cudaSuccess);
  CHECK(cuda_emu::device_bytes_in_use() == in_use);
}

}  // namespace
