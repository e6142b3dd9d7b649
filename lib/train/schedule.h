// Learning-rate schedules with linear warmup, as Hugging Face's get_*_schedule_with_warmup
// compute them (transformers/optimization.py), so runs compare with HF Trainer runs:
//   warmup (step < W):  lr * step / W                 (the first step runs at lr 0, as in HF)
//   constant:           lr
//   linear:             lr * max(0, (T - step) / (T - W)), floored at lr * min_lr_ratio
//   cosine:             lr * (m + (1 - m) * 0.5 * (1 + cos(pi * (step - W) / (T - W))))
// step counts optimizer steps from 0; T is the run's total.
#pragma once

#include <cstdint>

#include "train/experiment_config.h"

namespace ssmtune {

// The warmup length in steps: warmup_steps if set, else ceil(warmup_ratio * total).
std::int64_t warmup_steps(const ScheduleConfig& s, std::int64_t total_steps);

// The learning rate of optimizer step `step` (0-based) of a run of `total_steps`.
double scheduled_lr(const ScheduleConfig& s, double base_lr, std::int64_t step,
                    std::int64_t total_steps);

}  // namespace ssmtune
