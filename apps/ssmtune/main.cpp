// ssmtune: parameter-efficient fine-tuning of state-space language models.
// main() selects the fast BLAS kernels, parses the command line and turns errors into one line
// on stderr and an exit code: 2 for usage and configuration errors, 1 for runtime failures.
#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "apps/ssmtune/commands.h"
#include "apps/ssmtune/version.h"
#include "backend/cpu/blas_select.h"
#include "core/error.h"

int main(int argc, char** argv) {
  // First of all: may re-execute this program once so OpenBLAS picks this CPU's kernels.
  ssmtune::cpu::ensure_fast_blas(argc, argv);
  CLI::App app{"ssmtune: parameter-efficient fine-tuning of Mamba state-space language models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", [] { return ssmtune::version_text(); });
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  bool quiet = false;
  app.add_flag("-q,--quiet", quiet, "only warnings and errors");
  app.parse_complete_callback([&] {
    spdlog::set_level(quiet ? spdlog::level::warn : spdlog::level::from_str(log_level));
  });
  spdlog::set_pattern("%v");

  ssmtune::add_info_command(app);
  ssmtune::add_bench_command(app);
  ssmtune::add_init_command(app);
  ssmtune::add_train_command(app);
  ssmtune::add_eval_command(app);
  ssmtune::add_generate_command(app);
  ssmtune::add_merge_adapter_command(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help, the version or the usage error
    return code == 0 ? 0 : 2;
  } catch (const ssmtune::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
