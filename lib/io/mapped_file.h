// A whole file mapped into memory, for zero-copy reads of large inputs (checkpoints).
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>

namespace ssmtune {

class MappedFile {
 public:
  // Maps `path` copy-on-write (MAP_PRIVATE, readable and writable): the file is opened
  // read-only and is never modified, but tensors viewing the mapping may be written in place
  // (fine-tuning a base weight) without a crash. Throws Error naming the path when the file
  // is missing, not a regular file (a FIFO would hang a reader) or cannot be mapped.
  static std::shared_ptr<MappedFile> open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  unsigned char* data() const { return data_; }  // nullptr for an empty file
  std::size_t size() const { return size_; }

 private:
  MappedFile() = default;
  std::filesystem::path path_;
  unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
};

// Opens `path` read-only and checks it is a regular file; returns the descriptor and its size.
// Shared by the mmap and the plain readers so both refuse directories and FIFOs the same way.
int open_regular_file(const std::filesystem::path& path, std::size_t& size);

}  // namespace ssmtune
