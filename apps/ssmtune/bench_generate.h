// ssmtune bench --generate N: the tokens/s of greedy generation, batch 1, through the recurrent
// decoder (infer/decoder.h) as `ssmtune generate` runs it: a prompt of --seq-len random ids
// prefilled, then one decode step per further token, N new tokens in all (the work of
// transformers' generate(max_new_tokens=N), which data_scripts/bench_reference.py --generate
// times on the peer's side).
#pragma once

#include <cstdint>
#include <string>

namespace ssmtune {

struct GenerateBenchOptions {
  std::string model_dir, config_file;  // one of them (bench_model.h)
  std::string frozen_weights;          // "", "fp32" or "bf16": the dtype weights are held in
  std::string device = "cpu";
  std::int64_t prompt_tokens = 16, new_tokens = 128, runs = 5, warmup = 1;
  std::uint64_t seed = 0;
};

void run_generate_bench(const GenerateBenchOptions& o);

}  // namespace ssmtune
