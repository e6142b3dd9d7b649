// A directory that appears complete or not at all: files are written into a temporary sibling
// directory, then it is renamed into place (checkpoints, adapters, merged models, new models).
//
//   StagedDir out(final_dir, /*replace=*/false);  // creates <final_dir>.tmp.<pid>.<n>
//   write_file_atomic(out.path() / "config.json", ...); ...
//   out.commit();  // fsyncs, renames to final_dir, fsyncs the parent
//
// Without commit() (an exception on the way), the destructor removes the temporary directory,
// so a failed write leaves nothing behind. A run killed with SIGKILL may leave a *.tmp.* sibling
// (never a half-written final_dir); remove_stale_staging() cleans those up.
#pragma once

#include <filesystem>

namespace ssmtune {

class StagedDir {
 public:
  // Throws Error naming final_dir when it exists and `replace` is false, or when the parent is
  // missing or unwritable.
  StagedDir(std::filesystem::path final_dir, bool replace);
  ~StagedDir();
  StagedDir(const StagedDir&) = delete;
  StagedDir& operator=(const StagedDir&) = delete;

  const std::filesystem::path& path() const { return temp_; }  // write here
  const std::filesystem::path& final_path() const { return final_; }
  // Renames into place. With `replace`, an existing final_dir is moved aside first and removed
  // after the rename, so at every instant one complete version exists.
  void commit();

 private:
  std::filesystem::path final_;
  std::filesystem::path temp_;
  bool replace_;
  bool committed_ = false;
};

// Removes `<name>.tmp.<pid>.<n>` directories left in `parent` by killed runs: those whose pid
// is no live process (or is this one).
void remove_stale_staging(const std::filesystem::path& parent);

}  // namespace ssmtune
