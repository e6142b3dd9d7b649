#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <mutex>

#include "core/error.h"

namespace ssmtune {

namespace {

// A file mapped here that another process truncates raises SIGBUS at the first read of a page
// past its new end, which would kill the run with no word. The handler turns that into one
// line naming the file and exit status 1 (a runtime failure), as an Error would give; SIGBUS
// anywhere else goes to the previous handler or the default action.
struct MappedRange {
  std::atomic<const unsigned char*> begin{nullptr};
  std::atomic<std::size_t> size{0};
  std::atomic<const std::string*> path{nullptr};
};
constexpr std::size_t kMaxRanges = 1024;  // files mapped at once; more are mapped unwatched
std::array<MappedRange, kMaxRanges> g_ranges;
struct sigaction g_previous_bus;

void write_all(const char* text, std::size_t n) {  // async-signal-safe
  while (n > 0) {
    const ssize_t w = ::write(STDERR_FILENO, text, n);
    if (w <= 0) return;
    text += w;
    n -= std::size_t(w);
  }
}

void write_text(const char* text) { write_all(text, std::strlen(text)); }

void write_number(std::size_t v) {
  char digits[24];
  int n = 0;
  do digits[sizeof digits - 1 - n++] = char('0' + v % 10);
  while ((v /= 10) > 0);
  write_all(digits + sizeof digits - n, std::size_t(n));
}

void on_sigbus(int sig, siginfo_t* info, void* context) {
  const auto* addr = static_cast<const unsigned char*>(info->si_addr);
  for (const MappedRange& r : g_ranges) {
    const unsigned char* begin = r.begin.load();
    const std::string* path = r.path.load();
    if (!begin || !path || addr < begin || addr >= begin + r.size.load()) continue;
    write_text("error: ");
    write_all(path->data(), path->size());
    write_text(": the file became shorter while ssmtune was reading it (read at byte ");
    write_number(std::size_t(addr - begin));
    write_text(" of ");
    write_number(r.size.load());
    write_text("); another process truncated or rewrote it in place\n");
    ::_exit(1);
  }
  // Not a mapped file of ours: what would have happened without this handler.
  ::sigaction(SIGBUS, &g_previous_bus, nullptr);
  if (g_previous_bus.sa_flags & SA_SIGINFO) {
    if (g_previous_bus.sa_sigaction) g_previous_bus.sa_sigaction(sig, info, context);
  } else if (g_previous_bus.sa_handler != SIG_DFL && g_previous_bus.sa_handler != SIG_IGN) {
    g_previous_bus.sa_handler(sig);
  } else if (info->si_code <= 0) {
    std::raise(SIGBUS);  // sent by a process: returning would not repeat it
  }  // else returning repeats the faulting read, now with the default action
}

void install_sigbus_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &g_previous_bus);
  });
}

// The slot now watching [begin, begin + size), or -1 when all are taken.
int watch_range(const unsigned char* begin, std::size_t size, const std::string* path) {
  install_sigbus_handler();
  for (std::size_t i = 0; i < kMaxRanges; ++i) {
    const std::string* expected = nullptr;
    if (!g_ranges[i].path.compare_exchange_strong(expected, path)) continue;
    g_ranges[i].size.store(size);
    g_ranges[i].begin.store(begin);
    return int(i);
  }
  return -1;
}

void unwatch_range(int slot) {
  if (slot < 0) return;
  g_ranges[std::size_t(slot)].begin.store(nullptr);
  g_ranges[std::size_t(slot)].path.store(nullptr);
}

}  // namespace

int open_regular_file(const std::filesystem::path& path, std::size_t& size) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise block until a writer appears.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(path.string() + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error(path.string() + ": cannot stat: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path.string() + ": not a regular file");
  }
  size = std::size_t(st.st_size);
  return fd;
}

std::shared_ptr<MappedFile> MappedFile::open(const std::filesystem::path& path) {
  std::shared_ptr<MappedFile> file(new MappedFile());
  file->path_ = path;
  const int fd = open_regular_file(path, file->size_);
  if (file->size_ > 0) {
    void* p = ::mmap(nullptr, file->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw Error(path.string() + ": cannot map " + std::to_string(file->size_) +
                  " bytes: " + std::strerror(err));
    }
    file->data_ = static_cast<unsigned char*>(p);
    file->path_text_ = path.string();
    file->watch_slot_ = watch_range(file->data_, file->size_, &file->path_text_);
  }
  ::close(fd);  // the mapping keeps its own reference to the file
  return file;
}

MappedFile::~MappedFile() {
  unwatch_range(watch_slot_);
  if (data_) ::munmap(data_, size_);
}

}  // namespace ssmtune
