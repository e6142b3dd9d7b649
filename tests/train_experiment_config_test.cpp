// The experiment config (docs/config.md): defaults, a full config, every kind of error (all exit
// code 2 and naming the file and the dotted key), --set overrides, path resolution, the resume
// hash and the effective config's round trip.
#include <catch2/catch.hpp>
#include <filesystem>

#include "io_test_util.h"
#include "train/experiment_config.h"

using namespace ssmtune;
using nlohmann::json;
using ssmtune::test::TempDir;
using ssmtune::test::write_bytes;

namespace {

ExperimentConfig parse(const json& j) { return parse_experiment_config(j, "c/exp.json", "/cfg"); }

// `fn` must throw a UsageError (exit code 2) whose one-line message holds every fragment.
void require_usage_error(const std::function<void()>& fn,
                         std::initializer_list<std::string> fragments) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    INFO("error message: " << msg);
    CHECK(e.exit_code() == 2);
    CHECK(dynamic_cast<const UsageError*>(&e) != nullptr);
    CHECK(msg.find('\n') == std::string::npos);
    for (const auto& f : fragments) CHECK_THAT(msg, Catch::Contains(f));
    return;
  }
  FAIL("expected a UsageError containing \"" << *fragments.begin() << "\"");
}

void require_config_error(const json& j, std::initializer_list<std::string> fragments) {
  require_usage_error([&] { parse(j); }, fragments);
}

// {"model": "m"} with `value` put at the dotted `key`.
json with(const std::string& key, const json& value, json j = {{"model", "m"}}) {
  apply_override(j, key + "=" + value.dump());
  return j;
}

// Every field of two configs, compared one by one (the struct has no operator==).
void require_same(const ExperimentConfig& a, const ExperimentConfig& b) {
  CHECK(a.model == b.model);
  CHECK(a.output_dir == b.output_dir);
  CHECK(a.seed == b.seed);
  CHECK(a.data.train == b.data.train);
  CHECK(a.data.eval == b.data.eval);
  CHECK(a.data.format == b.data.format);
  CHECK(a.data.max_length == b.data.max_length);
  CHECK(a.data.too_long == b.data.too_long);
  CHECK(a.data.packing == b.data.packing);
  CHECK(a.data.shuffle == b.data.shuffle);
  CHECK(a.data.add_eos == b.data.add_eos);
  CHECK(a.data.labels == b.data.labels);
  REQUIRE(a.peft.lora.has_value() == b.peft.lora.has_value());
  if (a.peft.lora) {
    CHECK(a.peft.lora->targets == b.peft.lora->targets);
    CHECK(a.peft.lora->rank == b.peft.lora->rank);
    CHECK(a.peft.lora->alpha == b.peft.lora->alpha);
    CHECK(a.peft.lora->dropout == b.peft.lora->dropout);
    CHECK(a.peft.lora->rslora == b.peft.lora->rslora);
    CHECK(a.peft.lora->scale == b.peft.lora->scale);
    CHECK(a.peft.lora->init == b.peft.lora->init);
    CHECK(a.peft.lora->dora == b.peft.lora->dora);
  }
  CHECK(a.peft.full == b.peft.full);
  CHECK(a.peft.initial_state == b.peft.initial_state);
  CHECK(a.peft.state_offset == b.peft.state_offset);
  CHECK(a.peft.init_from == b.peft.init_from);
  CHECK(a.optimizer.lr == b.optimizer.lr);
  CHECK(a.optimizer.beta1 == b.optimizer.beta1);
  CHECK(a.optimizer.beta2 == b.optimizer.beta2);
  CHECK(a.optimizer.eps == b.optimizer.eps);
  CHECK(a.optimizer.weight_decay == b.optimizer.weight_decay);
  CHECK(a.optimizer.no_decay == b.optimizer.no_decay);
  CHECK(a.optimizer.grad_clip == b.optimizer.grad_clip);
  CHECK(a.schedule.type == b.schedule.type);
  CHECK(a.schedule.warmup_steps == b.schedule.warmup_steps);
  CHECK(a.schedule.warmup_ratio == b.schedule.warmup_ratio);
  CHECK(a.schedule.min_lr_ratio == b.schedule.min_lr_ratio);
  CHECK(a.training.steps == b.training.steps);
  CHECK(a.training.epochs == b.training.epochs);
  CHECK(a.training.batch_size == b.training.batch_size);
  CHECK(a.training.grad_accum == b.training.grad_accum);
  CHECK(a.training.log_every == b.training.log_every);
  CHECK(a.training.scan_chunk == b.training.scan_chunk);
  CHECK(a.training.threads == b.training.threads);
  CHECK(a.eval.every == b.eval.every);
  CHECK(a.eval.batch_size == b.eval.batch_size);
  CHECK(a.eval.max_examples == b.eval.max_examples);
  CHECK(a.eval.metrics == b.eval.metrics);
  CHECK(a.eval.max_new_tokens == b.eval.max_new_tokens);
  CHECK(a.eval.early_stopping.metric == b.eval.early_stopping.metric);
  CHECK(a.eval.early_stopping.patience == b.eval.early_stopping.patience);
  CHECK(a.eval.early_stopping.min_delta == b.eval.early_stopping.min_delta);
  CHECK(a.checkpoint.every == b.checkpoint.every);
  CHECK(a.checkpoint.keep == b.checkpoint.keep);
  CHECK(a.json == b.json);
}

