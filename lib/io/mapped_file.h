// A whole file mapped into memory, for zero-copy reads of large inputs (checkpoints).
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <string>

namespace ssmtune {

class MappedFile {
 public:
  // Maps `path` copy-on-write (MAP_PRIVATE, readable and writable): the file is opened
  // read-only and is never modified, but tensors viewing the mapping may be written in place
  // (fine-tuning a base weight) without a crash. Throws Error naming the path when the file
  // is missing, not a regular file (a FIFO would hang a reader) or cannot be mapped.
  // While mapped, a read past the end of a file that another process truncated (SIGBUS) ends
  // the process with one line, `error: <path>: the file became shorter while ssmtune was
  // reading it ...`, and exit status 1, not a silent crash.
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
  std::string path_text_;  // what the SIGBUS handler prints
  int watch_slot_ = -1;    // its slot in the handler's table
};

// Opens `path` read-only and checks it is a regular file; returns the descriptor and its size.
// Shared by the mmap and the plain readers so both refuse directories and FIFOs the same way.
int open_regular_file(const std::filesystem::path& path, std::size_t& size);

}  // namespace ssmtune
