// SIGINT / SIGTERM during training: the first one asks the trainer to finish the current
// optimizer step, write a checkpoint and exit; a second one ends the process at once (the
// default action), losing only the work since the last checkpoint.
#pragma once

namespace ssmtune {

class InterruptGuard {
 public:
  InterruptGuard();   // installs the handlers
  ~InterruptGuard();  // restores the previous ones
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

  // The signal received since construction, or 0.
  static int pending();
};

}  // namespace ssmtune
