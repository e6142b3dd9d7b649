// Writes the seed corpus of every fuzz target from the fixtures and the shipped configs, so no
// large corpus is committed: fuzz_seeds OUT_DIR [REPO_DIR]. OUT_DIR/<target>/ gets one file per
// seed, framed as the target reads it (fuzz_files.h). Adapter and checkpoint seeds are written
// by the library itself (PeftModel::save_adapter, write_checkpoint) for every method.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "fuzz_files.h"
#include "fuzz_setups.h"
#include "model/model_config.h"
#include "model/model_weights.h"
#include "peft/peft_model.h"
#include "train/adamw.h"
#include "train/checkpoint.h"

namespace {

namespace fs = std::filesystem;
using namespace ssmtune;

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return "";  // an absent file is an empty part
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The first n lines of a text file.
std::string head_lines(const fs::path& p, int n) {
  std::istringstream in(read_file(p));
  std::string out, line;
  for (int i = 0; i < n && std::getline(in, line); ++i) out += line + "\n";
  return out;
}

class Seeds {
 public:
  explicit Seeds(fs::path out) : out_(std::move(out)) {}
  void add(const std::string& target, const std::string& bytes) {
    fs::create_directories(out_ / target);
    const fs::path p = out_ / target / ("seed-" + std::to_string(count_[target]++));
    std::ofstream(p, std::ios::binary) << bytes;
  }

