#include "core/host_blocks.h"

#include <cstdlib>
#include <map>
#include <mutex>

namespace ssmtune {

namespace {

// Blocks below this go straight back to malloc: small ones are reused by its own free lists
// without page faults, and caching them would only add lock traffic.
constexpr std::size_t kMinCachedBytes = std::size_t(1) << 20;
// At most this many bytes wait in the cache; a block that would exceed it is freed. Exact-size
// reuse: a step's pattern of sizes repeats every step, so blocks find their next user, and a
// size that never comes back costs at most this much resident memory.
constexpr std::size_t kMaxCachedBytes = std::size_t(256) << 20;

struct Cache {
  std::mutex mutex;
  std::multimap<std::size_t, void*> blocks;  // rounded size -> block
  std::size_t bytes = 0;
};

// Never destroyed: tensors freed during static destruction still find it (and LeakSanitizer
// sees the cached blocks as reachable, which they are).
Cache& cache() {
  static Cache* c = new Cache;
  return *c;
}

void give_back(void* p, std::size_t bytes) {
  if (bytes >= kMinCachedBytes) {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.bytes + bytes <= kMaxCachedBytes) {
      c.blocks.emplace(bytes, p);
      c.bytes += bytes;
      return;
    }
  }
  std::free(p);
}

}  // namespace

std::shared_ptr<void> host_block(std::size_t nbytes) {
  const std::size_t bytes = nbytes == 0 ? 64 : (nbytes + 63) / 64 * 64;
  void* p = nullptr;
  if (bytes >= kMinCachedBytes) {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    const auto it = c.blocks.find(bytes);
    if (it != c.blocks.end()) {
      p = it->second;
      c.blocks.erase(it);
      c.bytes -= bytes;
    }
  }
  if (!p) p = std::aligned_alloc(64, bytes);
  if (!p) return nullptr;
  return std::shared_ptr<void>(p, [bytes](void* q) { give_back(q, bytes); });
}

}  // namespace ssmtune
