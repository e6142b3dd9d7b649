#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <limits>

namespace ssmtune {

std::string shape_str(const Shape& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + (shape.size() == 1 ? ",)" : ")");
}

std::int64_t shape_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) {
    check(d >= 0, "negative dimension in shape " + shape_str(shape));
    if (d != 0 && n > std::numeric_limits<std::int64_t>::max() / d)
      throw Error("shape " + shape_str(shape) + " has too many elements");
    n *= d;
  }
  return n;
}

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  Tensor t;
  t.shape_ = shape;
  t.numel_ = shape_numel(shape);
  t.dtype_ = dtype;
  const std::size_t bytes = (t.nbytes() + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
  if (!p) throw Error("out of memory allocating a tensor of shape " + shape_str(shape));
  t.owner_ = std::shared_ptr<void>(p, std::free);
  t.data_ = p;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  t.fill_zero();
  return t;
}

Tensor Tensor::view_of(std::shared_ptr<const void> owner, void* data, const Shape& shape,
                       DType dtype, Device device) {
  Tensor t;
  t.owner_ = std::move(owner);
  t.data_ = data;
  t.shape_ = shape;
  t.numel_ = shape_numel(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const {
  check(shape_numel(shape) == numel_,
        "cannot reshape " + shape_str(shape_) + " to " + shape_str(shape));
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::rows(std::int64_t begin, std::int64_t end) const {
  check(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0],
        "row range [" + std::to_string(begin) + ", " + std::to_string(end) + ") outside " +
            shape_str(shape_));
  Tensor t = *this;
  const std::int64_t row_elems = shape_[0] == 0 ? 0 : numel_ / shape_[0];
  t.data_ = static_cast<char*>(data_) + std::size_t(begin * row_elems) * dtype_size(dtype_);
  t.shape_[0] = end - begin;
  t.numel_ = (end - begin) * row_elems;
  return t;
}

namespace {
double load_as_double(const void* p, DType t, std::int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F64: return static_cast<const double*>(p)[i];
    case DType::F16: return f16_to_f32(static_cast<const std::uint16_t*>(p)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const std::uint16_t*>(p)[i]);
    default: throw Error("cannot convert from " + std::string(dtype_name(t)));
  }
}
void store_double(void* p, DType t, std::int64_t i, double v) {
  switch (t) {
    case DType::F32: static_cast<float*>(p)[i] = float(v); break;
    case DType::F64: static_cast<double*>(p)[i] = v; break;
    case DType::F16: static_cast<std::uint16_t*>(p)[i] = f32_to_f16(float(v)); break;
    case DType::BF16: static_cast<std::uint16_t*>(p)[i] = f32_to_bf16(float(v)); break;
    default: throw Error("cannot convert to " + std::string(dtype_name(t)));
  }
}
}  // namespace

Tensor Tensor::to(DType dtype) const {
  check(device_ == Device::CPU, "Tensor::to works on CPU tensors");
  Tensor out = empty(shape_, dtype);
  if (dtype == dtype_) {
    if (nbytes()) std::memcpy(out.data_, data_, nbytes());
    return out;
  }
  for (std::int64_t i = 0; i < numel_; ++i) store_double(out.data_, dtype, i, load_as_double(data_, dtype_, i));
  return out;
}

void Tensor::fill_zero() {
  check(device_ == Device::CPU, "Tensor::fill_zero works on CPU tensors");
  if (nbytes()) std::memset(data_, 0, nbytes());
}

void check_shape(const Tensor& t, const Shape& expected, const std::string& what) {
  if (!t.defined()) throw Error(what + ": missing, expected shape " + shape_str(expected));
  if (t.shape() != expected)
    throw Error(what + ": expected shape " + shape_str(expected) + ", found " + shape_str(t.shape()));
}

}  // namespace ssmtune