// Every key set to something other than its default.
json full_config() {
  return json::parse(R"({
    "model": "../models/mamba-tiny",
    "output_dir": "runs/full",
    "seed": 1234,
    "data": {"train": "data/train.jsonl", "eval": "data/eval.jsonl",
             "format": "classification", "max_length": 128, "too_long": "truncate",
             "packing": true, "shuffle": false, "add_eos": false,
             "labels": ["negative", "positive"]},
    "peft": {"lora": {"targets": ["layers.0-3.in_proj.x", "x_proj.dt", "out_proj"], "rank": 16,
                      "alpha": 32, "dropout": 0.1, "rslora": true, "init": "gaussian",
                      "dora": true},
             "full": true, "init_from": "adapters/warm"},
    "optimizer": {"lr": 3e-4, "betas": [0.8, 0.95], "eps": 1e-6, "weight_decay": 0.01,
                  "no_decay": ["norm"], "grad_clip": 0.5},
    "schedule": {"type": "cosine", "warmup_steps": 0, "warmup_ratio": 0.1, "min_lr_ratio": 0.1},
    "training": {"steps": 500, "epochs": 3, "batch_size": 8, "grad_accum": 2, "log_every": 10,
                 "scan_chunk": 32, "threads": 4},
    "eval": {"every": 100, "batch_size": 16, "max_examples": 200,
             "metrics": ["loss", "accuracy"], "max_new_tokens": 8,
             "early_stopping": {"metric": "accuracy", "patience": 3, "min_delta": 0.001}},
    "checkpoint": {"every": 50, "keep": 0}
  })");
}

}  // namespace

TEST_CASE("a config with only a model gets every documented default", "[config]") {
  const ExperimentConfig c = parse({{"model", "m"}});
  CHECK(c.source == "c/exp.json");
  CHECK(c.model == "/cfg/m");
  CHECK(c.output_dir == "runs/exp");  // runs/<config file stem>
  CHECK(c.seed == 0);
  CHECK(c.data.train.empty());  // required by `train`, which checks it; not by the parser
  CHECK(c.data.eval.empty());
  CHECK(c.data.format == DataFormat::Auto);
  CHECK(c.data.max_length == 256);
  CHECK(c.data.too_long == TooLong::Error);
  CHECK(!c.data.packing);
  CHECK(c.data.shuffle);
  CHECK(c.data.add_eos);
  CHECK(c.data.labels.empty());
  REQUIRE(c.peft.lora.has_value());  // no "peft" section: LoRA with its defaults
  CHECK(c.peft.lora->targets == std::vector<std::string>{"in_proj", "out_proj"});
  CHECK(c.peft.lora->rank == 8);
  CHECK(c.peft.lora->alpha == 8);
  CHECK(c.peft.lora->dropout == 0);
  CHECK(!c.peft.lora->rslora);
  CHECK(c.peft.lora->init == "kaiming");
  CHECK(!c.peft.lora->dora);
  CHECK(!c.peft.full);
  CHECK(c.peft.init_from.empty());
  CHECK(c.optimizer.lr == 1e-3);
  CHECK(c.optimizer.beta1 == 0.9);
  CHECK(c.optimizer.beta2 == 0.999);
  CHECK(c.optimizer.eps == 1e-8);
  CHECK(c.optimizer.weight_decay == 0);
  CHECK(c.optimizer.no_decay == std::vector<std::string>{"norm", "bias", "A_log", "D"});
  CHECK(c.optimizer.grad_clip == 1.0);
  CHECK(c.schedule.type == ScheduleType::Linear);
  CHECK(c.schedule.warmup_steps == 0);
  CHECK(c.training.steps == 0);
  CHECK(c.training.epochs == 1);
  CHECK(c.training.batch_size == 4);
  CHECK(c.training.grad_accum == 1);
  CHECK(c.training.scan_chunk == 64);
  CHECK(c.training.threads == 0);
  CHECK(c.eval.every == 0);
  CHECK(c.eval.batch_size == 8);
  CHECK(c.eval.metrics == std::vector<std::string>{"loss"});
  CHECK(c.eval.max_new_tokens == 32);
  CHECK(c.eval.early_stopping.metric == "loss");
  CHECK(c.eval.early_stopping.patience == 0);
  CHECK(c.checkpoint.every == 0);
  CHECK(c.checkpoint.keep == 2);

  // The effective config spells out every default under the file's key names.
  CHECK(c.json["model"] == "/cfg/m");
  CHECK(c.json["output_dir"] == "runs/exp");
  CHECK(c.json["data"]["train"].is_null());
  CHECK(c.json["data"]["format"] == "auto");
  CHECK(c.json["peft"]["lora"]["targets"] == json::array({"in_proj", "out_proj"}));
  CHECK(c.json["peft"]["full"] == false);
  CHECK(c.json["peft"]["init_from"].is_null());
  CHECK(c.json["optimizer"]["betas"] == json::array({0.9, 0.999}));
  CHECK(c.json["schedule"]["type"] == "linear");
  CHECK(c.json["eval"]["early_stopping"]["patience"] == 0);
  CHECK(c.json["checkpoint"]["keep"] == 2);
  CHECK(c.json.size() == 10);
}

