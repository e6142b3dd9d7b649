// A model file truncated by another process while ssmtune maps it: the read past its new end
// raises SIGBUS, which must end the process with one line naming the file (exit status 1),
// not a silent crash. The reading happens in a forked child, since it ends that process.
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <csignal>
#include <filesystem>
#include <string>

#include "child_process.h"
#include "core/tensor.h"
#include "io/safetensors.h"
#include "io_test_util.h"

namespace fs = std::filesystem;

using ssmtune::test::ChildResult;
using ssmtune::test::run_in_child;

TEST_CASE("a safetensors file truncated while mapped ends the reader with one line naming it",
          "[io][safetensors][sigbus]") {
  ssmtune::test::TempDir dir;
  const fs::path path = dir / "model.safetensors";
  // 64 KiB of data: pages well past the 4 KiB the file is cut to.
  ssmtune::Tensor w = ssmtune::Tensor::zeros({16384}, ssmtune::DType::F32);
  ssmtune::write_safetensors(path, {{"w", w}});
  const ChildResult r = run_in_child([&] {
    const ssmtune::SafetensorsFile file = ssmtune::SafetensorsFile::open(path);
    const ssmtune::Tensor t = file.tensor("w");
    fs::resize_file(path, 4096);  // as another process's truncate(1) would
    volatile float sum = 0;
    for (std::int64_t i = 0; i < t.numel(); i += 1024) sum = sum + t.data<float>()[i];
  });
  INFO(r.stderr);
  REQUIRE(WIFEXITED(r.status));
  CHECK(WEXITSTATUS(r.status) == 1);
  CHECK_THAT(r.stderr, Catch::StartsWith("error: " + path.string() +
                                         ": the file became shorter while ssmtune was reading it "
                                         "(read at byte ") &&
                           Catch::EndsWith("another process truncated or rewrote it in place\n"));
  CHECK(std::count(r.stderr.begin(), r.stderr.end(), '\n') == 1);
}
