// Error types that cross the library boundary. main() catches them, prints one line
// to stderr and exits: 2 for usage and configuration mistakes, 1 for everything else
// (bad files, runtime failures). See docs/conventions.md "Errors and input".
#pragma once

#include <stdexcept>
#include <string>

namespace ssmtune {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, int exit_code = 1)
      : std::runtime_error(what), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

// A mistake in how the tool was called or configured (exit code 2).
class UsageError : public Error {
 public:
  explicit UsageError(const std::string& what) : Error(what, 2) {}
};

// Throws Error(message) unless cond holds. For invariants on validated input.
inline void check(bool cond, const std::string& message) {
  if (!cond) throw Error(message);
}

}  // namespace ssmtune
