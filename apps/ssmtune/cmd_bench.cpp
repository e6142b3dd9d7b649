// ssmtune bench --model DIR [--device cuda]: tokens/s of a full training step (forward, loss,
// backward of every parameter; with --peft FILE a PEFT method's whole optimizer step, AdamW
// included, as `ssmtune train` runs it) on this machine, with the time per op, the GFLOP/s the matrix
// products reach and the memory bandwidth the selective scan reaches (and its fraction of the
// GPU's peak), and the peak memory the step took. With --generate N: greedy generation's
// tokens/s instead (bench_generate.h).
// Performance targets live here and in docs/benchmarks.md, never in unit tests.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <optional>

#include <omp.h>
#include <sys/resource.h>
#include <spdlog/spdlog.h>

#include "apps/ssmtune/bench_generate.h"
#include "apps/ssmtune/bench_model.h"
#include "apps/ssmtune/commands.h"
#include "apps/ssmtune/machine_rates.h"
#include "apps/ssmtune/option_checks.h"
#include "backend/backend.h"
#include "backend/cpu/blas_select.h"
#include "backend/cuda/device_info.h"
#include "io/json_file.h"
#include "core/rng.h"
#include "model/model_config.h"
#include "model/model_init.h"
#include "model/causal_lm.h"
#include "model/model_weights.h"
#include "peft/peft_model.h"
#include "train/adamw.h"
#include "train/experiment_config.h"
#include "train/train_step.h"