TEST_CASE("a config that sets every key parses into the matching fields", "[config]") {
  const ExperimentConfig c = parse(full_config());
  CHECK(c.model == "/models/mamba-tiny");
  CHECK(c.output_dir == "runs/full");
  CHECK(c.seed == 1234);
  CHECK(c.data.train == "/cfg/data/train.jsonl");
  CHECK(c.data.eval == "/cfg/data/eval.jsonl");
  CHECK(c.data.format == DataFormat::Classification);
  CHECK(c.data.max_length == 128);
  CHECK(c.data.too_long == TooLong::Truncate);
  CHECK(c.data.packing);
  CHECK(!c.data.shuffle);
  CHECK(!c.data.add_eos);
  CHECK(c.data.labels == std::vector<std::string>{"negative", "positive"});
  REQUIRE(c.peft.lora);
  CHECK(c.peft.lora->targets ==
        std::vector<std::string>{"layers.0-3.in_proj.x", "x_proj.dt", "out_proj"});
  CHECK(c.peft.lora->rank == 16);
  CHECK(c.peft.lora->alpha == 32);
  CHECK(c.peft.lora->dropout == 0.1);
  CHECK(c.peft.lora->rslora);
  CHECK(c.peft.lora->init == "gaussian");
  CHECK(c.peft.lora->dora);
  CHECK(c.peft.full);
  CHECK(c.peft.init_from == "/cfg/adapters/warm");
  CHECK(c.optimizer.lr == 3e-4);
  CHECK(c.optimizer.beta1 == 0.8);
  CHECK(c.optimizer.beta2 == 0.95);
  CHECK(c.optimizer.eps == 1e-6);
  CHECK(c.optimizer.weight_decay == 0.01);
  CHECK(c.optimizer.no_decay == std::vector<std::string>{"norm"});
  CHECK(c.optimizer.grad_clip == 0.5);
  CHECK(c.schedule.type == ScheduleType::Cosine);
  CHECK(c.schedule.warmup_ratio == 0.1);
  CHECK(c.schedule.min_lr_ratio == 0.1);
  CHECK(c.training.steps == 500);
  CHECK(c.training.epochs == 3);
  CHECK(c.training.batch_size == 8);
  CHECK(c.training.grad_accum == 2);
  CHECK(c.training.log_every == 10);
  CHECK(c.training.scan_chunk == 32);
  CHECK(c.training.threads == 4);
  CHECK(c.eval.every == 100);
  CHECK(c.eval.batch_size == 16);
  CHECK(c.eval.max_examples == 200);
  CHECK(c.eval.metrics == std::vector<std::string>{"loss", "accuracy"});
  CHECK(c.eval.max_new_tokens == 8);
  CHECK(c.eval.early_stopping.metric == "accuracy");
  CHECK(c.eval.early_stopping.patience == 3);
  CHECK(c.eval.early_stopping.min_delta == 0.001);
  CHECK(c.checkpoint.every == 50);
  CHECK(c.checkpoint.keep == 0);
}

TEST_CASE("the peft section turns on exactly the methods it names", "[config]") {
  CHECK(parse(with("peft.full", true)).peft.lora.has_value() == false);
  CHECK(parse(with("peft.full", true)).peft.full);
  const ExperimentConfig lora_defaults = parse(with("peft.lora", json::object()));
  REQUIRE(lora_defaults.peft.lora);
  CHECK(lora_defaults.peft.lora->rank == 8);
  const ExperimentConfig lora_off = parse(with("peft", {{"lora", nullptr}, {"full", true}}));
  CHECK(!lora_off.peft.lora);
  CHECK(lora_off.json["peft"]["lora"].is_null());

  for (const json& peft :
       {json::object(), json{{"lora", nullptr}, {"full", false}}, json{{"init_from", "a"}}}) {
    require_config_error(with("peft", peft), {"c/exp.json: field \"peft\": no method is enabled",
                                              "peft.lora", "peft.full"});
  }
  require_config_error(with("peft.lora", true),
                       {"c/exp.json: field \"peft.lora\": expected an object, got boolean true"});
}

