// Memory of an accelerator, as the core sees it: a device backend (lib/backend/cuda) implements
// this, and a Tensor whose storage lives there reaches the device only through it. The core
// never includes a CUDA header.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ssmtune {

enum class Device : std::uint8_t { CPU, CUDA };

class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  virtual Device device() const = 0;
  // Throws Error when the device has no room for `bytes`.
  virtual void* allocate(std::size_t bytes) = 0;
  virtual void release(void* p, std::size_t bytes) noexcept = 0;
  // Synchronous copies: on return the bytes are at the destination (and `src` may be freed).
  virtual void copy_to_device(void* device_dst, const void* host_src, std::size_t bytes) = 0;
  virtual void copy_to_host(void* host_dst, const void* device_src, std::size_t bytes) = 0;
  virtual void zero(void* device_p, std::size_t bytes) = 0;
};

// Tensor storages moved between the host and a device since the process started (all
// devices together). The training loop reads them to check that its steady state moves
// nothing but the batch (docs/cuda.md "Residency").
struct TransferCounts {
  std::int64_t to_device = 0, to_host = 0;              // storages moved
  std::int64_t bytes_to_device = 0, bytes_to_host = 0;  // their sizes
};
TransferCounts tensor_transfers();

}  // namespace ssmtune
