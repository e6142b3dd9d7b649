// ssmtune generate --model DIR [--adapter DIR] --prompt TEXT...: recurrent decoding (constant
// memory per token) with greedy or sampled tokens. --output text streams the prompt and its
// continuation to stdout byte for byte as they become final; ids and json print one line per
// prompt when it is done (docs/formats.md "What ssmtune generate prints").
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <limits>

#include "apps/ssmtune/commands.h"
#include "apps/ssmtune/option_checks.h"
#include "backend/backend.h"
#include "data/tokenizer.h"
#include "infer/generate.h"
#include "infer/decoder.h"
#include "model/weight_storage.h"
#include "peft/merge.h"

namespace ssmtune {

namespace {

struct GenerateArgs {
  std::string model, adapter;
  std::vector<std::string> prompts;
  std::string output = "text";  // text, ids or json
  std::string device = "cpu";
  std::string frozen_weights = "fp32";
  SamplingOptions sampling;
};

// Decoded text is bytes (a token may be a NUL or half a UTF-8 character): written exactly.
void print_bytes(const std::string& bytes) { std::fwrite(bytes.data(), 1, bytes.size(), stdout); }

std::string ids_line(const std::vector<std::int64_t>& ids) {
  std::string line;
  for (const std::int64_t id : ids) line += (line.empty() ? "" : " ") + std::to_string(id);
  return line + "\n";
}

// The fields docs/formats.md lists. JSON strings are UTF-8: bytes that are not become U+FFFD
// in "prompt" and "text" (the ids are exact).
std::string json_line(const std::string& prompt, const GenerationResult& r) {
  const nlohmann::json j = {{"prompt", prompt},
                            {"ids", r.token_ids},
                            {"text", r.text},
                            {"prompt_tokens", r.n_prompt_tokens},
                            {"stop_reason", r.stop_reason}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

void run_generate(const GenerateArgs& a) {
  check_sampling_options(a.sampling);
  std::unique_ptr<Backend> be = make_backend(a.device);
  const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(a.model);
  const LoadedModel m = load_model_with_adapter(
      a.model, a.adapter, *be, frozen_weights_dtype(a.frozen_weights, "--frozen-weights"));
  Decoder decoder(m.cfg, m.weights, *be);
  // The methods no weight holds apply in every recurrent step.
  decoder.set_scan_hook(m.scan_hook());
  decoder.set_hook(m.hook());
  decoder.set_input_hook(m.input_hook());
  for (const std::string& prompt : a.prompts) {
    GenerationResult r;
    if (a.output == "text") {
      print_bytes(prompt);
      r = generate(decoder, *tokenizer, prompt, a.sampling, [](const std::string& piece) {
        print_bytes(piece);
        std::fflush(stdout);
      });
      print_bytes("\n");
    } else {
      r = generate(decoder, *tokenizer, prompt, a.sampling);
      print_bytes(a.output == "ids" ? ids_line(r.token_ids) : json_line(prompt, r));
    }
    std::fflush(stdout);
    spdlog::debug("{} prompt tokens, {} generated, stop: {}", r.n_prompt_tokens,
                  r.token_ids.size(), r.stop_reason);
  }
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "generate",
      "Generate text from a model (and adapter) with recurrent decoding.\n"
      "Example: ssmtune generate --model models/base --adapter runs/x/adapter --prompt \"Q: \"");
  static GenerateArgs a;
  cmd->add_option("--model", a.model, "model directory (with tokenizer files)")->required();
  cmd->add_option("--device", a.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--adapter", a.adapter, "LoRA adapter directory, merged before decoding");
  cmd->add_option("--frozen-weights", a.frozen_weights,
                  "hold the base weights in fp32 or bf16 (half the memory; fp32 math)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  cmd->add_option("--prompt", a.prompts, "text to continue (repeatable: one result each)")
      ->required()
      ->allow_extra_args(false);
  cmd->add_option("--output", a.output,
                  "text: the prompt and its continuation, byte for byte; ids: the generated "
                  "token ids; json: one object per prompt (docs/formats.md)")
      ->check(CLI::IsMember({"text", "ids", "json"}))
      ->capture_default_str();
  cmd->add_option("--max-new-tokens", a.sampling.max_new_tokens, "tokens to generate at most")
      ->check(CLI::Range(std::int64_t(1), kMaxOptionSize))
      ->capture_default_str();
  const double inf = std::numeric_limits<double>::infinity();
  cmd->add_option("--temperature", a.sampling.temperature, "0 = greedy (default)")
      ->check(finite_in(0, inf))
      ->capture_default_str();
  cmd->add_option("--top-k", a.sampling.top_k, "sample from the k most likely tokens; 0 = off")
      ->check(CLI::Range(std::int64_t(0), std::numeric_limits<std::int64_t>::max()));
  cmd->add_option("--top-p", a.sampling.top_p, "nucleus sampling mass; 1 = off")
      ->check(finite_in(0, 1, /*lo_open=*/true));
  cmd->add_option("--seed", a.sampling.seed, "random seed for sampling")
      ->check(non_negative_integer());
  cmd->add_option("--stop", a.sampling.stop, "stop when the text contains this (repeatable)");
  cmd->callback([] { run_generate(a); });
}

}  // namespace ssmtune
