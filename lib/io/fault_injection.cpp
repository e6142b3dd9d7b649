#include "io/fault_injection.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <string>

namespace ssmtune {

namespace {

struct KillPointSettings {
  std::int64_t kill_at = 0;   // 0: never
  const char* trace = nullptr;
};

const KillPointSettings& settings() {
  static const KillPointSettings s = [] {
    KillPointSettings k;
    if (const char* v = std::getenv("SSMTUNE_FAULT_KILL_AT_POINT")) k.kill_at = std::atoll(v);
    k.trace = std::getenv("SSMTUNE_FAULT_TRACE");
    return k;
  }();
  return s;
}

std::atomic<std::int64_t> g_points_passed{0};

}  // namespace

void fault_point(const char* name, std::int64_t step) {
  const char* value = std::getenv(name);
  if (value && std::to_string(step) == value) std::raise(SIGKILL);
}

void kill_point(const char* where) {
  const KillPointSettings& s = settings();
  if (s.kill_at <= 0 && !s.trace) return;
  const std::int64_t n = ++g_points_passed;
  if (s.trace) {
    // Written with one write(2) on an O_APPEND descriptor: the line is there even if the
    // next point kills the process.
    const std::string line = std::to_string(n) + " " + where + "\n";
    const int fd = ::open(s.trace, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) {
      [[maybe_unused]] const ssize_t w = ::write(fd, line.data(), line.size());
      ::close(fd);
    }
  }
  if (n == s.kill_at) std::raise(SIGKILL);
}

}  // namespace ssmtune
