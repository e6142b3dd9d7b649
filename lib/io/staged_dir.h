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
  // Renames into place. With `replace`, an existing final_dir is swapped with the new one in one
  // atomic rename (RENAME_EXCHANGE) and then removed, so at every instant final_dir is one
  // complete version (where the filesystem lacks the swap, the old one is moved aside first).
  void commit();

 private:
  void replace_by_moving_aside();

  std::filesystem::path final_;
  std::filesystem::path temp_;
  bool replace_;
  bool committed_ = false;
};

// Removes `<name>.tmp.<pid>.<n>` directories (StagedDir) and files (AtomicFile) left in
// `parent` by killed runs: those whose pid is no live process (or is this one).
void remove_stale_staging(const std::filesystem::path& parent);

}  // namespace ssmtune
