#include "io/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "core/error.h"

namespace ssmtune {

RunLock::RunLock(const std::filesystem::path& dir) {
  const std::filesystem::path file = dir / kRunLockFile;
  fd_ = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd_ < 0)
    throw Error(file.string() + ": cannot open the run lock: " + std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char buf[32] = {};
    const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    ::close(fd_);
    fd_ = -1;
    if (err != EWOULDBLOCK)
      throw Error(file.string() + ": cannot lock it: " + std::strerror(err));
    std::string pid = n > 0 ? std::string(buf, std::size_t(n)) : "";
    pid.erase(pid.find_last_not_of(" \n") + 1);
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) pid = "unknown";
    throw Error(dir.string() + ": another ssmtune run (pid " + pid +
                ") is using this output directory; wait for it to end or choose another "
                "output_dir");
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) < 0) {
    // The lock holds regardless; only a refused run's message would lack the pid.
  }
}

RunLock::~RunLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

}  // namespace ssmtune
