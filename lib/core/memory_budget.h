// Whether what a config asks for fits in memory, checked before it is allocated: a size in a
// config (peft.lora.rank, peft.parallel_adapter.rank, peft.prefix.tokens) is input like any
// other, and one large enough must be an error naming it, not an OOM kill or std::bad_alloc
// half way through start-up (docs/conventions.md "Errors and input").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace ssmtune {

// Bytes the process can still allocate on the host: /proc/meminfo's MemAvailable, and no more
// than RLIMIT_AS / RLIMIT_DATA leave beyond what is already mapped. UINT64_MAX when unknown.
std::uint64_t available_host_bytes();

// Throws UsageError unless `n_params` trainable values of `value_bytes` each fit in
// available_host_bytes() with their gradients and AdamW's two moments (4 x the values):
//   peft.lora.rank = 1048576 on 6 modules: 687865856 trainable parameters need 11.0 GB with their
//   gradients and AdamW state; 4.1 GB of memory is available
// With a device (`device_free_bytes` known: Backend::free_device_bytes), the four live there and
// the host needs room for two (values and gradients may be made on the host first):
//   peft.full: 130000000 trainable parameters need 2.1 GB on the device with their gradients and
//   AdamW state; 1.0 GB of device memory is free
// n_params may be any value; products past 64 bits count as not fitting.
void check_trainables_fit(const std::string& setting, std::uint64_t n_params,
                          std::size_t value_bytes,
                          std::uint64_t device_free_bytes = UINT64_MAX);

}  // namespace ssmtune
