// Tensor: a shape, an element type and shared storage. Row-major, contiguous, no strides:
// every op in ssmtune takes whole tensors, so views are only reshapes and row ranges. Storage
// is shared (copying a Tensor copies a handle, not the data); a tensor may also view memory
// owned by something else (an mmap'ed checkpoint).
//
// Residency: a storage lives on the host or in a device's memory (core/device_memory.h), and
// moves as a whole, so every handle and view of it follows. A device backend moves the
// storages its ops touch to the device (device_raw); host code that reads a tensor
// (data(), raw()) brings its storage back. So the model and the PEFT methods are written once,
// and what a training step moves shows in tensor_transfers().
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/device_memory.h"
#include "core/dtype.h"
#include "core/error.h"

namespace ssmtune {

using Shape = std::vector<std::int64_t>;

std::string shape_str(const Shape& shape);  // "(2, 3, 4)"
// Product of the dims; throws Error if a dim is negative or the product overflows int64.
std::int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;  // undefined: no storage (used for "absent", e.g. no bias)

  // Fresh CPU storage, 64-byte aligned. empty() leaves it uninitialised.
  static Tensor empty(const Shape& shape, DType dtype);
  static Tensor zeros(const Shape& shape, DType dtype);
  // Views host memory `data` without copying; `owner` keeps the memory alive.
  static Tensor view_of(std::shared_ptr<const void> owner, void* data, const Shape& shape,
                        DType dtype);
  // Fresh storage in `memory`'s device, uninitialised.
  static Tensor empty_on(const std::shared_ptr<DeviceMemory>& memory, const Shape& shape,
                         DType dtype);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return int(shape_.size()); }
  std::int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  std::int64_t numel() const { return numel_; }
  std::size_t nbytes() const { return std::size_t(numel_) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const;  // where the storage lives now

  // Host pointers: a device-resident storage is first brought to the host.
  void* raw() const;
  template <class T> T* data() const {
    check(dtype_of<T>() == dtype_, "tensor holds " + std::string(dtype_name(dtype_)) +
                                       ", read as " + std::string(dtype_name(dtype_of<T>())));
    return static_cast<T*>(raw());
  }
  // For device backends: the storage moved to `memory`'s device (a no-op when it is there),
  // then the device pointer. Host pointers taken before are invalid after a move.
  void* device_raw(const std::shared_ptr<DeviceMemory>& memory) const;

  // Same storage, another shape with the same element count.
  Tensor reshape(const Shape& shape) const;
  // Rows [begin, end) of the first dimension, sharing storage.
  Tensor rows(std::int64_t begin, std::int64_t end) const;
  // A deep copy on the host (a device tensor stays where it is), converted to `dtype` (F16/BF16/F32/F64 convert among themselves).
  Tensor to(DType dtype) const;
  Tensor clone() const { return to(dtype_); }
  // For code that only reads: this tensor when it is on the host, else a host copy (the
  // storage stays on the device, where training goes on with it).
  Tensor host_readable() const { return device() == Device::CPU ? *this : clone(); }
  void fill_zero();  // where the storage lives (no move)

  struct Storage;  // tensor.cpp

 private:
  std::shared_ptr<Storage> storage_;
  std::size_t offset_ = 0;  // bytes from the storage's start (row views)
  Shape shape_;
  std::int64_t numel_ = 0;
  DType dtype_ = DType::F32;
};

// Throws Error naming `what` unless t has exactly `expected` shape.
void check_shape(const Tensor& t, const Shape& expected, const std::string& what);

}  // namespace ssmtune
