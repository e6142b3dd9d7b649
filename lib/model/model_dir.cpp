#include "model/model_dir.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/fault_injection.h"
#include "io/json_file.h"

namespace ssmtune {

namespace fs = std::filesystem;

namespace {

// Removes a directory tree when the scope ends, unless released: a failed write leaves nothing.
class RemoveOnExit {
 public:
  explicit RemoveOnExit(fs::path p) : path_(std::move(p)) {}
  ~RemoveOnExit() {
    std::error_code ec;
    if (!path_.empty()) fs::remove_all(path_, ec);
  }
  RemoveOnExit(const RemoveOnExit&) = delete;
  RemoveOnExit& operator=(const RemoveOnExit&) = delete;
  void release() { path_.clear(); }

 private:
  fs::path path_;
};

// A fresh directory `<base><suffix>XXXXXX` beside `base` (same filesystem, so rename works).
fs::path make_temp_dir(const fs::path& base, const char* suffix, const std::string& shown) {
  std::string tmpl = base.string() + suffix + "XXXXXX";
  if (!::mkdtemp(tmpl.data()))
    throw Error(shown + ": cannot create temporary directory " + tmpl + ": " +
                std::strerror(errno));
  return tmpl;
}

// Streams `src` into `dst` through AtomicFile (fsync'ed like the files written here).
void copy_file_durably(const fs::path& src, const fs::path& dst) {
  std::ifstream in(src, std::ios::binary);
  if (!in) throw Error(src.string() + ": cannot open: " + std::strerror(errno));
  AtomicFile out(dst);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    if (in.gcount() > 0) out.write(buf.data(), std::size_t(in.gcount()));
  }
  if (in.bad()) throw Error(src.string() + ": read failed");
  out.commit();
}

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort, as in AtomicFile
  ::fsync(fd);
  ::close(fd);
}

// Where a model directory goes, and whether an existing non-empty one must be swapped out.
struct ModelDirTarget {
  fs::path path;  // absolute, normalised, no trailing slash
  bool replace_non_empty = false;
};

ModelDirTarget model_dir_target(const std::string& dir, bool overwrite) {
  ModelDirTarget t;
  t.path = fs::absolute(fs::path(dir)).lexically_normal();
  if (!t.path.has_filename()) t.path = t.path.parent_path();  // "out/" -> "out"
  if (!t.path.has_filename() || t.path == t.path.root_path())
    throw UsageError(quote_str(dir) + ": not a usable model directory name");
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(t.path, ec);
  if (fs::exists(st)) {
    if (!fs::is_directory(st)) throw UsageError(dir + ": exists and is not a directory");
    if (!fs::is_empty(t.path, ec)) {
      if (!overwrite)
        throw UsageError(dir +
                         ": already exists and is not empty (pass --overwrite to replace "
                         "it)");
      if (!fs::exists(t.path / "config.json"))
        throw UsageError(dir +
                         ": holds no config.json, so it is not a model directory; "
                         "refusing to replace it even with --overwrite");
      t.replace_non_empty = true;
    }
  }
  const fs::path parent = t.path.parent_path();
  if (!fs::is_directory(parent, ec))
    throw Error(dir + ": parent directory " + parent.string() +
                (fs::exists(parent, ec) ? " is not a directory" : " does not exist"));
  return t;
}

}  // namespace

const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F64: return "float64";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    default: return nullptr;
  }
}

void check_model_dir_target(const std::string& dir, bool overwrite) {
  model_dir_target(dir, overwrite);
}

void write_model_dir(const std::string& dir, const ModelDirContents& contents, bool overwrite) {
  const ModelDirTarget where = model_dir_target(dir, overwrite);
  const fs::path& target = where.path;
  const fs::path parent = target.parent_path();
  std::error_code ec;

  std::set<std::string> names = {"config.json"};
  for (const std::string& f : contents.weight_files)
    if (!names.insert(f).second)
      throw Error(dir + ": a second file named " + quote_str(f) + " for the model directory");
  for (const fs::path& f : contents.extra_files)
    if (!names.insert(f.filename().string()).second)
      throw Error(f.string() + ": a second file named " + quote_str(f.filename().string()) +
                  " for the model directory");

  const fs::path tmp = make_temp_dir(target, ".tmp-", dir);
  RemoveOnExit cleanup(tmp);
  write_file_atomic(tmp / "config.json", dump_python_json(contents.config, 2) + "\n");
  contents.write_weights(tmp);
  for (const fs::path& f : contents.extra_files) copy_file_durably(f, tmp / f.filename());
  // mkdtemp makes 0700; a model directory is as readable as any other new directory.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  fs::permissions(tmp, fs::perms(0777 & ~mask), ec);

  if (!where.replace_non_empty) {
    // rename(2) also replaces an empty directory, and fails if one appeared meanwhile.
    if (::rename(tmp.c_str(), target.c_str()) != 0)
      throw Error(dir + ": cannot rename " + tmp.string() + " into place: " + std::strerror(errno));
    kill_point("model dir: renamed into place");
  } else {
    // Swap: old aside, new in, old removed. If the second rename fails the old one goes back.
    const fs::path old = make_temp_dir(target, ".old-", dir);
    if (::rename(target.c_str(), old.c_str()) != 0) {
      const int err = errno;
      fs::remove(old, ec);
      throw Error(dir + ": cannot move the existing directory aside: " + std::strerror(err));
    }
    kill_point("model dir: old version moved aside");
    if (::rename(tmp.c_str(), target.c_str()) != 0) {
      const int err = errno;
      ::rename(old.c_str(), target.c_str());
      throw Error(dir + ": cannot rename " + tmp.string() + " into place: " + std::strerror(err));
    }
    // The new model is in place; a leftover copy of the old one is worth a warning, not a failure.
    fs::remove_all(old, ec);
    if (ec)
      spdlog::warn("warning: {}: the replaced directory could not be removed from {}: {}", dir,
                   old.string(), ec.message());
  }
  cleanup.release();
  fsync_dir(parent);
}

void remove_model_dir_leftovers(const std::string& dir) {
  const fs::path target = fs::absolute(fs::path(dir)).lexically_normal();
  const std::string name = target.filename().string();
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(target.parent_path(), ec)) {
    const std::string entry = e.path().filename().string();
    // make_temp_dir's names: <name>.tmp-XXXXXX (the new version), <name>.old-XXXXXX (the old).
    const bool leftover = entry.size() == name.size() + 11 && entry.rfind(name, 0) == 0 &&
                          (entry.compare(name.size(), 5, ".tmp-") == 0 ||
                           entry.compare(name.size(), 5, ".old-") == 0);
    if (leftover && e.is_directory(ec)) fs::remove_all(e.path(), ec);
  }
}

}  // namespace ssmtune