TEST_CASE("a value of the wrong type names the file, the dotted key and what it found",
          "[config]") {
  require_config_error(with("optimizer.lr", "1e-3"),
                       {"c/exp.json: field \"optimizer.lr\": expected a positive number, got "
                        "string \"1e-3\""});
  require_config_error(with("training.batch_size", 4.5),
                       {"c/exp.json: field \"training.batch_size\": expected a positive integer, "
                        "got number 4.5"});
  require_config_error(with("data.packing", "yes"),
                       {"field \"data.packing\": expected true or false, got string \"yes\""});
  require_config_error(with("optimizer", 3),
                       {"c/exp.json: field \"optimizer\": expected an object, got number 3"});
  require_config_error(with("model", 7),
                       {"c/exp.json: field \"model\": expected a path (a string), got number 7"});
  require_config_error(with("peft.lora.targets", "in_proj"),
                       {"field \"peft.lora.targets\": expected an array of strings"});
  require_config_error(
      with("peft.lora.targets", json::array({"in_proj", 3})),
      {"field \"peft.lora.targets[1]\": expected a non-empty string, got number 3"});
  require_config_error(with("optimizer.betas", json::array({0.9})),
                       {"field \"optimizer.betas\": expected an array of two numbers"});
  require_config_error(json::array({1, 2}),
                       {"c/exp.json: expected a JSON object (an experiment config), got an array"});
}

TEST_CASE("a value out of its range names the range", "[config]") {
  const std::vector<std::pair<std::pair<std::string, json>, std::string>> cases = {
      {{"optimizer.lr", 0}, "field \"optimizer.lr\": expected a positive number, got number 0"},
      {{"optimizer.eps", -1e-8}, "field \"optimizer.eps\": expected a positive number"},
      {{"optimizer.betas", json::array({0.9, 1.0})},
       "field \"optimizer.betas[1]\": expected a number in [0, 1), got number 1.0"},
      {{"optimizer.weight_decay", -0.1},
       "field \"optimizer.weight_decay\": expected a non-negative number"},
      {{"optimizer.grad_clip", -1}, "field \"optimizer.grad_clip\": expected a non-negative"},
      {{"peft.lora.rank", 0}, "field \"peft.lora.rank\": expected a positive integer"},
      {{"peft.lora.alpha", 0}, "field \"peft.lora.alpha\": expected a positive number"},
      {{"peft.lora.dropout", 1}, "field \"peft.lora.dropout\": expected a number in [0, 1)"},
      {{"schedule.warmup_ratio", 1.0}, "field \"schedule.warmup_ratio\": expected a number in"},
      {{"schedule.min_lr_ratio", 1.5},
       "field \"schedule.min_lr_ratio\": expected a number in [0, 1], got number 1.5"},
      {{"schedule.warmup_steps", -1}, "field \"schedule.warmup_steps\": expected a non-negative"},
      {{"training.steps", -1}, "field \"training.steps\": expected a non-negative integer"},
      {{"training.epochs", 0}, "field \"training.epochs\": expected a positive integer"},
      {{"training.grad_accum", 0}, "field \"training.grad_accum\": expected a positive integer"},
      {{"training.log_every", 0}, "field \"training.log_every\": expected a positive integer"},
      {{"training.scan_chunk", 0}, "field \"training.scan_chunk\": expected a positive integer"},
      {{"training.threads", -1}, "field \"training.threads\": expected a non-negative integer"},
      {{"training.device", "gpu"}, "field \"training.device\""},
      {{"training.matmul", "fp16"}, "field \"training.matmul\""},
      {{"training.batch_size", std::int64_t(1) << 40},
       "field \"training.batch_size\": expected a positive integer no larger than 1048576"},
      {{"data.max_length", 1}, "field \"data.max_length\": expected an integer from 2 to"},
      {{"eval.every", -1}, "field \"eval.every\": expected a non-negative integer"},
      {{"eval.max_new_tokens", 0}, "field \"eval.max_new_tokens\": expected a positive integer"},
      {{"checkpoint.keep", -2}, "field \"checkpoint.keep\": expected a non-negative integer"},
      {{"eval.early_stopping.patience", -1}, "field \"eval.early_stopping.patience\""},
      {{"eval.early_stopping.min_delta", -0.5},
       "field \"eval.early_stopping.min_delta\": expected a non-negative number"},
      {{"seed", -1}, "field \"seed\": expected a non-negative integer"},
      {{"seed", 9223372036854775808ULL},
       "field \"seed\": expected a non-negative integer no larger than 9223372036854775807"},
  };
  for (const auto& [kv, message] : cases) {
    INFO(kv.first << " = " << kv.second.dump());
    require_config_error(with(kv.first, kv.second), {"c/exp.json: " + message});
  }
  CHECK(parse(with("seed", 9223372036854775807LL)).seed == 9223372036854775807ULL);
}

TEST_CASE("an enum value outside its choices lists the valid ones", "[config]") {
  require_config_error(with("schedule.type", "cos"),
                       {"c/exp.json: field \"schedule.type\": expected \"constant\" or \"linear\" "
                        "or \"cosine\", got string \"cos\""});
  require_config_error(with("data.format", "chat"),
                       {"field \"data.format\": expected \"auto\" or \"text\" or "
                        "\"prompt_completion\" or \"tokens\" or \"classification\""});
  require_config_error(with("data.too_long", "drop"),
                       {"field \"data.too_long\": expected \"error\" or \"truncate\""});
  require_config_error(with("peft.lora.init", "xavier"),
                       {"field \"peft.lora.init\": expected \"kaiming\" or \"gaussian\""});
  require_config_error(with("eval.metrics", json::array({"loss", "acc"})),
                       {"c/exp.json: field \"eval.metrics[1]\": expected \"loss\" or "
                        "\"perplexity\" or \"accuracy\" or \"exact_match\", got string \"acc\""});
  require_config_error(with("eval.early_stopping.metric", "bleu"),
                       {"field \"eval.early_stopping.metric\": expected \"loss\" or"});
}

