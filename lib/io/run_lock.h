// One run per output directory at a time: an exclusive flock on <dir>/.ssmtune.lock, held until
// the process exits (the kernel drops it even on SIGKILL, so a killed run never leaves a stale
// lock). The file holds the holder's pid, which a refused run names.
#pragma once

#include <filesystem>

namespace ssmtune {

class RunLock {
 public:
  // `dir` must exist. Throws Error naming the directory and the holder's pid when another
  // process holds the lock:
  //   runs/x: another ssmtune run (pid 1234) is using this output directory
  explicit RunLock(const std::filesystem::path& dir);
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

 private:
  int fd_ = -1;
};

inline constexpr const char* kRunLockFile = ".ssmtune.lock";

}  // namespace ssmtune
