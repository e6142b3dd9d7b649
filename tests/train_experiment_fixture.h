// A small complete experiment for CLI tests: a 2-layer model (init_mamba_weights) with the
// byte-level BPE tokenizer fixture (data_scripts/make_tokenizer_fixtures.py), 48 prompt/completion
// training examples, 6 eval examples, and a config that exercises shuffling, LoRA dropout (the
// RNG), clipping, warmup and eval.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "io_test_util.h"
#include "model/mamba_init.h"

namespace ssmtune::test {

inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Every line of a run's metrics.jsonl, parsed.
inline std::vector<nlohmann::json> metrics_lines(const std::filesystem::path& run) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

// The numbers of metrics.jsonl that must not depend on interruptions (not timings).
inline std::vector<std::string> trajectory(const std::filesystem::path& run) {
  std::vector<std::string> out;
  for (nlohmann::json j : metrics_lines(run)) {
    for (const char* k : {"tokens_per_s", "step_s", "elapsed_s"}) j.erase(k);
    out.push_back(j.dump());
  }
  return out;
}

// configs/methods/*.json, sorted: one config per method of docs/methods.md.
inline std::vector<std::filesystem::path> method_configs() {
  const std::filesystem::path dir =
      std::filesystem::path(SSMTUNE_FIXTURES_DIR) / ".." / ".." / "configs" / "methods";
  std::vector<std::filesystem::path> configs;
  for (const auto& f : std::filesystem::directory_iterator(dir))
    if (f.path().extension() == ".json") configs.push_back(f.path());
  std::sort(configs.begin(), configs.end());
  return configs;
}

// A fixture model (tests/fixtures/<fixture>: config.json, model.safetensors,
// generation_config.json) under dir/model with the 12-token tokenizer of
// tests/fixtures/tokenizers/tiny_unk, and 8 pre-tokenized training sequences with ids below 12
// in dir/train.jsonl, which it returns: the method configs run on it (their quickstart model and
// data have a vocabulary the fixtures lack; prompt tuning's init_text encodes with tiny_unk).
inline std::filesystem::path make_fixture_experiment(const std::filesystem::path& dir,
                                                     const std::string& fixture) {
  namespace fs = std::filesystem;
  const fs::path fixtures(SSMTUNE_FIXTURES_DIR);
  fs::create_directories(dir / "model");
  for (const char* f : {"config.json", "model.safetensors", "generation_config.json"})
    fs::copy_file(fixtures / fixture / f, dir / "model" / f);
  fs::copy_file(fixtures / "tokenizers" / "tiny_unk" / "tokenizer.json",
                dir / "model" / "tokenizer.json");
  std::ofstream train(dir / "train.jsonl");
  for (int i = 0; i < 8; ++i) {
    nlohmann::json ids = nlohmann::json::array();
    for (int t = 0; t < 6 + i % 3; ++t) ids.push_back(1 + (i * 5 + t * 3) % 11);
    train << nlohmann::json{{"input_ids", ids}}.dump() << "\n";
  }
  return dir / "train.jsonl";
}

// The experiment that trains a method config's "peft" section with its learning rate on
// make_fixture_experiment's dir/model and train_file, into dir/run-<name>: `steps` steps of
// batches of 2, no checkpoints. SDT's warmup is cut to 1 step so the selection and a masked
// step happen.
inline nlohmann::json method_experiment(const std::filesystem::path& method,
                                        const std::filesystem::path& dir,
                                        const std::filesystem::path& train_file,
                                        std::int64_t steps = 2) {
  const std::string name = method.stem().string();
  const nlohmann::json m = nlohmann::json::parse(read_file(method));
  nlohmann::json cfg = {
      {"model", (dir / "model").string()},
      {"output_dir", (dir / ("run-" + name)).string()},
      {"seed", 1},
      {"data", {{"train", train_file.string()}, {"format", "tokens"}, {"max_length", 16}}},
      {"peft", m["peft"]},
      {"optimizer", {{"lr", m["optimizer"]["lr"]}}},
      {"training", {{"steps", steps}, {"batch_size", 2}, {"grad_accum", 1}}},
      {"checkpoint", {{"every", 0}}}};
  if (cfg["peft"].contains("sdt")) cfg["peft"]["sdt"]["warmup_steps"] = 1;
  return cfg;
}

struct Experiment {
  TempDir dir;
  std::filesystem::path config;

  // tokenizer: a directory of tests/fixtures/tokenizers ("bpe": tokenizer.json, "sp":
  // SentencePiece tokenizer.model); its files are copied into the model directory.
  explicit Experiment(std::int64_t steps = 12, std::int64_t checkpoint_every = 3,
                      std::int64_t eval_every = 4, const std::string& tokenizer = "bpe") {
    const std::filesystem::path tok =
        std::filesystem::path(SSMTUNE_FIXTURES_DIR) / "tokenizers" / tokenizer;
    ssmtune::ModelConfig c;
    c.vocab_size = 1024;
    c.d_model = 32;
    c.n_layer = 2;
    c.d_inner = 64;
    c.d_state = 8;
    c.dt_rank = 2;
    std::vector<std::filesystem::path> tokenizer_files;
    for (const auto& f : std::filesystem::directory_iterator(tok)) tokenizer_files.push_back(f);
    ssmtune::write_mamba_model_dir((dir / "model").string(), c, ssmtune::init_mamba_weights(c, 1),
                                   false, tokenizer_files);
    std::ofstream train(dir / "train.jsonl"), eval(dir / "eval.jsonl");
    const char* words[] = {"alpha", "beta", "gamma", "delta", "red", "green"};
    for (int i = 0; i < 48; ++i)
      train << nlohmann::json{{"prompt",
                               "Say " + std::string(words[i % 6]) + " " + std::to_string(i)},
                              {"completion", std::string(" ") + words[(i * 7) % 6]}}
                   .dump()
            << "\n";
    for (int i = 0; i < 6; ++i)
      eval << nlohmann::json{{"prompt", "Say " + std::string(words[i])}, {"completion", " ok"}}
                  .dump()
           << "\n";
    nlohmann::json cfg = {
        {"model", "model"},
        {"output_dir", (dir / "run").string()},
        {"seed", 5},
        {"data", {{"train", "train.jsonl"}, {"eval", "eval.jsonl"}, {"max_length", 24}}},
        {"peft",
         {{"lora",
           {{"targets", {"in_proj", "x_proj.B", "out_proj"}}, {"rank", 2}, {"dropout", 0.1}}}}},
        {"optimizer", {{"lr", 5e-3}, {"weight_decay", 0.01}, {"grad_clip", 0.5}}},
        {"schedule", {{"type", "cosine"}, {"warmup_steps", 2}}},
        {"training", {{"steps", steps}, {"batch_size", 4}, {"grad_accum", 2}}},
        {"eval", {{"every", eval_every}, {"metrics", {"loss"}}}},
        {"checkpoint", {{"every", checkpoint_every}, {"keep", 2}}}};
    config = dir / "exp.json";
    std::ofstream(config) << cfg.dump(2);
  }

  std::filesystem::path run_dir() const { return dir / "run"; }
  std::string train_args(const std::string& extra = "") const {
    return "--quiet train '" + config.string() + "' " + extra;
  }
};

}  // namespace ssmtune::test