TEST_CASE("every enum name reads as its value", "[config]") {
  const std::vector<std::pair<std::string, DataFormat>> formats = {
      {"auto", DataFormat::Auto},
      {"text", DataFormat::Text},
      {"prompt_completion", DataFormat::PromptCompletion},
      {"tokens", DataFormat::Tokens},
      {"classification", DataFormat::Classification}};
  for (const auto& [name, value] : formats) {
    const ExperimentConfig c = parse(with("data.format", name));
    CHECK(c.data.format == value);
    CHECK(c.json["data"]["format"] == name);
  }
  CHECK(parse(with("data.too_long", "error")).data.too_long == TooLong::Error);
  CHECK(parse(with("data.too_long", "truncate")).data.too_long == TooLong::Truncate);
  CHECK(parse(with("schedule.type", "constant")).schedule.type == ScheduleType::Constant);
  CHECK(parse(with("schedule.type", "linear")).schedule.type == ScheduleType::Linear);
  CHECK(parse(with("schedule.type", "cosine")).schedule.type == ScheduleType::Cosine);
}

TEST_CASE("lists reject empty, repeated and empty-string entries where they make no sense",
          "[config]") {
  require_config_error(with("peft.lora.targets", json::array()),
                       {"field \"peft.lora.targets\": expected at least one entry"});
  require_config_error(with("peft.lora.targets", json::array({"in_proj", "in_proj"})),
                       {"field \"peft.lora.targets[1]\": \"in_proj\" is listed twice"});
  require_config_error(with("data.labels", json::array({"yes", ""})),
                       {"field \"data.labels[1]\": expected a non-empty string, got string \"\""});
  require_config_error(with("eval.metrics", json::array()),
                       {"field \"eval.metrics\": expected at least one entry"});
  // An empty no_decay list is meaningful: weight decay on every parameter.
  CHECK(parse(with("optimizer.no_decay", json::array())).optimizer.no_decay.empty());
}

TEST_CASE("settings that contradict each other are refused", "[config]") {
  json j = with("schedule.warmup_steps", 10);
  require_config_error(with("schedule.warmup_ratio", 0.1, j),
                       {"field \"schedule.warmup_ratio\": set warmup_steps or warmup_ratio, not "
                        "both"});
  j = with("data.eval", "eval.jsonl");
  require_config_error(with("eval.early_stopping", {{"metric", "accuracy"}, {"patience", 2}}, j),
                       {"field \"eval.early_stopping.metric\": \"accuracy\" is not computed; add "
                        "it to \"eval.metrics\" (now \"loss\")"});
  require_config_error(
      with("eval.early_stopping.patience", 2),
      {"field \"eval.early_stopping.patience\": early stopping needs an eval set"});
  CHECK(parse(with("eval.early_stopping.patience", 2, j)).eval.early_stopping.patience == 2);
}

TEST_CASE("a missing model is an error naming the field", "[config]") {
  require_config_error(json::object(), {"c/exp.json: field \"model\": missing"});
  require_config_error(with("model", ""), {"c/exp.json: field \"model\": missing"});
  require_config_error(with("model", nullptr), {"c/exp.json: field \"model\": missing"});
}

TEST_CASE("an unknown key names the closest valid key, or lists the valid ones", "[config]") {
  require_config_error(with("optimiser", json::object()),
                       {"c/exp.json: unknown field \"optimiser\" (did you mean \"optimizer\"?)"});
  require_config_error(with("optimizer.lrr", 1e-3),
                       {"c/exp.json: unknown field \"optimizer.lrr\" (did you mean "
                        "\"optimizer.lr\"?)"});
  require_config_error(with("eval.early_stopping.patiense", 2),
                       {"c/exp.json: unknown field \"eval.early_stopping.patiense\" (did you mean "
                        "\"eval.early_stopping.patience\"?)"});
  require_config_error(with("peft.lora.ranks", 2),
                       {"unknown field \"peft.lora.ranks\" (did you mean \"peft.lora.rank\"?)"});
  // A name far from every method's: the valid keys are listed.
  require_config_error(with("peft.hypernetwork", json::object()),
                       {"c/exp.json: unknown field \"peft.hypernetwork\" (valid fields of "
                        "\"peft\": \"lora\", \"full\", \"partial\", \"bitfit\", \"sdt\", "
                        "\"parallel_adapter\", \"additional_scan\", \"prompt\", \"prefix\", "
                        "\"affix\", \"initial_state\", \"initial_conv_state\", ",
                        "\"init_from\")"});
  require_config_error(with("learning_rate", 0.1),
                       {"c/exp.json: unknown field \"learning_rate\" (valid top-level fields: "
                        "\"model\", \"output_dir\", \"seed\", \"data\", \"peft\", \"optimizer\", "
                        "\"schedule\", \"training\", \"eval\", \"checkpoint\")"});
  // Unknown keys inside an absent-by-null LoRA cannot hide: null has no keys, and an object
  // is read in full.
  require_config_error(with("peft", {{"lora", {{"rank", 4}, {"alhpa", 4}}}}),
                       {"unknown field \"peft.lora.alhpa\" (did you mean \"peft.lora.alpha\"?)"});
}

