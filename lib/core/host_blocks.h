// Host memory for tensors: 64-byte aligned blocks, the large ones kept for reuse.
//
// A training step allocates and frees the same large activation and gradient buffers at every
// step. Handed back to the C library, they go back to the kernel (glibc maps every block over
// 32 MiB on its own and trims its heap's top), so the next step's first touch of each page is
// a page fault and a zeroing: 46.5k faults per step at the d256 LoRA bench shape
// (docs/benchmarks.md). Freed blocks of at least 1 MiB wait here instead, by size, for the next
// request of the same size, up to a cap on the bytes kept.
#pragma once

#include <cstddef>
#include <memory>

namespace ssmtune {

// A block of at least `bytes` bytes (rounded up to 64), 64-byte aligned; nullptr when the
// system has no memory left. The deleter returns it to the cache (or frees it).
std::shared_ptr<void> host_block(std::size_t bytes);

}  // namespace ssmtune
