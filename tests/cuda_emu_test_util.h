// Helpers of the emulated-CUDA tests (compiled with SSMTUNE_CUDA_EMU): device buffers (floats,
// and any T), random float inputs, and the thread orders every kernel test runs under.
#pragma once

#if defined(SSMTUNE_CUDA_EMU)
#include <cuda_emu.h>
#else
// The same tests built for a real GPU (tests/gpu): the hardware picks the thread order, so the
// emulator's schedules collapse to one run.
#include <cuda_runtime.h>

#include <cstdint>
namespace cuda_emu {
enum class Schedule { kForward, kReverse, kShuffled };
inline const char* schedule_name(Schedule) { return "the GPU's own"; }
struct ScheduleScope {
  explicit ScheduleScope(Schedule, std::uint64_t = 1) {}
};
}  // namespace cuda_emu
#endif

#include <array>
#include <catch2/catch.hpp>
#include <cstdint>
#include <random>
#include <vector>

#include "core/tensor.h"
#include "gradient_check.h"

namespace ssmtune::testing {

// Forward and reverse between them expose most missing barriers (a reader running before or
// after its writer); the shuffle (fixed seed) mixes the two inside one block.
#if defined(SSMTUNE_CUDA_EMU)
inline constexpr std::array<cuda_emu::Schedule, 3> kSchedules = {
    cuda_emu::Schedule::kForward, cuda_emu::Schedule::kReverse, cuda_emu::Schedule::kShuffled};
// The emulator runs the twins' float expressions exactly as g++ does (no FMA contraction at
// the x86-64 baseline), so elementwise kernels match their twins to the bit.
inline constexpr double kTwinExactRtol = 0;
#else
inline constexpr std::array<cuda_emu::Schedule, 1> kSchedules = {cuda_emu::Schedule::kForward};
// nvcc contracts a * b + c into one FMA (one rounding instead of two): a few ulps (6e-8 each).
inline constexpr double kTwinExactRtol = 1e-6;
#endif

inline Tensor random_f32(const Shape& shape, std::mt19937_64& rng, double lo, double hi) {
  return random_f64(shape, rng, lo, hi).to(DType::F32);
}

// Device memory for n floats, freed on scope exit. New device memory reads as NaN (the
// emulator fills it with 0xFF bytes), so an element a kernel never writes fails a comparison.
class DeviceFloats {
 public:
  explicit DeviceFloats(std::int64_t n) : n_(n) {
    REQUIRE(cudaMalloc(&data_, bytes()) == cudaSuccess);
  }
  explicit DeviceFloats(const Tensor& host) : DeviceFloats(host.numel()) {
    REQUIRE(cudaMemcpy(data_, host.data<float>(), bytes(), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  ~DeviceFloats() { cudaFree(data_); }
  DeviceFloats(const DeviceFloats&) = delete;
  DeviceFloats& operator=(const DeviceFloats&) = delete;

  float* get() const { return data_; }
  Tensor to_host(const Shape& shape) const {
    Tensor t = Tensor::empty(shape, DType::F32);
    REQUIRE(t.numel() == n_);
    REQUIRE(cudaMemcpy(t.data<float>(), data_, bytes(), cudaMemcpyDeviceToHost) == cudaSuccess);
    return t;
  }

 private:
  std::size_t bytes() const { return std::size_t(n_) * sizeof(float); }
  std::int64_t n_;
  float* data_ = nullptr;
};

// Device memory for n values of T (ids and targets, double results, workspaces), freed on scope
// exit. New memory reads as 0xFF bytes, as DeviceFloats': NaN doubles, -1 integers.
template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(std::int64_t n) : n_(n) {
    REQUIRE(cudaMalloc(&data_, bytes()) == cudaSuccess);
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(std::int64_t(host.size())) {
    REQUIRE(cudaMemcpy(data_, host.data(), bytes(), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  ~DeviceArray() { cudaFree(data_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  T* get() const { return data_; }
  std::vector<T> to_host() const {
    std::vector<T> host(static_cast<std::size_t>(n_));
    REQUIRE(cudaMemcpy(host.data(), data_, bytes(), cudaMemcpyDeviceToHost) == cudaSuccess);
    return host;
  }

 private:
  std::size_t bytes() const { return std::size_t(n_) * sizeof(T); }
  std::int64_t n_;
  T* data_ = nullptr;
};

// Fails the test with the emulator's detail if the last launch failed.
inline void require_launch_ok() {
#if !defined(SSMTUNE_CUDA_EMU)
  cudaDeviceSynchronize();  // a GPU reports a fault in a kernel only once it has run
#endif
  const cudaError_t e = cudaGetLastError();
  INFO(cudaGetErrorString(e));
  REQUIRE(e == cudaSuccess);
}

}  // namespace ssmtune::testing
