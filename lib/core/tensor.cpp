#include "core/tensor.h"

#include "core/host_blocks.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>

namespace ssmtune {

namespace {
std::atomic<std::int64_t> g_to_device{0}, g_to_host{0}, g_bytes_to_device{0}, g_bytes_to_host{0};

std::shared_ptr<void> host_alloc(std::size_t nbytes, const Shape& shape) {
  std::shared_ptr<void> p = host_block(nbytes);
  if (!p) throw Error("out of memory allocating a tensor of shape " + shape_str(shape));
  return p;
}
}  // namespace

TransferCounts tensor_transfers() {
  return {g_to_device.load(), g_to_host.load(), g_bytes_to_device.load(), g_bytes_to_host.load()};
}

// The bytes of one or more tensor handles, on the host (host_owner keeps them alive) or on a
// device (memory owns them). Moves take the mutex: host code may read a tensor from several
// threads at once, and the first read moves it.
struct Tensor::Storage {
  std::shared_ptr<const void> host_owner;
  void* base = nullptr;
  std::size_t bytes = 0;
  std::shared_ptr<DeviceMemory> memory;  // set while the bytes are on a device
  std::atomic<bool> on_device{false};
  std::mutex move_mutex;

  ~Storage() {
    if (memory) memory->release(base, bytes);
  }

  void* host_base() {
    if (!on_device.load(std::memory_order_acquire)) return base;
    std::lock_guard<std::mutex> lock(move_mutex);
    if (!on_device.load(std::memory_order_relaxed)) return base;
    std::shared_ptr<void> host = host_alloc(bytes, {std::int64_t(bytes)});
    memory->copy_to_host(host.get(), base, bytes);
    memory->release(base, bytes);
    memory.reset();
    base = host.get();
    host_owner = std::move(host);
    g_to_host += 1;
    g_bytes_to_host += std::int64_t(bytes);
    on_device.store(false, std::memory_order_release);
    return base;
  }

  void* device_base(const std::shared_ptr<DeviceMemory>& to) {
    std::lock_guard<std::mutex> lock(move_mutex);
    if (memory == to) return base;
    check(!memory, "tensor storage is on another device");
    void* dev = to->allocate(bytes);
    to->copy_to_device(dev, base, bytes);
    memory = to;
    base = dev;
    host_owner.reset();
    g_to_device += 1;
    g_bytes_to_device += std::int64_t(bytes);
    on_device.store(true, std::memory_order_release);
    return base;
  }
};

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
  t.storage_ = std::make_shared<Storage>();
  std::shared_ptr<void> p = host_alloc(t.nbytes(), shape);
  t.storage_->base = p.get();
  t.storage_->bytes = t.nbytes();
  t.storage_->host_owner = std::move(p);
  return t;
}

Tensor Tensor::empty_on(const std::shared_ptr<DeviceMemory>& memory, const Shape& shape,
                        DType dtype) {
  Tensor t;
  t.shape_ = shape;
  t.numel_ = shape_numel(shape);
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>();
  t.storage_->bytes = t.nbytes();
  t.storage_->base = memory->allocate(t.nbytes());
  t.storage_->memory = memory;
  t.storage_->on_device.store(true);
  return t;
}

Device Tensor::device() const {
  if (!storage_ || !storage_->on_device.load(std::memory_order_acquire)) return Device::CPU;
  std::lock_guard<std::mutex> lock(storage_->move_mutex);
  return storage_->memory ? storage_->memory->device() : Device::CPU;
}

void* Tensor::raw() const {
  return storage_ ? static_cast<char*>(storage_->host_base()) + offset_ : nullptr;
}

void* Tensor::device_raw(const std::shared_ptr<DeviceMemory>& memory) const {
  check(storage_ != nullptr, "device_raw of an undefined tensor");
  return static_cast<char*>(storage_->device_base(memory)) + offset_;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  t.fill_zero();
  return t;
}

Tensor Tensor::view_of(std::shared_ptr<const void> owner, void* data, const Shape& shape,
                       DType dtype) {
  Tensor t;
  t.shape_ = shape;
  t.numel_ = shape_numel(shape);
  t.dtype_ = dtype;
  if (!owner && !data) return t;
  t.storage_ = std::make_shared<Storage>();
  t.storage_->host_owner = std::move(owner);
  t.storage_->base = data;
  t.storage_->bytes = t.nbytes();
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
  t.offset_ = offset_ + std::size_t(begin * row_elems) * dtype_size(dtype_);
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
  if (storage_ && storage_->on_device.load(std::memory_order_acquire)) {
    // A copy from the device; the storage stays there.
    Tensor host = empty(shape_, dtype_);
    {
      std::lock_guard<std::mutex> lock(storage_->move_mutex);
      if (storage_->memory)
        storage_->memory->copy_to_host(host.raw(), static_cast<char*>(storage_->base) + offset_,
                                       nbytes());
      else
        std::memcpy(host.raw(), static_cast<char*>(storage_->base) + offset_, nbytes());
    }
    return dtype == dtype_ ? host : host.to(dtype);
  }
  Tensor out = empty(shape_, dtype);
  const void* src = raw();
  void* dst = out.raw();
  if (dtype == dtype_) {
    if (nbytes()) std::memcpy(dst, src, nbytes());
    return out;
  }
  for (std::int64_t i = 0; i < numel_; ++i) store_double(dst, dtype, i, load_as_double(src, dtype_, i));
  return out;
}

void Tensor::fill_zero() {
  if (!nbytes()) return;
  Storage& s = *storage_;
  if (s.on_device.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(s.move_mutex);
    if (s.memory) {
      s.memory->zero(static_cast<char*>(s.base) + offset_, nbytes());
      return;
    }
  }
  std::memset(raw(), 0, nbytes());
}

void check_shape(const Tensor& t, const Shape& expected, const std::string& what) {
  if (!t.defined()) throw Error(what + ": missing, expected shape " + shape_str(expected));
  if (t.shape() != expected)
    throw Error(what + ": expected shape " + shape_str(expected) + ", found " + shape_str(t.shape()));
}

}  // namespace ssmtune