TEST_CASE("closest_key suggests only keys within about a third of the key's length", "[config]") {
  const std::vector<std::string> keys = {"lr", "betas", "eps", "weight_decay", "grad_clip"};
  CHECK(closest_key("lrr", keys) == "lr");
  CHECK(closest_key("weightdecay", keys) == "weight_decay");
  CHECK(closest_key("weight_decya", keys) == "weight_decay");  // a swap is one edit
  CHECK(closest_key("wieght_dceay", keys) == "weight_decay");  // two swaps, limit 4
  CHECK(closest_key("rgad_clpi", keys) == "grad_clip");
  CHECK(closest_key("beta", keys) == "betas");
  CHECK(closest_key("foo", keys) == "");
  CHECK(closest_key("LR", keys) == "");  // 2 edits, limit 1
  CHECK(closest_key("", keys) == "");
  CHECK(closest_key(std::string(100000, 'x'), keys) == "");  // bounded work on a huge key
}

TEST_CASE("config overrides (--set) put JSON values, or plain strings, at a dotted key", "[config]") {
  json j = {{"model", "m"}};
  apply_override(j, "optimizer.lr=3e-4");
  apply_override(j, "data.train=x.jsonl");
  apply_override(j, "data.packing=true");
  apply_override(j, "data.labels=[\"neg\",\"pos\"]");
  apply_override(j, "peft.lora.rank=16");    // creates peft and peft.lora
  apply_override(j, "output_dir=runs/a=b");  // only the first '=' splits
  CHECK(j["optimizer"]["lr"] == 3e-4);
  CHECK(j["data"]["train"] == "x.jsonl");
  CHECK(j["data"]["packing"] == true);
  CHECK(j["data"]["labels"] == json::array({"neg", "pos"}));
  CHECK(j["peft"]["lora"]["rank"] == 16);
  CHECK(j["output_dir"] == "runs/a=b");

  apply_override(j, "data.eval=");
  CHECK(j["data"]["eval"] == "");
  apply_override(j, "seed=\"7\"");  // a quoted number stays a string (and fails the parse)
  CHECK(j["seed"] == "7");
  apply_override(j, "seed=7");
  CHECK(j["seed"] == 7);
  // A number too large for a double is refused as one, not kept as the string "1e999".
  ssmtune::test::require_error(
      [&] { apply_override(j, "optimizer.lr=1e999"); },
      {"--set \"optimizer.lr=1e999\": \"1e999\" is too large for a number"});
  apply_override(j, "peft.lora=null");
  apply_override(j, "peft.lora.alpha=4");  // null reads as absent: the object is created
  CHECK(j["peft"]["lora"] == json{{"alpha", 4}});

  const ExperimentConfig c = parse(j);
  CHECK(c.optimizer.lr == 3e-4);
  CHECK(c.data.train == "/cfg/x.jsonl");
  CHECK(c.data.eval.empty());
  CHECK(c.data.labels == std::vector<std::string>{"neg", "pos"});
  CHECK(c.peft.lora->alpha == 4);
  CHECK(c.peft.lora->rank == 8);
  CHECK(c.output_dir == "runs/a=b");
  CHECK(c.seed == 7);

  // The key is checked by the parse like a key from the file.
  apply_override(j, "optimizer.lrr=1");
  require_config_error(j, {"unknown field \"optimizer.lrr\" (did you mean \"optimizer.lr\"?)"});
}

TEST_CASE("a malformed --set is a usage error naming it", "[config]") {
  json j = {{"model", "m"}};
  require_usage_error([&] { apply_override(j, "optimizer.lr"); },
                      {"--set \"optimizer.lr\": expected KEY=VALUE"});
  require_usage_error([&] { apply_override(j, "=3"); },
                      {"--set \"=3\": the key \"\" has an empty part"});
  require_usage_error([&] { apply_override(j, "a..b=1"); },
                      {"--set \"a..b=1\": the key \"a..b\" has an empty part"});
  require_usage_error([&] { apply_override(j, "optimizer.=1"); }, {"has an empty part"});
  require_usage_error([&] { apply_override(j, "model.x=1"); },
                      {"--set \"model.x=1\": cannot set \"model.x\" because \"model\" is string "
                       "\"m\", not an object"});
  CHECK(j == json{{"model", "m"}});  // nothing changed by the refused overrides
}

