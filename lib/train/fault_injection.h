// Fault injection for the crash-safety tests: the process kills itself with SIGKILL at a chosen
// point, exactly as a power loss or `kill -9` would stop it there. Off unless the environment
// variable names a step; documented in docs/formats.md ("Checkpoints").
//   SSMTUNE_FAULT_KILL_AFTER_STEP=N     right after optimizer step N (before its checkpoint)
//   SSMTUNE_FAULT_KILL_IN_CHECKPOINT=N  half way through writing checkpoint-N
#pragma once

#include <cstdint>

namespace ssmtune {

// Raises SIGKILL if the environment variable `name` holds the decimal number `step`.
void fault_point(const char* name, std::int64_t step);

}  // namespace ssmtune
