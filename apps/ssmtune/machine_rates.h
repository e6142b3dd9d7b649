// This machine's matrix-product rate and memory bandwidth, measured through a backend's own
// ops: what `ssmtune bench` divides a step's (or a decoded token's) unavoidable work by to get
// its floor (docs/benchmarks.md "The floor"); the median its timings report, and its op table.
#pragma once

#include <vector>

#include "backend/backend.h"

namespace ssmtune {

struct MachineRates {
  double flops_per_s = 0, bytes_per_s = 0;
};

// A 2048^3 float32 GEMM, and y += x over 64 Mi floats (12 bytes moved per element); the best
// of 3 each.
MachineRates measure_rates(Backend& be);

// The median of timed runs (non-empty): what every bench figure reports.
double median(std::vector<double> v);

// The profile's ops, one line each: calls, seconds, share of all ops' seconds, and GFLOP/s where
// the op counts FLOPs (matrix products).
void print_op_table(const OpProfile& profile);

// Seconds summed over the profile's ops.
double op_seconds(const OpProfile& profile);

}  // namespace ssmtune