TEST_CASE(
    "input paths resolve against the config's directory, output_dir against the "
    "current one",
    "[config]") {
  json j = json::parse(R"({"model": "../models/m/", "output_dir": "./out/../runs/x",
      "data": {"train": "d/./train.jsonl", "eval": "/abs/eval.jsonl"},
      "peft": {"lora": {}, "init_from": "../adapters/a"}})");
  ExperimentConfig c = parse_experiment_config(j, "exp.json", "/work/cfg");
  CHECK(c.model == "/work/models/m");
  CHECK(c.data.train == "/work/cfg/d/train.jsonl");
  CHECK(c.data.eval == "/abs/eval.jsonl");  // absolute: unchanged
  CHECK(c.peft.init_from == "/work/adapters/a");
  CHECK(c.output_dir == "runs/x");  // not under /work/cfg
  j["output_dir"] = "/tmp/runs/y";
  CHECK(parse_experiment_config(j, "exp.json", "/work/cfg").output_dir == "/tmp/runs/y");

  // A relative base stays relative (to the current directory).
  c = parse_experiment_config(j, "configs/exp.json", "configs");
  CHECK(c.model == "models/m");
  CHECK(c.data.train == "configs/d/train.jsonl");

  // load_experiment_config uses the file's directory, made absolute, so the effective config
  // it records works from any directory.
  TempDir dir;
  std::filesystem::create_directories(dir / "configs");
  write_bytes(dir / "configs" / "sweep.json",
              R"({"model": "../models/m", "data": {"train": "train.jsonl"}})");
  c = load_experiment_config((dir / "configs" / "sweep.json").string(),
                             {"peft.lora.rank=4", "data.eval=eval.jsonl"});
  CHECK(c.model == (dir / "models" / "m").string());
  CHECK(c.data.train == (dir / "configs" / "train.jsonl").string());
  CHECK(c.data.eval == (dir / "configs" / "eval.jsonl").string());
  CHECK(c.peft.lora->rank == 4);
  CHECK(c.output_dir == "runs/sweep");
  CHECK(c.source == (dir / "configs" / "sweep.json").string());

  require_usage_error(
      [&] { load_experiment_config((dir / "configs" / "sweep.json").string(), {"lr=1"}); },
      {"sweep.json: unknown field \"lr\""});
  // A file that cannot be read is a runtime error (exit 1) naming it.
  try {
    load_experiment_config((dir / "missing.json").string());
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(e.exit_code() == 1);
    CHECK_THAT(e.what(), Catch::Contains("missing.json"));
  }
}

TEST_CASE("the resume hash ignores key order, outputs and cadences but not what is trained",
          "[config]") {
  const std::string a = R"({"model": "m", "optimizer": {"lr": 0.001, "eps": 1e-8},
                            "data": {"train": "t.jsonl", "max_length": 64}})";
  const std::string b = R"({"data": {"max_length": 64, "train": "t.jsonl"},
                            "optimizer": {"eps": 1e-8, "lr": 0.001}, "model": "m"})";
  const json ja = json::parse(a);
  const std::string h = experiment_config_hash(parse(ja));
  CHECK(h.size() == 16);
  CHECK(h.find_first_not_of("0123456789abcdef") == std::string::npos);
  CHECK(experiment_config_hash(parse(json::parse(b))) == h);

  for (const auto& [key, value] : std::vector<std::pair<std::string, json>>{
           {"output_dir", "elsewhere"},
           {"eval.every", 10},
           {"eval.max_examples", 5},
           {"eval.batch_size", 2},
           {"eval.metrics", json::array({"loss", "perplexity"})},
           {"data.eval", "e.jsonl"},
           {"checkpoint.every", 3},
           {"checkpoint.keep", 0},
           {"training.log_every", 7},
           {"training.threads", 3},
           {"training.device", "cuda"},
           {"training.matmul", "fp32"},
           {"training.frozen_weights", "fp32"}}) {
    INFO(key);
    CHECK(experiment_config_hash(parse(with(key, value, ja))) == h);
  }
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, json>>{{"optimizer.lr", 0.002},
                                                 {"seed", 1},
                                                 {"model", "m2"},
                                                 {"data.train", "t2.jsonl"},
                                                 {"peft.lora.rank", 4},
                                                 {"schedule.type", "cosine"},
                                                 {"training.batch_size", 2},
                                                 {"training.matmul", "bf16"},
                                                 {"training.frozen_weights", "bf16"}}) {
    INFO(key);
    CHECK(experiment_config_hash(parse(with(key, value, ja))) != h);
  }
  // With early stopping on, eval decides when training stops, so its cadence counts.
  json stopping = with("data.eval", "e.jsonl", ja);
  stopping = with("eval.early_stopping.patience", 2, stopping);
  const std::string hs = experiment_config_hash(parse(stopping));
  CHECK(experiment_config_hash(parse(with("eval.every", 10, stopping))) != hs);
  CHECK(experiment_config_hash(parse(with("eval.batch_size", 2, stopping))) == hs);

  CHECK_THROWS_AS(experiment_config_hash(ExperimentConfig{}), Error);
}

TEST_CASE("the effective config parses back to the same config", "[config]") {
  for (const json& j :
       {json{{"model", "m"}}, full_config(), with("peft", {{"lora", nullptr}, {"full", true}})}) {
    const ExperimentConfig first = parse(j);
    // Its paths are already resolved: another file name and base change nothing.
    const ExperimentConfig again =
        parse_experiment_config(first.json, "runs/x/config.json", "/elsewhere");
    require_same(first, again);
    CHECK(again.source == "runs/x/config.json");
    CHECK(experiment_config_hash(again) == experiment_config_hash(first));
    // Through text, as the trainer writes it to the run directory.
    require_same(first, parse_experiment_config(json::parse(first.json.dump(2)), "c.json", "/z"));
  }
}

