// The run directory under faults (issue 15), through the binary: a live run's directory refuses
// a second `train` and `train --resume` naming the directory and the live run's pid; a disk
// that fills up mid-run stops it with one line and leaves the last good checkpoint intact and
// resumable to the uninterrupted run's bytes; a read-only output directory gives one line and no
// output. The disk-full and read-only cases mount a small tmpfs (root in a sandbox); where
// mount(2) is refused they say so and skip. The experiment is train_experiment_fixture.h's.
#include <signal.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "cli_run.h"
#include "train_experiment_fixture.h"

using ssmtune::test::Experiment;
using ssmtune::test::read_file;
using ssmtune::test::run_cli;
namespace fs = std::filesystem;
using ssmtune::test::q;

namespace {

std::size_t line_count(const std::string& s) { return std::count(s.begin(), s.end(), '\n'); }

// A tmpfs of `bytes` mounted on `dir` for the scope; mounted() is false (with the reason in
// why()) where this process may not mount.
class TmpfsMount {
 public:
  TmpfsMount(const fs::path& dir, std::size_t bytes, bool read_only = false) : dir_(dir) {
    fs::create_directories(dir);
    const std::string options = "size=" + std::to_string(bytes);
    mounted_ = ::mount("tmpfs", dir.c_str(), "tmpfs", read_only ? MS_RDONLY : 0,
                       options.c_str()) == 0;
    if (!mounted_) why_ = std::string("mount(2) of a tmpfs refused: ") + std::strerror(errno);
  }
  ~TmpfsMount() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;

  bool mounted() const { return mounted_; }
  const std::string& why() const { return why_; }
  void remount(std::size_t bytes, bool read_only) const {
    const std::string options = "size=" + std::to_string(bytes);
    REQUIRE(::mount("tmpfs", dir_.c_str(), "tmpfs",
                    MS_REMOUNT | (read_only ? MS_RDONLY : 0), options.c_str()) == 0);
  }

 private:
  fs::path dir_;
  bool mounted_ = false;
  std::string why_;
};

// The bytes a directory tree takes on a tmpfs: whole 4 KiB pages per file.
std::uintmax_t pages_bytes(const fs::path& dir) {
  std::uintmax_t total = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) total += (e.file_size() + 4095) / 4096 * 4096;
  return total;
}

// Every path below `dir` with its bytes: what a refused command must leave as it was.
std::map<std::string, std::string> tree(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    out[fs::relative(e.path(), dir).string()] = e.is_regular_file() ? read_file(e.path()) : "";
  return out;
}

void require_same_result(const fs::path& a, const fs::path& b) {
  const std::string adapter = "adapter/adapter_model.safetensors";
  REQUIRE(fs::exists(b / adapter));
  CHECK(read_file(a / adapter) == read_file(b / adapter));
  CHECK(read_file(a / "checkpoint-12/optimizer.safetensors") ==
        read_file(b / "checkpoint-12/optimizer.safetensors"));
  CHECK(ssmtune::test::trajectory(a) == ssmtune::test::trajectory(b));
}

}  // namespace

TEST_CASE("a live run's directory refuses a second train and train --resume, naming it and the "
          "run's pid",
          "[cli][train][run-lock]") {
  // Steps enough to outlast the two refused commands; the live run is killed after them.
  Experiment e(/*steps=*/100000, /*checkpoint_every=*/1, /*eval_every=*/0);
  const pid_t pid = ssmtune::test::spawn_cli({"--quiet", "train", e.config.string()});
  // Live once its first checkpoint exists (it holds the lock from before its first write).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!fs::exists(e.run_dir() / "checkpoint-1") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  REQUIRE(fs::exists(e.run_dir() / "checkpoint-1"));
  const std::string refused = "error: " + e.run_dir().string() + ": another ssmtune run (pid " +
                              std::to_string(pid) + ") is using this output directory; wait for "
                              "it to end or choose another output_dir\n";
  for (const std::string& args : {std::string(), std::string("--resume")}) {
    const auto r = run_cli(e.train_args(args));
    INFO(args);
    CHECK(r.exit_code == 1);
    CHECK(r.output == refused);
  }
  ::kill(pid, SIGKILL);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  // The kernel dropped the dead run's lock: --resume takes it (and is stopped at its first kill
  // point, the first write after the lock, instead of training 100000 steps).
  const auto r = run_cli(e.train_args("--resume"), "SSMTUNE_FAULT_KILL_AT_POINT=1");
  INFO(r.output);
  CHECK((r.exit_code == 137 || r.exit_code == -1));  // SIGKILL, as the shell reports it
  CHECK_THAT(r.output, !Catch::Contains("another ssmtune run"));  // the shell may say "Killed"
}

