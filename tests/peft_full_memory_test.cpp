// Full fine-tuning checks its size (weights, gradients, AdamW's two moments) against the host's
// memory before allocating, naming peft.full (core/memory_budget.h). The model is made here
// (init_mamba_weights, 13M parameters: 0.2 GB to train in full), and the address space of a
// forked child is capped to leave it half of that, so the cap limits nothing but that child.
#include <sys/resource.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <string>

#include "backend/backend.h"
#include "child_process.h"
#include "core/error.h"
#include "model/mamba_init.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "peft/peft_model.h"

using namespace ssmtune;

namespace {

std::uint64_t vm_size_bytes() {  // /proc/self/status VmSize, as core/memory_budget.cpp reads it
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmSize:", 0) == 0) return std::stoull(line.substr(7)) * 1024;
  return 0;
}

}  // namespace

TEST_CASE("full fine-tuning larger than the memory left is refused naming peft.full",
          "[peft][memory]") {
  const test::ChildResult r = test::run_in_child([&] {
    ModelConfig cfg;
    cfg.vocab_size = 50000;
    cfg.d_model = 256;
    cfg.n_layer = 1;
    cfg.d_inner = 512;
    cfg.d_state = 8;
    cfg.dt_rank = 16;
    ModelWeights w = init_mamba_weights(cfg, 1);
    const std::unique_ptr<Backend> be = make_cpu_backend();
    std::uint64_t n = 0;
    for_each_param(cfg, w, [&](const std::string&, Tensor& t) { n += t.numel(); });
    PeftConfig p;
    p.full = true;
    // Room for half of the 16 bytes a parameter needs (fp32 weight, gradient, m and v).
    const rlimit cap{vm_size_bytes() + 8 * n, RLIM_INFINITY};
    if (::setrlimit(RLIMIT_AS, &cap) != 0) ::_exit(3);
    try {
      PeftModel peft(cfg, w, p, *be, 1);
    } catch (const UsageError& e) {
      std::fputs(e.what(), stderr);
      ::_exit(0);
    } catch (...) {
      ::_exit(4);
    }
    ::_exit(5);  // not refused
  });
  INFO(r.stderr);
  REQUIRE(WIFEXITED(r.status));
  CHECK(WEXITSTATUS(r.status) == 0);
  CHECK_THAT(r.stderr, Catch::StartsWith("peft.full: ") &&
                           Catch::Contains(" trainable parameters need ") &&
                           Catch::Contains(" with their gradients and AdamW state; ") &&
                           Catch::EndsWith(" of memory is available"));
}
