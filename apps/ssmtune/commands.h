// One function per subcommand; main.cpp wires them to CLI11.
#pragma once

#include <CLI/CLI.hpp>

namespace ssmtune {

// Each adds its subcommand to `app`; the callback runs the command and may throw ssmtune::Error.
void add_info_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_init_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_merge_adapter_command(CLI::App& app);

}  // namespace ssmtune
