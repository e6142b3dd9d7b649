#include "apps/ssmtune/bench_generate.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include <omp.h>
#include <sys/resource.h>

#include "apps/ssmtune/bench_model.h"
#include "apps/ssmtune/machine_rates.h"
#include "backend/backend.h"
#include "core/rng.h"
#include "infer/decoder.h"
#include "infer/sampling.h"

namespace ssmtune {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

void run_generate_bench(const GenerateBenchOptions& o) {
  const DType held = o.frozen_weights == "bf16" ? DType::BF16 : DType::F32;
  BenchModel model = load_bench_model(o.model_dir, o.config_file, held, o.seed);
  auto be = make_backend(o.device, "fp32");
  Decoder decoder(model.cfg, model.w, *be);

  Rng rng = Rng::for_stream(o.seed, stream_id("bench-tokens"));
  std::vector<std::int64_t> prompt(std::size_t(o.prompt_tokens));
  for (std::int64_t& id : prompt) id = std::int64_t(rng.below(std::uint64_t(model.cfg.vocab_size)));
  const SamplingOptions greedy;  // temperature 0: the argmax, no draw
  Rng no_draw(0);

  // One run: the prompt's logits give the first new token; each decode step feeds the last
  // token and gives the next, so N tokens take the prefill and N - 1 steps.
  // One more run after the timed ones fills the op table of the decode steps (on a GPU the
  // profile waits for every op, so it is kept out of the timed runs everywhere).
  std::vector<double> run_seconds, prefill_seconds, step_seconds;
  OpProfile decode_profile;
  double profiled_decode_seconds = 0;
  for (std::int64_t r = 0; r < o.warmup + o.runs + 1; ++r) {
    const bool profiled = r == o.warmup + o.runs;
    decoder.reset();
    const auto t0 = std::chrono::steady_clock::now();
    std::int64_t id = sample_token(decoder.prefill(prompt), greedy, no_draw);
    const double prefill = seconds_since(t0);
    be->set_profile(profiled ? &decode_profile : nullptr);
    for (std::int64_t i = 1; i < o.new_tokens; ++i) id = sample_token(decoder.step(id), greedy, no_draw);
    be->synchronize();
    be->set_profile(nullptr);
    const double total = seconds_since(t0);
    if (profiled) profiled_decode_seconds = total - prefill;
    if (r < o.warmup || profiled) continue;
    run_seconds.push_back(total);
    prefill_seconds.push_back(prefill);
    if (o.new_tokens > 1) step_seconds.push_back((total - prefill) / double(o.new_tokens - 1));
  }

  const double run = median(run_seconds);
  std::printf("model         %s (%s)\n", model.label.c_str(), describe_model(model.cfg).c_str());
  if (o.device == "cpu")
    std::printf("backend       cpu, %d threads, float32, weights held in %s\n",
                omp_get_max_threads(), held == DType::BF16 ? "bf16" : "fp32");
  else
    std::printf("backend       %s, float32\n", be->name().c_str());
  std::printf("generate      batch 1, prompt %lld tokens, %lld new tokens (greedy): the prefill "
              "and %lld decode steps\n",
              (long long)o.prompt_tokens, (long long)o.new_tokens, (long long)(o.new_tokens - 1));
  std::printf("time/run      median %.4f s over %lld runs (min %.4f, max %.4f)\n", run,
              (long long)o.runs, *std::min_element(run_seconds.begin(), run_seconds.end()),
              *std::max_element(run_seconds.begin(), run_seconds.end()));
  std::printf("tokens/s      %.1f\n", double(o.new_tokens) / run);
  std::printf("prefill       median %.4f s (%.1f prompt tokens/s)\n", median(prefill_seconds),
              double(o.prompt_tokens) / median(prefill_seconds));
  const double step = step_seconds.empty() ? 0 : median(step_seconds);
  if (!step_seconds.empty())
    std::printf("decode step   median %.3f ms (%.1f tokens/s)\n", 1e3 * step, 1.0 / step);
  if (o.new_tokens > 1) {
    // What the ops do not cover: sampling, and the host work between ops (allocation,
    // dispatch), which a decode step's small ops make visible.
    std::printf("\nops over %lld decode steps (one more run)\n", (long long)(o.new_tokens - 1));
    print_op_table(decode_profile);
    std::printf("outside ops   %.4f s of the run's %.4f s of decode steps\n",
                profiled_decode_seconds - op_seconds(decode_profile), profiled_decode_seconds);
  }
  const double bytes = weight_bytes(model.cfg, model.w);
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  std::printf("memory        peak resident %.1f MiB (process); weights %.1f MiB\n",
              double(usage.ru_maxrss) / 1024.0, bytes / 1048576.0);
  // A decode step is a matrix-vector product per weight matrix: every weight is read once per
  // token, so its floor is the weights' bytes at the machine's memory bandwidth (the states it
  // reads and writes, d_inner x d_state per layer, are left out: a few percent at most).
  if (o.device == "cpu" && step > 0) {
    const MachineRates rates = measure_rates(*be);
    const double floor = bytes / rates.bytes_per_s;
    std::printf("\nfloor         %.4g s/token = weights %.4g GB at %.1f GB/s; decode step / "
                "floor %.2f\n",
                floor, bytes / 1e9, rates.bytes_per_s / 1e9, step / floor);
  }
}

}  // namespace ssmtune
