#include "backend/cuda/cuda_memory.h"

#include <cstring>
#include <string>

namespace ssmtune {
inline namespace SSMTUNE_KERNEL_ABI {

namespace {
constexpr std::size_t kMiB = std::size_t(1) << 20;
std::string mib(std::size_t bytes) { return std::to_string((bytes + kMiB - 1) / kMiB) + " MiB"; }
}  // namespace

CudaMemory::CudaMemory() { cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate"); }

CudaMemory::~CudaMemory() {
  release_cache();  // waits for the stream, so no staging copy is still reading its slot
  for (StagingSlot& s : staging_) {
    if (s.copied) cudaEventDestroy(s.copied);
    if (s.pinned) cudaFreeHost(s.pinned);
  }
  cudaStreamDestroy(stream_);
}

// 512-byte steps up to 1 MiB, then whole MiB: few distinct sizes, at most ~6% slack above.
std::size_t CudaMemory::rounded(std::size_t bytes) {
  if (bytes == 0) return 512;
  if (bytes <= kMiB) return (bytes + 511) / 512 * 512;
  return (bytes + kMiB - 1) / kMiB * kMiB;
}

void* CudaMemory::allocate(std::size_t bytes) {
  const std::size_t size = rounded(bytes);
  auto it = free_.find(size);
  void* p = nullptr;
  if (it != free_.end()) {
    p = it->second;
    free_.erase(it);
    cached_ -= size;
  } else {
    cudaError_t err = cudaMalloc(&p, size);
    if (err == cudaErrorMemoryAllocation) {  // the cache may hold what is missing
      cudaGetLastError();
      release_cache();
      err = cudaMalloc(&p, size);
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      throw Error("cuda backend: out of GPU memory allocating " + mib(size) + " (" + mib(in_use_) +
                  " in use by ssmtune): " + cudaGetErrorString(err));
    }
  }
  in_use_ += size;
  if (in_use_ > peak_) peak_ = in_use_;
  return p;
}

void CudaMemory::release(void* p, std::size_t bytes) noexcept {
  if (!p) return;
  const std::size_t size = rounded(bytes);
  in_use_ -= size;
  cached_ += size;
  free_.emplace(size, p);
}

void CudaMemory::release_cache() noexcept {
  // Queued kernels may still read cached blocks: wait for them before giving memory back.
  cudaStreamSynchronize(stream_);
  for (auto& [size, p] : free_) cudaFree(p);
  free_.clear();
  cached_ = 0;
}

void CudaMemory::copy_to_device(void* device_dst, const void* host_src, std::size_t bytes) {
  if (!bytes) return;
  cuda_check(cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice, stream_),
             "copy of " + std::to_string(bytes) + " bytes to the GPU");
  cuda_check(cudaStreamSynchronize(stream_), "copy to the GPU");
}

void CudaMemory::upload(void* device_dst, const void* host_src, std::size_t bytes) {
  if (!bytes) return;
  if (bytes > kStagingBytes) return copy_to_device(device_dst, host_src, bytes);
  StagingSlot& slot = staging_[next_slot_++ % kStagingSlots];
  if (!slot.pinned) {
    cuda_check(cudaMallocHost(&slot.pinned, kStagingBytes), "pinned staging buffer");
    cuda_check(cudaEventCreate(&slot.copied), "staging event");
  } else {
    cuda_check(cudaEventSynchronize(slot.copied), "staging slot reuse");  // its last copy is done
  }
  std::memcpy(slot.pinned, host_src, bytes);
  cuda_check(cudaMemcpyAsync(device_dst, slot.pinned, bytes, cudaMemcpyHostToDevice, stream_),
             "copy of " + std::to_string(bytes) + " bytes to the GPU");
  cuda_check(cudaEventRecord(slot.copied, stream_), "staging event");
}

void CudaMemory::copy_to_host(void* host_dst, const void* device_src, std::size_t bytes) {
  if (!bytes) return;
  cuda_check(cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, stream_),
             "copy of " + std::to_string(bytes) + " bytes from the GPU");
  cuda_check(cudaStreamSynchronize(stream_), "copy from the GPU");
}

void CudaMemory::zero(void* device_p, std::size_t bytes) {
  if (bytes) cuda_check(cudaMemsetAsync(device_p, 0, bytes, stream_), "memset");
}

}  // namespace SSMTUNE_KERNEL_ABI
}  // namespace ssmtune