TEST_CASE("a full disk stops train with one line; the last good checkpoint stays intact and "
          "resumes to the uninterrupted run's bytes",
          "[cli][train][disk-full]") {
  Experiment straight, e;
  REQUIRE(run_cli(straight.train_args()).exit_code == 0);
  const fs::path disk = e.dir / "disk", run = disk / "run";
  TmpfsMount mount(disk, 4 << 20);
  if (!mount.mounted()) {
    WARN("skipped: " << mount.why() << " (needs root or CAP_SYS_ADMIN)");
    return;
  }
  // Room for the run's small files and about one and a half checkpoints: a later checkpoint
  // (or a metrics row) finds the disk full.
  // (checkpoint-12: keep 2 pruned checkpoint-3; every checkpoint has the same sizes.)
  const std::uintmax_t checkpoint = pages_bytes(straight.run_dir() / "checkpoint-12");
  const std::uintmax_t room = 8 * 4096 + checkpoint * 3 / 2;
  struct statvfs st {};
  REQUIRE(::statvfs(disk.c_str(), &st) == 0);
  const std::uintmax_t free_bytes = std::uintmax_t(st.f_bavail) * st.f_frsize;
  REQUIRE(free_bytes > room);
  ssmtune::test::write_bytes(disk / "filler", std::string(free_bytes - room, 'x'));

  const std::string args = "--out " + q(run);
  auto r = run_cli(e.train_args(args));
  INFO(r.output);
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Catch::StartsWith("error: " + run.string()) &&
                           Catch::Contains("No space left on device"));
  CHECK(line_count(r.output) == 1);
  CHECK(!fs::exists(run / "adapter"));
  for (const auto& f : fs::directory_iterator(run))  // no staging or temporary file left
    CHECK(f.path().filename().string().find(".tmp.") == std::string::npos);
  const std::vector<fs::path> checkpoints = [&] {
    std::vector<fs::path> c;
    for (const auto& f : fs::directory_iterator(run))
      if (f.path().filename().string().rfind("checkpoint-", 0) == 0) c.push_back(f.path());
    return c;
  }();
  // Where the disk fills depends on page rounding; what is left must be whole checkpoints.
  REQUIRE(!checkpoints.empty());
  for (const fs::path& c : checkpoints)
    for (const char* f : {"adapter_config.json", "adapter_model.safetensors",
                          "optimizer.safetensors", "trainer_state.json"})
      CHECK(fs::exists(c / f));

  fs::remove(disk / "filler");  // room again: the run resumes from that checkpoint
  r = run_cli(e.train_args(args + " --resume"));
  REQUIRE(r.exit_code == 0);
  require_same_result(straight.run_dir(), run);
}

TEST_CASE("a read-only output directory gives one line and no output", "[cli][train][read-only]") {
  Experiment e(/*steps=*/8, /*checkpoint_every=*/3, /*eval_every=*/0);
  const fs::path disk = e.dir / "disk";
  TmpfsMount mount(disk, 1 << 20, /*read_only=*/true);
  if (!mount.mounted()) {
    WARN("skipped: " << mount.why() << " (needs root or CAP_SYS_ADMIN)");
    return;
  }
  SECTION("a new run directory below it") {
    const auto r = run_cli(e.train_args("--out " + q(disk / "run")));
    INFO(r.output);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::StartsWith("error: output_dir " + (disk / "run").string() +
                                           ": cannot create it: Read-only file system"));
    CHECK(line_count(r.output) == 1);
    CHECK(fs::is_empty(disk));
  }
  SECTION("the directory itself") {
    const auto r = run_cli(e.train_args("--out " + q(disk)));
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::StartsWith("error: " + disk.string()) &&
                             Catch::Contains("Read-only file system"));
    CHECK(line_count(r.output) == 1);
    CHECK(fs::is_empty(disk));
  }
  SECTION("a run to resume that became read-only") {
    mount.remount(1 << 20, /*read_only=*/false);
    const fs::path run = disk / "run";
    REQUIRE(run_cli(e.train_args("--out " + q(run)), "SSMTUNE_FAULT_KILL_AFTER_STEP=5")
                .exit_code != 0);
    REQUIRE(fs::exists(run / "checkpoint-3"));
    const auto before = tree(run);
    mount.remount(1 << 20, /*read_only=*/true);
    const auto r = run_cli(e.train_args("--out " + q(run) + " --resume"));
    INFO(r.output);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::StartsWith("error: " + run.string()) &&
                             Catch::Contains("Read-only file system"));
    CHECK(line_count(r.output) == 1);
    CHECK(tree(run) == before);
  }
}
