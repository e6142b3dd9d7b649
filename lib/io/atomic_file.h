// Atomic file replacement: a crash or an error at any instant leaves either the old file or
// the complete new one at `path`, never half of one (docs/architecture.md "Files it writes").
//
//   AtomicFile out(path);      // creates <path>.tmp.<pid>.<n> in the same directory
//   out.write(bytes, n); ...   // streamed: a multi-GB checkpoint is never held in memory twice
//   out.commit();              // fsync, rename over `path`, fsync the directory
//
// If commit() is never reached (an exception on the way), the destructor removes the temporary
// file. The temporary lives in the target's directory because rename(2) is only atomic within
// one filesystem.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string_view>

namespace ssmtune {

class AtomicFile {
 public:
  // Throws Error naming the path if the temporary cannot be created (missing or unwritable
  // directory, path is a directory, ...).
  explicit AtomicFile(std::filesystem::path path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t n_bytes);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  // Makes the new contents visible at path(); afterwards no more writes.
  void commit();

  const std::filesystem::path& path() const { return path_; }
  const std::filesystem::path& temp_path() const { return temp_path_; }

 private:
  void discard() noexcept;  // close and remove the temporary
  [[noreturn]] void fail(const std::string& what, int err);

  std::filesystem::path path_;
  std::filesystem::path temp_path_;
  int fd_ = -1;
};

// The whole contents at once, for small files (configs, JSON, trainer state).
void write_file_atomic(const std::filesystem::path& path, std::string_view contents);

}  // namespace ssmtune