TEST_CASE("partial tuning, BitFit and SDT sections parse with their defaults and ranges",
          "[config][partial][sdt]") {
  json j = with("peft", {{"partial", {{"tensors", {"A_log", "layers.0-1.D"}},
                                      {"mode", "delta"},
                                      {"lr_multipliers", {{"A_log", 10}}}}},
                         {"bitfit", true},
                         {"sdt", json::object()}});
  const ExperimentConfig c = parse(j);
  REQUIRE(c.peft.partial);
  CHECK(c.peft.partial->tensors == std::vector<std::string>{"A_log", "layers.0-1.D"});
  CHECK(c.peft.partial->mode == "delta");
  CHECK(c.peft.partial->lr_multipliers.at("A_log") == 10);
  CHECK(c.peft.bitfit);
  REQUIRE(c.peft.sdt);
  CHECK(c.peft.sdt->warmup_steps == 250);
  CHECK(c.peft.sdt->channel_freeze_fraction == 0.99);
  CHECK(c.peft.sdt->state_freeze_fraction == 0.75);
  CHECK(!c.peft.lora);
  // The effective config records the defaults.
  CHECK(c.json["peft"]["sdt"]["warmup_steps"] == 250);
  CHECK(c.json["peft"]["partial"]["weight_decay_multipliers"] == json::object());

  require_config_error(with("peft", {{"partial", json::object()}}),
                       {"field \"peft.partial.tensors\": missing"});
  require_config_error(with("peft", {{"partial", {{"tensors", {"D"}}, {"mode", "v2"}}}}),
                       {"field \"peft.partial.mode\": expected \"direct\" or \"delta\""});
  require_config_error(
      with("peft", {{"partial", {{"tensors", {"D"}}, {"lr_multipliers", {{"D", -1}}}}}}),
      {"field \"peft.partial.lr_multipliers.D\": expected a positive number, got number -1"});
  require_config_error(with("peft", {{"sdt", {{"channel_freeze_fraction", 1}}}}),
                       {"field \"peft.sdt.channel_freeze_fraction\": expected a number in [0, 1)"});
  require_config_error(with("peft", {{"sdt", {{"warmup_steps", 0}}}}),
                       {"field \"peft.sdt.warmup_steps\""});
  require_config_error(with("peft", {{"sdt", {{"warmup_step", 5}}}}),
                       {"unknown field \"peft.sdt.warmup_step\" (did you mean "
                        "\"peft.sdt.warmup_steps\"?)"});
}

TEST_CASE("virtual-token and module sections parse with their defaults and ranges",
          "[config][virtual][modules]") {
  const ExperimentConfig c =
      parse(with("peft", {{"prompt", {{"init_text", "Classify:"}}},
                          {"prefix", json::object()},
                          {"affix", {{"tokens", 5}}},
                          {"parallel_adapter", json::object()},
                          {"additional_scan", {{"init", "s4d"}}},
                          {"initial_conv_state", true}}));
  CHECK(c.peft.virtual_tokens.prompt_tokens == 20);
  CHECK(c.peft.virtual_tokens.prompt_init_text == "Classify:");
  CHECK(c.peft.virtual_tokens.prefix_tokens == 10);
  CHECK(c.peft.virtual_tokens.affix_tokens == 5);
  REQUIRE(c.peft.parallel_adapter);
  CHECK(c.peft.parallel_adapter->rank == 32);
  CHECK(c.peft.parallel_adapter->scale == 0.1);
  CHECK(c.peft.parallel_adapter->dropout == 0.1);
  REQUIRE(c.peft.additional_scan);
  CHECK(c.peft.additional_scan->states == 8);
  CHECK(c.peft.additional_scan->init == "s4d");
  CHECK(c.peft.initial_conv_state);
  CHECK(c.json["peft"]["prompt"]["tokens"] == 20);
  require_config_error(with("peft", {{"affix", {{"tokens", 0}}}}), {"field \"peft.affix.tokens\""});
  require_config_error(with("peft", {{"additional_scan", {{"init", "random"}}}}),
                       {"field \"peft.additional_scan.init\": expected \"copy\" or \"s4d\""});
  require_config_error(with("peft", {{"parallel_adapter", {{"dropout", 1}}}}),
                       {"field \"peft.parallel_adapter.dropout\": expected a number in [0, 1)"});
}

TEST_CASE("methods that are off leave the resume hash as it was before they existed",
          "[config][resume]") {
  // The hash of this config as the release before partial/SDT/modules/virtual tokens wrote it
  // into trainer_state.json: every method key added since is off here.
  const json j = {{"model", "m"}, {"peft", {{"lora", json::object()}}}};
  CHECK(experiment_config_hash(parse(j)) ==
        experiment_config_hash(parse(with("peft.bitfit", false, j))));
  CHECK(experiment_config_hash(parse(j)) !=
        experiment_config_hash(parse(with("peft.affix", json::object(), j))));
}
