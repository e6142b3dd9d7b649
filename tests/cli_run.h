// Runs the ssmtune binary (SSMTUNE_BIN) from a test, as a user's shell would.
#pragma once

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <array>
#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

extern char** environ;

namespace ssmtune::test {

// `p` in single quotes, for a command line run_cli hands to the shell (test paths hold no quote).
inline std::string q(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

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

// Starts the binary with `args` (no shell), its stdout and stderr on /dev/null, and returns its
// pid without waiting: for a test that signals or races a live run.
inline pid_t spawn_cli(const std::vector<std::string>& args) {
  std::vector<char*> argv = {const_cast<char*>(SSMTUNE_BIN)};
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  const int err = posix_spawn(&pid, SSMTUNE_BIN, &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  REQUIRE(err == 0);
  return pid;
}

}  // namespace ssmtune::test
