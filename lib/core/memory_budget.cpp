#include "core/memory_budget.h"

#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/error.h"

namespace ssmtune {

namespace {

constexpr std::uint64_t kUnknown = std::numeric_limits<std::uint64_t>::max();

// A "Key:   123 kB" line of a /proc file, in bytes, or kUnknown.
std::uint64_t proc_kb_field(const char* file, const std::string& key) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ":", 0) == 0) {
      std::istringstream fields(line.substr(key.size() + 1));
      std::uint64_t kb = 0;
      if (fields >> kb) return kb * 1024;
    }
  return kUnknown;
}

// "11.0 GB", "0.4 GB", "2.3 MB", "96.0 kB": digits enough to tell two sizes apart.
std::string size_text(double bytes) {
  char buf[32];
  if (bytes >= 1e8)
    std::snprintf(buf, sizeof buf, "%.1f GB", bytes / 1e9);
  else if (bytes >= 1e5)
    std::snprintf(buf, sizeof buf, "%.1f MB", bytes / 1e6);
  else
    std::snprintf(buf, sizeof buf, "%.1f kB", bytes / 1e3);
  return buf;
}

}  // namespace

std::uint64_t available_host_bytes() {
  std::uint64_t available = proc_kb_field("/proc/meminfo", "MemAvailable");
  // Under `ulimit -v` (or a cgroup-less container limit set that way) the address space left
  // is the tighter bound.
  const std::uint64_t mapped = proc_kb_field("/proc/self/status", "VmSize");
  for (const int resource : {RLIMIT_AS, RLIMIT_DATA}) {
    rlimit lim{};
    if (::getrlimit(resource, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY) continue;
    const std::uint64_t limit = lim.rlim_cur;
    const std::uint64_t used = mapped == kUnknown ? 0 : mapped;
    available = std::min(available, limit > used ? limit - used : 0);
  }
  return available;
}

void check_trainables_fit(const std::string& setting, std::uint64_t n_params,
                          std::size_t value_bytes, std::uint64_t device_free_bytes) {
  const bool on_device = device_free_bytes != kUnknown;
  // copies: the values, their gradients and AdamW's m and v, all of the same size; with a
  // device, the host holds the first two at most.
  const auto check = [&](std::uint64_t copies, std::uint64_t available, const char* where,
                         const char* available_what) {
    std::uint64_t bytes = 0;
    const bool overflow = __builtin_mul_overflow(n_params, copies * value_bytes, &bytes);
    if (!overflow && (available == kUnknown || bytes <= available)) return;
    throw UsageError(setting + ": " + std::to_string(n_params) + " trainable parameters need " +
                     (overflow ? "more than 2^64 bytes" : size_text(double(bytes))) + where +
                     " with their gradients and AdamW state; " +
                     size_text(double(available == kUnknown ? 0 : available)) + available_what);
  };
  if (on_device) check(4, device_free_bytes, " on the device", " of device memory is free");
  check(on_device ? 2 : 4, available_host_bytes(), "", " of memory is available");
}

}  // namespace ssmtune
