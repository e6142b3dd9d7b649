// Tensor: a shape, an element type, a device and shared storage. Row-major, contiguous,
// no strides: every op in ssmtune takes whole tensors, so views are only reshapes and
// row ranges. Storage is shared (copying a Tensor copies a handle, not the data); a
// tensor may also view memory owned by something else (an mmap'ed checkpoint).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace ssmtune {

using Shape = std::vector<std::int64_t>;

enum class Device : std::uint8_t { CPU, CUDA };

std::string shape_str(const Shape& shape);  // "(2, 3, 4)"
// Product of the dims; throws Error if a dim is negative or the product overflows int64.
std::int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;  // undefined: no storage (used for "absent", e.g. no bias)

  // Fresh CPU storage, 64-byte aligned. empty() leaves it uninitialised.
  static Tensor empty(const Shape& shape, DType dtype);
  static Tensor zeros(const Shape& shape, DType dtype);
  // Views `data` without copying; `owner` keeps the memory alive.
  static Tensor view_of(std::shared_ptr<const void> owner, void* data, const Shape& shape,
                        DType dtype, Device device = Device::CPU);

  bool defined() const { return owner_ != nullptr || data_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return int(shape_.size()); }
  std::int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  std::int64_t numel() const { return numel_; }
  std::size_t nbytes() const { return std::size_t(numel_) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }

  void* raw() const { return data_; }
  template <class T> T* data() const {
    check(dtype_of<T>() == dtype_, "tensor holds " + std::string(dtype_name(dtype_)) +
                                       ", read as " + std::string(dtype_name(dtype_of<T>())));
    return static_cast<T*>(data_);
  }

  // Same storage, another shape with the same element count.
  Tensor reshape(const Shape& shape) const;
  // Rows [begin, end) of the first dimension, sharing storage.
  Tensor rows(std::int64_t begin, std::int64_t end) const;
  // A deep copy (CPU), converted to `dtype` (F16/BF16/F32/F64 convert among themselves).
  Tensor to(DType dtype) const;
  Tensor clone() const { return to(dtype_); }
  void fill_zero();

 private:
  std::shared_ptr<const void> owner_;
  void* data_ = nullptr;
  Shape shape_;
  std::int64_t numel_ = 0;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
};

// Throws Error naming `what` unless t has exactly `expected` shape.
void check_shape(const Tensor& t, const Shape& expected, const std::string& what);

}  // namespace ssmtune
