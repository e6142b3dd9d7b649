// That the CPU attention ops' memory is linear in L: no L x L matrix (or L x L of anything) is
// ever allocated. Observed through the global operator new, replaced in this file for the
// whole test binary: while counting is on it records the peak of the bytes allocated and not
// yet freed (every thread; an 16-byte header keeps each block's size and whether it was
// counted). Off, it is malloc and free. The aligned forms (the emulator's) are not replaced.
#include <catch2/catch.hpp>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <random>

#include "backend/backend.h"
#include "gradient_check.h"

namespace {

std::atomic<bool> g_counting{false};
std::atomic<std::int64_t> g_live{0}, g_peak{0};

struct Header {
  std::size_t bytes;
  bool counted;
};
static_assert(sizeof(Header) <= 16, "the header fits the 16 bytes malloc's alignment leaves");

void* counted_new(std::size_t n) {
  char* p = static_cast<char*>(std::malloc(n + 16));
  if (!p) throw std::bad_alloc();
  const bool counted = g_counting.load(std::memory_order_relaxed);
  new (p) Header{n, counted};
  if (counted) {
    const std::int64_t live = g_live.fetch_add(std::int64_t(n)) + std::int64_t(n);
    std::int64_t peak = g_peak.load();
    while (live > peak && !g_peak.compare_exchange_weak(peak, live)) {
    }
  }
  return p + 16;
}

void counted_delete(void* q) noexcept {
  if (!q) return;
  char* p = static_cast<char*>(q) - 16;
  const Header* h = reinterpret_cast<const Header*>(p);
  if (h->counted) g_live.fetch_sub(std::int64_t(h->bytes));
  std::free(p);
}

// Peak live bytes allocated while f runs.
template <class F> std::int64_t peak_bytes(F&& f) {
  g_live = 0, g_peak = 0;
  g_counting = true;
  f();
  g_counting = false;
  return g_peak.load();
}

}  // namespace

// Every unaligned form, not just the two the others default to: a runtime may supply its own
// nothrow or array form (AddressSanitizer does) instead of forwarding to operator new(size_t),
// and a block from it freed by counted_delete would be read 16 bytes before its start.
void* operator new(std::size_t n) { return counted_new(n); }
void* operator new[](std::size_t n) { return counted_new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted_new(n);
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t& tag) noexcept {
  return operator new(n, tag);
}
void operator delete(void* p) noexcept { counted_delete(p); }
void operator delete[](void* p) noexcept { counted_delete(p); }
void operator delete(void* p, std::size_t) noexcept { counted_delete(p); }
void operator delete[](void* p, std::size_t) noexcept { counted_delete(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { counted_delete(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { counted_delete(p); }

using namespace ssmtune;

TEST_CASE("cpu attention's memory does not grow with L x L", "[attention]") {
  auto be = make_cpu_backend();
  std::mt19937_64 rng(35);
  const std::int64_t B = 1, H = 2, KV = 1, hd = 8;
  // Peaks at L and 2L, each thread count the same: the working set is per-thread tiles
  // (64 x 64 scores, 64 x hd accumulator: ~37 KB in double) plus backward's Drow (B H L).
  // An L x L matrix of doubles would be 8 MB at L = 1024 and add 24 MB from L to 2L.
  std::int64_t fwd[2], bwd[2];
  for (int i = 0; i < 2; ++i) {
    const std::int64_t L = 1024 << i;
    Tensor q = testing::random_f64({B, L, H, hd}, rng), k = testing::random_f64({B, L, KV, hd}, rng),
           v = testing::random_f64({B, L, KV, hd}, rng), dout = testing::random_f64({B, L, H, hd}, rng);
    Tensor out = be->empty(q.shape(), DType::F64), lse = be->empty({B, H, L}, DType::F64);
    Tensor dq = be->empty(q.shape(), DType::F64), dk = be->empty(k.shape(), DType::F64),
           dv = be->empty(k.shape(), DType::F64);
    const double scale = 1.0 / std::sqrt(double(hd));
    fwd[i] = peak_bytes([&] { be->attention_forward(q, k, v, Tensor(), scale, out, lse); });
    bwd[i] = peak_bytes([&] {
      be->attention_backward(q, k, v, Tensor(), scale, out, lse, dout, dq, dk, dv);
    });
    INFO("L " << L << ": forward peak " << fwd[i] << " B, backward peak " << bwd[i] << " B");
    CHECK(fwd[i] < L * L * 8);
    CHECK(bwd[i] < L * L * 8);
  }
  // From L = 1024 to 2048 the peak may grow by Drow's 8 B H L = 16 KB; allow 64 KB.
  INFO("forward " << fwd[0] << " -> " << fwd[1] << ", backward " << bwd[0] << " -> " << bwd[1]);
  CHECK(fwd[1] - fwd[0] <= 64 * 1024);
  CHECK(bwd[1] - bwd[0] <= 64 * 1024);
}
