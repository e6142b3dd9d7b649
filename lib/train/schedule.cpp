#include "train/schedule.h"

#include <algorithm>
#include <cmath>

namespace ssmtune {

std::int64_t warmup_steps(const ScheduleConfig& s, std::int64_t total_steps) {
  if (s.warmup_steps > 0) return s.warmup_steps;
  return std::int64_t(std::ceil(s.warmup_ratio * double(total_steps)));
}

double scheduled_lr(const ScheduleConfig& s, double base_lr, std::int64_t step,
                    std::int64_t total_steps) {
  const std::int64_t W = warmup_steps(s, total_steps);
  if (step < W) return base_lr * double(step) / double(std::max<std::int64_t>(1, W));
  const double m = s.min_lr_ratio;
  const double progress = double(step - W) / double(std::max<std::int64_t>(1, total_steps - W));
  switch (s.type) {
    case ScheduleType::Constant: return base_lr;
    case ScheduleType::Linear: return base_lr * std::max(m, std::max(0.0, 1.0 - progress));
    case ScheduleType::Cosine:
      return base_lr * (m + (1.0 - m) * std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress))));
  }
  return base_lr;
}

}  // namespace ssmtune
