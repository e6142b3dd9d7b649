#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

#include "core/error.h"
#include "io/fault_injection.h"

namespace ssmtune {

namespace {
// Distinguishes temporaries of several writers in one process (threads, nested writes).
std::atomic<unsigned> g_temp_counter{0};

// Makes the rename itself durable. Best effort: some filesystems refuse fsync on directories,
// and the data is already safe in the renamed file.
void fsync_directory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}
}  // namespace

AtomicFile::AtomicFile(std::filesystem::path path) : path_(std::move(path)) {
  if (!path_.has_filename()) throw Error(path_.string() + ": not a file name");
  temp_path_ = path_;
  temp_path_ += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(g_temp_counter++);
  // O_EXCL: never write through a pre-existing file or symlink of the same name.
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd_ < 0)
    throw Error(path_.string() + ": cannot create temporary file " + temp_path_.string() + ": " +
                std::strerror(errno));
}

AtomicFile::~AtomicFile() { discard(); }

void AtomicFile::discard() noexcept {
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
  ::unlink(temp_path_.c_str());
}

void AtomicFile::fail(const std::string& what, int err) {
  discard();
  throw Error(path_.string() + ": " + what + ": " + std::strerror(err));
}

void AtomicFile::write(const void* data, std::size_t n_bytes) {
  if (fd_ < 0) throw Error(path_.string() + ": write after commit");
  const char* p = static_cast<const char*>(data);
  while (n_bytes > 0) {
    const ssize_t n = ::write(fd_, p, n_bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("write failed", errno);
    p += n;
    n_bytes -= std::size_t(n);
  }
  kill_point("atomic file: part written");
}

void AtomicFile::commit() {
  if (fd_ < 0) throw Error(path_.string() + ": commit twice");
  if (::fsync(fd_) != 0) fail("fsync failed", errno);
  kill_point("atomic file: synced, not renamed");
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(temp_path_.c_str());
    throw Error(path_.string() + ": close failed: " + std::strerror(err));
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp_path_.c_str());
    throw Error(path_.string() + ": cannot rename " + temp_path_.string() +
                " into place: " + std::strerror(err));
  }
  kill_point("atomic file: renamed");
  fsync_directory(path_.parent_path());
}

void write_file_atomic(const std::filesystem::path& path, std::string_view contents) {
  AtomicFile out(path);
  out.write(contents);
  out.commit();
}

}  // namespace ssmtune
