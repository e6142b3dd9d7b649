// Runs part of a test in a forked child, for what ends or limits a process (a fatal signal's
// handler, setrlimit): the child's exit status and what it wrote to stderr come back.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>

namespace ssmtune::test {

struct ChildResult {
  int status = 0;      // waitpid's
  std::string stderr;  // everything the child wrote there
};

// Runs `body` in a forked child with stderr on a pipe; the child exits 0 when `body` returns.
template <class Body>
ChildResult run_in_child(Body body) {
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(pipe_fds[1], STDERR_FILENO);
    ::close(pipe_fds[0]);
    body();
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  ChildResult r;
  char buf[512];
  for (ssize_t n; (n = ::read(pipe_fds[0], buf, sizeof buf)) > 0;) r.stderr.append(buf, n);
  ::close(pipe_fds[0]);
  REQUIRE(::waitpid(pid, &r.status, 0) == pid);
  return r;
}

}  // namespace ssmtune::test