 private:
  fs::path out_;
  std::map<std::string, int> count_;
};

void safetensors_seeds(Seeds& s, const fs::path& fx) {
  for (const char* f :
       {"mamba-tiny/model.safetensors", "mamba2-odd/model-00001-of-00003.safetensors",
        "mamba-sharded-bf16/model-00004-of-00004.safetensors",
        "methods/dora_adapter/adapter_model.safetensors",
        "peft-lora-rs/adapter_init/adapter_model.safetensors"})
    s.add("safetensors", read_file(fx / f));
}

void config_json_seeds(Seeds& s, const fs::path& fx) {
  for (const auto& e : fs::directory_iterator(fx))
    if (fs::exists(e.path() / "config.json"))
      s.add("config_json", read_file(e.path() / "config.json"));
  for (const char* m : {"mamba-tiny", "mamba2-tiny", "mamba2-odd"})
    s.add("config_json", fuzz::join_files({read_file(fx / m / "config.json"),
                                           read_file(fx / m / "model.safetensors")}));
}

void experiment_config_seeds(Seeds& s, const fs::path& repo) {
  const fs::path configs = repo / "configs";
  s.add("experiment_config", read_file(configs / "quickstart.json"));
  s.add("experiment_config", read_file(configs / "jamba-example.json"));
  for (const auto& e : fs::directory_iterator(configs / "methods"))
    if (e.path().extension() == ".json") s.add("experiment_config", read_file(e.path()));
  s.add("experiment_config",
        fuzz::join_files({read_file(configs / "quickstart.json"), "peft.lora.rank=16",
                          "data.train=x.jsonl", "optimizer.betas=[0.9,0.95]", "training.epochs=2",
                          "peft.sdt.warmup_steps=4"}));
}

void jsonl_seeds(Seeds& s, const fs::path& repo) {
  // The settings byte (fuzz_jsonl.cpp): format in bits 0-2 (0 auto, 1 text, 2 prompt/completion,
  // 3 tokens, 4 classification), 8 packing, 16 add_eos, 32 truncate, bits 6-7 max_length.
  const std::string classes = head_lines(repo / "configs/quickstart/data/train.jsonl", 12);
  const std::string text =
      "{\"text\": \"Hello world\"}\n{\"text\": \"caf\\u00e9 \\ud83d\\ude00\"}\n";
  const std::string pc =
      "{\"prompt\": \"2+2=\", \"completion\": \" 4\"}\n\n{\"prompt\": \"a\", "
      "\"completion\": \"b\", \"extra\": 1}\n";
  const std::string tokens =
      "{\"input_ids\": [1, 2, 3], \"labels\": [-100, 2, 3]}\n"
      "{\"input_ids\": [5, 6]}\n";
  const std::pair<int, const std::string*> seeds[] = {
      {0x40 | 16 | 4, &classes}, {0x80 | 0, &classes},
      {0x40 | 16 | 1, &text},    {0x40 | 8 | 1, &text},
      {0x80 | 2, &pc},           {0x00 | 32 | 2, &pc},
      {0x40 | 3, &tokens},       {0x40 | 8 | 16 | 3, &tokens},
      {0x00 | 32 | 16, &text}};
  for (const auto& [byte, lines] : seeds) s.add("jsonl", std::string(1, char(byte)) + *lines);
}

void tokenizer_seeds(Seeds& s, const fs::path& fx) {
  const std::string text = "Hello world, caf\xc3\xa9 <|endoftext|> \xf0\x9f\x98\x80  tabs\t\n";
  for (const char* d : {"tokenizers/bpe", "tokenizers/tiny_fallback", "tokenizers/tiny_unk"})
    s.add("tokenizer_json",
          fuzz::join_files({read_file(fx / d / "tokenizer.json"),
                            read_file(fx / d / "tokenizer_config.json"), "", text}));
  s.add("sentencepiece",
        fuzz::join_files({read_file(fx / "tokenizers/sp/tokenizer.model"), "", text}));
  s.add("sentencepiece", read_file(fx / "tokenizers/sp/tokenizer.model"));
}

// An adapter directory of fixture base model `model`, as the adapter target frames it.
void add_adapter(Seeds& s, const std::string& model, const fs::path& dir) {
  std::vector<std::string> parts = {model};
  for (const auto& n : fuzz::kAdapterFiles) parts.push_back(read_file(dir / n));
  s.add("adapter_dir", fuzz::join_files(parts));
}

void adapter_and_checkpoint_seeds(Seeds& s, const fs::path& fx) {
  add_adapter(s, "mamba-tiny", fx / "peft-lora/adapter_init");
  add_adapter(s, "mamba-tiny bf16", fx / "peft-lora-rs/adapter_init");
  add_adapter(s, "mamba-tiny", fx / "methods/dora_adapter");
  add_adapter(s, "jamba-tiny", fx / "peft-lora-jamba/adapter_init");
  add_adapter(s, "mamba2-tiny", fx / "peft-lora-mamba2/adapter_init");

  const std::unique_ptr<Backend> be = make_cpu_backend();
  const std::string model_dir = (fx / fuzz::kBaseModels[0]).string();
  const ModelConfig cfg = load_model_config(model_dir);
  const std::vector<PeftConfig> runs = fuzz::checkpoint_peft_configs();
  const fuzz::ScratchDir scratch;
  for (std::size_t i = 0; i < runs.size(); ++i) {
    ModelWeights base = load_model_weights(model_dir, cfg);
    PeftModel peft(cfg, base, runs[i], *be, /*seed=*/i);
    AdamW optimizer(OptimizerConfig{}, peft.trainables(), *be);
    const fs::path adapter = scratch.path() / ("adapter-" + std::to_string(i));
    fs::create_directories(adapter);
    peft.save_adapter(adapter, model_dir, {});
    add_adapter(s, fuzz::kBaseModels[0], adapter);
    fs::create_directories(scratch.path() / ("run-" + std::to_string(i)));
    TrainerState state;
    state.config_hash = "0123abcd";
    const fs::path ckpt = write_checkpoint(scratch.path() / ("run-" + std::to_string(i)), state,
                                           peft, optimizer, model_dir, 0);
    std::vector<std::string> files;
    for (const auto& n : fuzz::checkpoint_files()) files.push_back(read_file(ckpt / n));
    s.add("checkpoint", std::string(1, char(i)) + fuzz::join_files(files));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: fuzz_seeds OUT_DIR [REPO_DIR]\n");
    return 2;
  }
  const fs::path repo = argc > 2 ? fs::path(argv[2]) : fuzz::fixtures_dir() / "../..";
  const fs::path fx = repo / "tests/fixtures";
  try {
    Seeds s(argv[1]);
    safetensors_seeds(s, fx);
    config_json_seeds(s, fx);
    experiment_config_seeds(s, repo);
    jsonl_seeds(s, repo);
    tokenizer_seeds(s, fx);
    adapter_and_checkpoint_seeds(s, fx);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
