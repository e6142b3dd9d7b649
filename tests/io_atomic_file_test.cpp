// Atomic writes: the target holds the old or the new contents, never a partial file, and no
// temporary is left behind on any failure.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "io/atomic_file.h"
#include "io_test_util.h"

using namespace ssmtune;
using ssmtune::test::read_bytes;
using ssmtune::test::require_error;
using ssmtune::test::TempDir;
using ssmtune::test::write_bytes;

namespace {
std::size_t n_entries(const std::filesystem::path& dir) {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++n;
  return n;
}
}  // namespace

TEST_CASE("write_file_atomic replaces the file and leaves no temporary", "[io][atomic]") {
  TempDir dir;
  write_file_atomic(dir / "a.json", "old");
  write_file_atomic(dir / "a.json", "new contents");
  CHECK(read_bytes(dir / "a.json") == "new contents");
  CHECK(n_entries(dir.path()) == 1);
}

TEST_CASE("an AtomicFile dropped before commit leaves the old file and no temporary",
          "[io][atomic]") {
  TempDir dir;
  write_bytes(dir / "state.json", "old");
  {
    AtomicFile out(dir / "state.json");
    out.write("half of the new");
    CHECK(std::filesystem::exists(out.temp_path()));
    CHECK(out.temp_path().parent_path() == dir.path());  // same filesystem: rename is atomic
    // no commit: as if an exception unwound the writer here
  }
  CHECK(read_bytes(dir / "state.json") == "old");
  CHECK(n_entries(dir.path()) == 1);
}

TEST_CASE("a failed rename removes the temporary and throws naming the target", "[io][atomic]") {
  TempDir dir;
  // The target is a non-empty directory: the temporary is written, then rename(2) fails.
  std::filesystem::create_directory(dir / "target");
  write_bytes(dir / "target" / "keep", "x");
  require_error([&] { write_file_atomic(dir / "target", "data"); },
                {(dir / "target").string() + ": cannot rename"});
  CHECK(n_entries(dir.path()) == 1);
  CHECK(read_bytes(dir / "target" / "keep") == "x");
}

TEST_CASE("writing into an unwritable or missing directory fails cleanly", "[io][atomic]") {
  TempDir dir;
  require_error([&] { write_file_atomic(dir / "missing" / "f.json", "x"); },
                {"f.json: cannot create temporary file", "No such file or directory"});
  // /proc refuses new files even to root: a directory that is unwritable for everyone.
  require_error([] { write_file_atomic("/proc/self/ssmtune-test.json", "x"); },
                {"/proc/self/ssmtune-test.json: cannot create temporary file"});
  CHECK(!std::filesystem::exists("/proc/self/ssmtune-test.json"));
  std::filesystem::create_directory(dir / "ro");
  ::chmod((dir / "ro").c_str(), 0555);
  if (::access((dir / "ro").c_str(), W_OK) == 0) {
    // root ignores directory permissions: the write succeeds; it must still be complete.
    write_file_atomic(dir / "ro" / "f.json", "complete");
    CHECK(read_bytes(dir / "ro" / "f.json") == "complete");
    CHECK(n_entries(dir / "ro") == 1);
  } else {
    require_error([&] { write_file_atomic(dir / "ro" / "f.json", "x"); },
                  {"f.json: cannot create temporary file", "Permission denied"});
    CHECK(n_entries(dir / "ro") == 0);
  }
}

TEST_CASE("AtomicFile refuses writes after commit", "[io][atomic]") {
  TempDir dir;
  AtomicFile out(dir / "x");
  out.write("a");
  out.commit();
  require_error([&] { out.write("b"); }, {"write after commit"});
  CHECK(read_bytes(dir / "x") == "a");
}
