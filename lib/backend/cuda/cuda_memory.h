// Device memory of the CUDA backend: a caching pool over cudaMalloc (freed blocks are kept by
// size and handed out again, so a training step allocates nothing from the driver after the
// first), and the one stream all of the backend's work is queued on. It owns the stream because
// tensors keep their memory alive, possibly longer than the backend. Reuse is safe without
// events because everything runs on that stream: a block freed after queueing a kernel is
// reused only by work queued after it.
#pragma once

#include <array>
#include <cstddef>
#include <map>
#include <memory>

#include "backend/cuda/cuda_api.h"
#include "core/device_memory.h"

namespace ssmtune {
inline namespace SSMTUNE_KERNEL_ABI {

class CudaMemory final : public DeviceMemory {
 public:
  CudaMemory();  // creates the stream on the current device
  ~CudaMemory() override;
  CudaMemory(const CudaMemory&) = delete;
  CudaMemory& operator=(const CudaMemory&) = delete;

  Device device() const override { return Device::CUDA; }
  void* allocate(std::size_t bytes) override;
  void release(void* p, std::size_t bytes) noexcept override;
  void copy_to_device(void* device_dst, const void* host_src, std::size_t bytes) override;
  void copy_to_host(void* host_dst, const void* device_src, std::size_t bytes) override;
  void zero(void* device_p, std::size_t bytes) override;
  // A host-to-device copy the host does not wait for: host_src goes into a pinned staging slot
  // and the copy is queued on the stream behind the work before it, so the GPU is not drained
  // per upload (a batch's ids and labels, every op that reads them). host_src may be reused as
  // soon as this returns. Copies of more than kStagingBytes take copy_to_device's path.
  void upload(void* device_dst, const void* host_src, std::size_t bytes);
  static constexpr std::size_t kStagingBytes = std::size_t(1) << 20;
  static constexpr std::size_t kStagingSlots = 8;

  cudaStream_t stream() const { return stream_; }
  std::size_t bytes_in_use() const { return in_use_; }
  std::size_t bytes_cached() const { return cached_; }
  std::size_t peak_bytes_in_use() const { return peak_; }

 private:
  static std::size_t rounded(std::size_t bytes);
  void release_cache() noexcept;

  cudaStream_t stream_ = nullptr;
  // Pinned host buffers of kStagingBytes used in turn; `copied` is recorded after each one's
  // copy, and waited for before the slot is filled again (kStagingSlots uploads later).
  struct StagingSlot {
    void* pinned = nullptr;
    cudaEvent_t copied = nullptr;
  };
  std::array<StagingSlot, kStagingSlots> staging_{};
  std::size_t next_slot_ = 0;
  std::multimap<std::size_t, void*> free_;  // rounded size -> cached block
  std::size_t in_use_ = 0, cached_ = 0, peak_ = 0;
};

// A workspace of `bytes` from the pool for one op, returned on scope exit.
class DeviceScratch {
 public:
  DeviceScratch(CudaMemory& memory, std::size_t bytes)
      : memory_(memory), bytes_(bytes), p_(memory.allocate(bytes)) {}
  ~DeviceScratch() { memory_.release(p_, bytes_); }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  CudaMemory& memory_;
  std::size_t bytes_;
  void* p_;
};

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune
