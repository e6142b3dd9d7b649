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
#include "io/json_file.h"

namespace {

// CLI11's message for a usage error as one line: it prints two ("...", "Run with --help for more
// information.") without the "error:" prefix, and for an unknown subcommand says only that a
// subcommand is required.
std::string usage_error_line(const CLI::App& app, const CLI::ParseError& e) {
  std::string names;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; }))
    names += (names.empty() ? "" : ", ") + sub->get_name();
  const std::vector<std::string> extra = app.remaining();
  std::string line;
  const CLI::App* used = nullptr;
  for (const CLI::App* sub : app.get_subcommands()) used = sub;
  const std::string first = extra.empty() ? "" : ssmtune::quote_str(extra.front(), 80);
  if (!used && !extra.empty() && extra.front().rfind('-', 0) == 0)
    line = "unknown option " + first + " (expected a subcommand: " + names + ")";
  else if (!used && !extra.empty())
    line = "unknown subcommand " + first + " (expected one of: " + names + ")";
  else if (!used && e.get_name() == "RequiredError" && extra.empty())
    line = "a subcommand is required (one of: " + names + ")";
  else
    line = e.what();
  for (char& c : line)
    if (c == '\n' || c == '\r') c = ' ';
  const std::string help = used ? "ssmtune " + used->get_name() + " --help" : "ssmtune --help";
  return line + " (see " + help + ")";
}

}  // namespace

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
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version: printed, exit 0
    std::fprintf(stderr, "error: %s\n", usage_error_line(app, e).c_str());
    return 2;
  } catch (const ssmtune::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
