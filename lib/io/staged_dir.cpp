#include "io/staged_dir.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE (glibc 2.28)
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <regex>
#include <system_error>

#include "core/error.h"
#include "io/fault_injection.h"

namespace fs = std::filesystem;

namespace ssmtune {

namespace {
std::atomic<int> counter{0};

void fsync_path(const fs::path& p) {  // best effort, as for AtomicFile's directory fsync
  const int fd = ::open(p.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// fsync every file below `dir`, so the rename publishes data that is on disk.
void fsync_tree(const fs::path& dir) {
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec)) {
    const int fd = ::open(e.path().c_str(), O_RDONLY);
    if (fd < 0) continue;
    ::fsync(fd);
    ::close(fd);
  }
  fsync_path(dir);
}
}  // namespace

StagedDir::StagedDir(fs::path final_dir, bool replace)
    : final_(std::move(final_dir)), replace_(replace) {
  if (final_.filename().empty()) final_ = final_.parent_path();  // "out/" -> "out"
  std::error_code ec;
  if (!replace_ && fs::exists(final_, ec))
    throw Error(final_.string() + ": already exists; choose another directory or remove it");
  const fs::path parent = final_.has_parent_path() ? final_.parent_path() : fs::path(".");
  if (!fs::is_directory(parent, ec))
    throw Error(final_.string() + ": parent directory " + parent.string() + " does not exist");
  temp_ = final_;
  temp_ += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  if (!fs::create_directory(temp_, ec) || ec)
    throw Error(final_.string() + ": cannot create " + temp_.string() + ": " +
                (ec ? ec.message() : "it already exists"));
  kill_point("staged dir: created");
}

StagedDir::~StagedDir() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(temp_, ec);
}

void StagedDir::commit() {
  check(!committed_, "StagedDir committed twice");
  fsync_tree(temp_);
  kill_point("staged dir: synced");
  std::error_code ec;
  if (replace_ && fs::exists(final_, ec)) {
    // One atomic swap: final_ holds the old version or the new one at every instant, and the
    // old one ends up under the staging name (removed below, or as a stale leftover).
    if (::renameat2(AT_FDCWD, temp_.c_str(), AT_FDCWD, final_.c_str(), RENAME_EXCHANGE) == 0) {
      committed_ = true;
      kill_point("staged dir: swapped with the old version");
      fsync_path(final_.has_parent_path() ? final_.parent_path() : fs::path("."));
      fs::remove_all(temp_, ec);
      return;
    }
    if (errno != EINVAL && errno != ENOSYS)
      throw Error(final_.string() + ": cannot replace it with " + temp_.string() + ": " +
                  std::strerror(errno));
    replace_by_moving_aside();
    return;
  }
  if (::rename(temp_.c_str(), final_.c_str()) != 0)
    throw Error(final_.string() + ": cannot rename " + temp_.string() +
                " into place: " + std::strerror(errno));
  committed_ = true;
  kill_point("staged dir: renamed into place");
  fsync_path(final_.has_parent_path() ? final_.parent_path() : fs::path("."));
}

void StagedDir::replace_by_moving_aside() {
  // Filesystems without RENAME_EXCHANGE: a kill between the two renames leaves no final_, only
  // the old version under a staging name (which the next run removes).
  fs::path aside = final_;
  aside += ".old.tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  if (::rename(final_.c_str(), aside.c_str()) != 0)
    throw Error(final_.string() + ": cannot move the old version aside: " + std::strerror(errno));
  kill_point("staged dir: old version moved aside");
  if (::rename(temp_.c_str(), final_.c_str()) != 0) {
    const int err = errno;
    ::rename(aside.c_str(), final_.c_str());
    throw Error(final_.string() + ": cannot rename " + temp_.string() +
                " into place: " + std::strerror(err));
  }
  committed_ = true;
  fsync_path(final_.has_parent_path() ? final_.parent_path() : fs::path("."));
  std::error_code ec;
  fs::remove_all(aside, ec);
}

void remove_stale_staging(const fs::path& parent) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    // Only names StagedDir and AtomicFile make: <name>.tmp.<pid>.<n>, a directory or a file.
    static const std::regex staged(R"(.+\.tmp\.([0-9]{1,9})\.[0-9]+$)");
    const std::string name = e.path().filename().string();
    std::smatch m;
    if (!(e.is_directory(ec) || e.is_regular_file(ec)) || !std::regex_match(name, m, staged))
      continue;
    // Another live process is still writing it (a merge-adapter into the run directory, say):
    // not stale. Ours at start-up is from an earlier process that had this pid.
    const pid_t pid = pid_t(std::stol(m[1].str()));
    const bool alive = pid > 0 && pid != ::getpid() && (::kill(pid, 0) == 0 || errno == EPERM);
    if (!alive) fs::remove_all(e.path(), ec);
  }
}

}  // namespace ssmtune
