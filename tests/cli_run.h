// Runs the ssmtune binary (SSMTUNE_BIN) from a test, as a user's shell would.
#pragma once

#include <sys/wait.h>

#include <array>
#include <catch2/catch.hpp>
#include <cstdio>
#include <string>

namespace ssmtune::test {

struct CliResult {
  int exit_code;       // -1 if killed by a signal
  std::string output;  // stdout and stderr together
};

// `args` is passed through the shell: quote paths that may hold spaces. `shell_prefix` runs
// before the binary in the same shell command (environment variables, ulimit, trap).
inline CliResult run_cli(const std::string& args, const std::string& shell_prefix = "") {
  const std::string cmd = shell_prefix + " " + std::string(SSMTUNE_BIN) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;  // every byte, NULs included (generate prints what tokens decode to)
  std::array<char, 4096> buf{};
  for (std::size_t n; (n = std::fread(buf.data(), 1, buf.size(), p)) > 0;)
    out.append(buf.data(), n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace ssmtune::test
