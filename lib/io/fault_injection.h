// Fault injection for the crash-safety tests: the process kills itself with SIGKILL at a chosen
// point, exactly as a power loss or `kill -9` would stop it there. Off unless an environment
// variable is set; documented in docs/formats.md ("Checkpoints") and docs/reliability.md.
//   SSMTUNE_FAULT_KILL_AFTER_STEP=N     right after optimizer step N (before its checkpoint)
//   SSMTUNE_FAULT_KILL_IN_CHECKPOINT=N  half way through writing checkpoint-N
//   SSMTUNE_FAULT_KILL_AT_POINT=N       at the N-th kill point (from 1) this process passes
//   SSMTUNE_FAULT_TRACE=FILE            appends "N where" to FILE at every kill point
// Kill points sit between the steps of every write that must survive a kill (AtomicFile,
// StagedDir, checkpoints, metrics rows, the end of a run), so a test can stop a run at each of
// them in turn (tests/train_kill_anywhere_test.cpp).
#pragma once

#include <cstdint>

namespace ssmtune {

// Raises SIGKILL if the environment variable `name` holds the decimal number `step`.
void fault_point(const char* name, std::int64_t step);

// Counts one kill point named `where` (a literal); raises SIGKILL if it is the one
// SSMTUNE_FAULT_KILL_AT_POINT names. With neither variable set it is one branch.
void kill_point(const char* where);

}  // namespace ssmtune