namespace ssmtune {

namespace {

namespace fs = std::filesystem;

struct BenchOptions {
  std::string model_dir;
  std::string config_file;  // a config.json to benchmark with random weights instead
  std::int64_t batch = 4, seq_len = 256, steps = 5, warmup = 1, scan_chunk = 64;
  std::uint64_t seed = 0;
  std::string device = "cpu";
  std::string matmul = "fp32";
  // "fp32" or "bf16": the base is frozen (no weight gradients, as under a PEFT method) and held
  // in this dtype; empty: every parameter gets a gradient.
  std::string frozen_weights;
  // An experiment config whose "peft" section to train (other sections are not read), e.g. a
  // configs/methods/ file: the step is then train_step's (train/train_step.h).
  std::string peft_file;
  std::string recompute = "none";  // training.recompute
  std::int64_t generate = 0;  // > 0: time greedy generation of this many tokens instead
};

// Bytes one selective scan must move between memory and the chip per token, float32: forward
// reads u, delta (E each), B, C (N each) and writes y (E), plus a saved (E, N) state per chunk;
// backward reads u, delta, dy, B, C and the saved states and writes du, ddelta, dB, dC. What a
// kernel moves beyond this (partial sums, re-reads) counts against its achieved bandwidth.
double scan_bytes_per_token(const ModelConfig& c, std::int64_t chunk, bool backward) {
  const double E = double(c.d_inner), N = double(c.d_state), saved = 4.0 * E * N / double(chunk);
  return backward ? 4.0 * (5 * E + 4 * N) + saved : 4.0 * (3 * E + 2 * N) + saved;
}

// Mamba-2's chunked SSD (docs/models.md "Mamba-2 SSD scan"), per token of one layer, float32,
// chunk Q = min(chunk_size, L), H heads of P channels, G groups of N states. Bytes: forward reads
// x (H P), dt (H), B, C (G N each) and writes y (H P), one saved (H, P, N) state per chunk and
// the C B^T workspace (G Q, written and read); backward reads x, dt, B, C, dy and the saved
// states, writes dx, ddt, dB, dC, and the state gradients and dCB (written and read). FLOPs:
// forward C B^T (G Q N, causal half), Y_diag = M X (H Q P), chunk states and Y_off (2 H P N
// multiply-adds each); backward twice the forward's products. The cumulative sums, the carry
// across chunks and the exp of the decays are left out (O(H) per token).
struct SsdCost {
  double bytes_per_token, flops_per_token;
};
SsdCost ssd_cost_per_token(const ModelConfig& c, std::int64_t seq_len, bool backward) {
  const double H = double(c.ssm_heads), P = double(c.ssm_head_dim), N = double(c.d_state),
               G = double(c.n_groups), Q = double(std::min(c.chunk_size, seq_len));
  const double states = H * P * N / Q, cb = 2 * G * Q;
  const double forward_flops = G * Q * N + H * Q * P + 4 * H * P * N;
  if (!backward)
    return {4.0 * (2 * H * P + H + 2 * G * N + states + cb), forward_flops};
  return {4.0 * (4 * H * P + 2 * H + 4 * G * N + 3 * states + 2 * cb), 2 * forward_flops};
}

// bw (bytes/s) as a fraction of the GPU's peak memory bandwidth.
std::string bandwidth_share(double bw, const CudaDevices& gpus) {
  if (gpus.peak_bandwidth <= 0) return "(peak known for GPUs only)";
  return std::to_string(100.0 * bw / gpus.peak_bandwidth).substr(0, 5) + "% of " +
         std::to_string(int(gpus.peak_bandwidth / 1e9)) + " GB/s";
}

// The SSD ops' bytes and FLOPs per token (ssd_cost_per_token) at the rate the profile measured.
void print_ssd_table(const ModelConfig& cfg, std::int64_t seq_len, double tokens,
                     const OpProfile& profile, const CudaDevices& gpus) {
  std::printf("\n%-16s %12s %12s %10s %10s %s\n", "ssd", "bytes/token", "FLOP/token", "GB/s",
              "GFLOP/s", "of peak bandwidth");
  for (const bool backward : {false, true}) {
    const auto it = profile.ops.find(backward ? "ssd_backward" : "ssd_forward");
    if (it == profile.ops.end() || it->second.seconds <= 0) continue;
    const SsdCost cost = ssd_cost_per_token(cfg, seq_len, backward);
    const double per_s = tokens * double(it->second.calls) / it->second.seconds;
    const double bw = cost.bytes_per_token * per_s;
    const std::string share = bandwidth_share(bw, gpus);
    std::printf("%-16s %12.0f %12.0f %10.1f %10.1f %s\n", backward ? "backward" : "forward",
                cost.bytes_per_token, cost.flops_per_token, bw / 1e9,
                cost.flops_per_token * per_s / 1e9, share.c_str());
  }
}

// The bytes the step's scans must move (scan_bytes_per_token or ssd_cost_per_token), summed
// over the profiled calls and divided by the profiled steps.
double scan_bytes_per_step(const ModelConfig& cfg, const BenchOptions& o, double tokens,
                           const OpProfile& profile, std::int64_t steps) {
  const bool ssd = cfg.is_mamba2();
  double bytes = 0;
  for (const bool backward : {false, true}) {
    const std::string op = std::string(ssd ? "ssd" : "scan") + (backward ? "_backward" : "_forward");
    const auto it = profile.ops.find(op);
    if (it == profile.ops.end()) continue;
    const double per_token = ssd ? ssd_cost_per_token(cfg, o.seq_len, backward).bytes_per_token
                                 : scan_bytes_per_token(cfg, o.scan_chunk, backward);
    bytes += per_token * tokens * double(it->second.calls);
  }
  return bytes / double(steps);
}

void run_bench(const BenchOptions& o) {
  const DType held = o.frozen_weights == "bf16" ? DType::BF16 : DType::F32;
  BenchModel model = load_bench_model(o.model_dir, o.config_file, held, o.seed);
  const ModelConfig& cfg = model.cfg;
  ModelWeights& w = model.w;
  const bool peft_on = !o.peft_file.empty();
  const PeftConfig peft_cfg = peft_on ? parse_peft_section(read_python_json_file(o.peft_file),
                                                           o.peft_file,
                                                           fs::path(o.peft_file).parent_path().string())
                                      : PeftConfig{};
  // A frozen base has no parameter gradients (an empty ModelWeights: CausalLM::backward).
  ModelWeights grads = o.frozen_weights.empty() && !peft_on ? zeros_like_params(cfg, DType::F32)
                                                            : ModelWeights{};
  auto be = make_backend(o.device, o.matmul);
  std::optional<PeftModel> peft;
  if (peft_on) peft.emplace(cfg, w, peft_cfg, *be, o.seed);

  Rng rng = Rng::for_stream(o.seed, stream_id("bench-tokens"));
  Tensor ids = Tensor::empty({o.batch, o.seq_len}, DType::I64);
  for (std::int64_t i = 0; i < ids.numel(); ++i)
    ids.data<std::int64_t>()[i] = std::int64_t(rng.below(std::uint64_t(cfg.vocab_size)));
  const Tensor targets = shift_labels(ids);

  CausalLM lm(cfg, peft ? peft->weights() : w, *be, o.scan_chunk);
  lm.set_recompute_mixers(o.recompute == "mixers");
  // The router loss is part of a Jamba training step when its config asks for it.
  if (cfg.output_router_logits) lm.set_router_aux_coef(cfg.router_aux_loss_coef);
  std::optional<AdamW> optimizer;
  Batch batch;  // every token a label: train_step shifts them as the loss does
  if (peft) {
    lm.set_hook(peft->hook());
    lm.set_scan_hook(peft->scan_hook());
    lm.set_input_hook(peft->input_hook());
    optimizer.emplace(OptimizerConfig{}, peft->trainables(), *be);
    batch.input_ids = ids;
    batch.labels = ids;
    batch.n_loss_tokens = o.batch * (o.seq_len - 1);
  }
  OpProfile profile;
  // A GPU's profile waits for every op (so each op's time is its own), which slows the step:
  // there the timed steps run unprofiled and one more step fills the op table.
  const bool profile_apart = be->device() != Device::CPU;
  std::vector<double> step_seconds;
  std::int64_t step_number = 0;
  const auto step = [&] {
    if (peft) {  // the learning rate and the clip only change values, not the work
      train_step(lm, *peft, *optimizer, {batch}, 1e-4, 1.0, ++step_number);
    } else {
      lm.forward_for_training(ids);
      lm.loss_and_backward(targets, grads);
    }
    be->synchronize();
  };
  for (std::int64_t s = 0; s < o.warmup + o.steps; ++s) {
    const bool measured = s >= o.warmup;
    be->set_profile(measured && !profile_apart ? &profile : nullptr);
    const auto t0 = std::chrono::steady_clock::now();
    step();
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (measured) step_seconds.push_back(sec);
  }
  if (profile_apart) {
    be->set_profile(&profile);
    step();
  }
  be->set_profile(nullptr);
  const std::int64_t profiled_steps = profile_apart ? 1 : o.steps;

  const double tokens = double(o.batch * o.seq_len);
  const double med = median(step_seconds);
  std::printf("model         %s (%s)\n", model.label.c_str(), describe_model(cfg).c_str());
  const CudaDevices gpus = o.device == "cuda" ? query_cuda_devices() : CudaDevices{};
  if (o.device == "cuda") {
    std::printf("backend       cuda, %s, float32, cuBLAS with %s inputs\n", gpus.detail.c_str(),
                o.matmul.c_str());
  } else {
    std::printf("backend       %s, %d threads, float32\n", be->name().c_str(),
                omp_get_max_threads());
    std::printf("blas          %s\n", cpu::blas_description().c_str());
  }
  std::printf("step          batch %lld x seq_len %lld = %.0f tokens, forward + backward"
              "%s%s%s\n",
              (long long)o.batch, (long long)o.seq_len, tokens,
              o.recompute == "mixers" ? " (mixers recomputed)" : "",
              peft ? (" + AdamW, " + o.peft_file + "'s peft").c_str() : "",
              o.frozen_weights.empty() ? ""
                                       : (", base frozen in " + o.frozen_weights).c_str());
  if (peft)
    for (const std::string& line : peft->summary()) std::printf("peft          %s\n", line.c_str());
  std::printf("time/step     median %.4f s over %lld steps (min %.4f, max %.4f)\n", med,
              (long long)o.steps, *std::min_element(step_seconds.begin(), step_seconds.end()),
              *std::max_element(step_seconds.begin(), step_seconds.end()));
  std::printf("tokens/s      %.1f\n", tokens / med);
  // Peak memory: the process's resident high-water mark (weights, gradients, activations,
  // libraries) on the CPU; on a GPU also the allocator's high-water mark of device memory.
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const double mib = 1024.0 * 1024.0;
  double grad_bytes = weight_bytes(cfg, grads);
  if (peft)
    for (const TrainableParam& p : peft->trainables()) grad_bytes += double(p.grad.nbytes());
  std::printf("memory        peak resident %.1f MiB (process); weights %.1f MiB, gradients %.1f MiB\n",
              double(usage.ru_maxrss) * 1024.0 / mib, weight_bytes(cfg, w) / mib,
              grad_bytes / mib);
  if (be->peak_device_bytes() > 0)
    std::printf("device memory peak %.1f MiB in use (allocator high-water mark)\n",
                double(be->peak_device_bytes()) / mib);
  std::printf("\nops over %lld profiled step(s)\n", (long long)profiled_steps);
  print_op_table(profile);
  // The floor (docs/benchmarks.md "The floor"): what the step would take if its matrix
  // products ran at the machine's sgemm rate and its scans moved their bytes at the machine's
  // memory bandwidth, with nothing else costing time. A CPU-side figure: on a GPU the profile
  // is of one unmeasured step and the peaks are the device's.
  if (o.device == "cpu") {
    const MachineRates rates = measure_rates(*be);
    const auto gemm = profile.ops.find("gemm");
    const double gemm_flops =
        gemm == profile.ops.end() ? 0 : gemm->second.flops / double(profiled_steps);
    const double scan_bytes = scan_bytes_per_step(cfg, o, tokens, profile, profiled_steps);
    const double floor = gemm_flops / rates.flops_per_s + scan_bytes / rates.bytes_per_s;
    std::printf("\nfloor         %.4g s/step = GEMM %.4g GFLOP at %.1f GFLOP/s + scan %.4g GB at "
                "%.1f GB/s; step / floor %.2f\n",
                floor, gemm_flops / 1e9, rates.flops_per_s / 1e9, scan_bytes / 1e9,
                rates.bytes_per_s / 1e9, med / floor);
  }
  // Every scan call of the step has the same shape: (batch x seq_len) tokens.
  if (cfg.is_mamba2()) {
    print_ssd_table(cfg, o.seq_len, tokens, profile, gpus);
    return;
  }
  if (!profile.ops.count("scan_forward") && !profile.ops.count("scan_backward")) return;
  std::printf("\n%-16s %12s %10s %s\n", "scan", "bytes/token", "GB/s", "of peak");
  for (const bool backward : {false, true}) {
    const auto it = profile.ops.find(backward ? "scan_backward" : "scan_forward");
    if (it == profile.ops.end() || it->second.seconds <= 0) continue;
    const double per_token = scan_bytes_per_token(cfg, o.scan_chunk, backward);
    const double bw = per_token * tokens * double(it->second.calls) / it->second.seconds;
    const std::string share = bandwidth_share(bw, gpus);
    std::printf("%-16s %12.0f %10.1f %s\n", backward ? "backward" : "forward", per_token,
                bw / 1e9, share.c_str());
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "bench", "Measure training-step throughput (tokens/s) and per-op time on this machine.\n"
               "Example: ssmtune bench --model tests/fixtures/mamba-sharded-bf16 --batch 4 --seq-len 256");
  static BenchOptions o;
  auto* model = cmd->add_option("--model", o.model_dir, "model directory");
  auto* config = cmd->add_option("--config", o.config_file,
                                 "a model config.json: benchmark its shapes with random weights");
  model->excludes(config);
  config->excludes(model);
  cmd->add_option("--batch", o.batch, "sequences per step")->check(CLI::Range(1, 4096));
  cmd->add_option("--seq-len", o.seq_len, "tokens per sequence")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--steps", o.steps, "measured steps (the median is reported)")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--warmup", o.warmup, "unmeasured steps first")->check(CLI::Range(0, 1000));
  cmd->add_option("--scan-chunk", o.scan_chunk, "selective-scan chunk length")
      ->check(CLI::Range(1, 1 << 20));
  auto* recompute = cmd->add_option("--recompute", o.recompute,
                  "none, or mixers: run each mixer's forward again in backward instead of "
                  "keeping its activations (training.recompute)")
      ->check(CLI::IsMember({"none", "mixers"}));
  cmd->add_option("--seed", o.seed, "seed of the random token ids")->check(non_negative_integer());
  cmd->add_option("--device", o.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--matmul", o.matmul, "fp32, or bf16 inputs (cuda only)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  cmd->add_option("--frozen-weights", o.frozen_weights,
                  "fp32 or bf16: freeze the base (no weight gradients, as under a PEFT method) "
                  "and hold it in this dtype (default: every parameter gets a gradient)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  auto* peft = cmd->add_option("--peft", o.peft_file,
                  "an experiment config (e.g. configs/methods/lora-projections.json): time its "
                  "PEFT method's optimizer step, AdamW included");
  auto* generate = cmd->add_option(
      "--generate", o.generate,
      "time greedy generation of N new tokens (batch 1, the recurrent decoder) after a prompt "
      "of --seq-len random tokens, --steps runs, instead of a training step");
  generate->check(CLI::Range(1, 1 << 20))->excludes(peft)->excludes(recompute);
  cmd->callback([generate, batch = cmd->get_option("--batch"), matmul = cmd->get_option("--matmul")] {
    if (o.model_dir.empty() && o.config_file.empty())
      throw UsageError("bench: give --model DIR or --config CONFIG.json");
    if (generate->count() == 0) return run_bench(o);
    if (batch->count() && o.batch != 1)
      throw UsageError("bench --generate: --batch must be 1 (the decoder runs one sequence)");
    if (matmul->count() && o.matmul != "fp32")
      throw UsageError("bench --generate: --matmul bf16 is for training steps");
    run_generate_bench({o.model_dir, o.config_file, o.frozen_weights, o.device, o.seq_len,
                        o.generate, o.steps, o.warmup, o.seed});
  });
}

}  // namespace ssmtune
