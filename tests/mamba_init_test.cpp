// ssmtune init: every tensor drawn by its rule (lib/model/mamba_init.cpp, transformers 4.44.2's
// MambaForCausalLM(config)), determinism per seed and per tensor name, the written directory
// reloading to the same tensors, and the `ssmtune init` command's exit codes and messages.
#include "model/mamba_init.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>

#include "backend/backend.h"
#include "cli_run.h"
#include "init_test_util.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "io_test_util.h"
#include "model/causal_lm.h"

using namespace ssmtune;
using ssmtune::test::by_name;
using ssmtune::test::check_constant;
using ssmtune::test::check_normal;
using ssmtune::test::check_reloads;
using ssmtune::test::check_same_tensors;
using ssmtune::test::check_seed_determinism;
using ssmtune::test::check_tensors_kept;
using ssmtune::test::entries;
using ssmtune::test::forward_loss;
using ssmtune::test::Moments;
using ssmtune::test::moments;
using ssmtune::test::read_bytes;
using ssmtune::test::require_error;
using ssmtune::test::TempDir;
using ssmtune::test::values;
using ssmtune::test::write_bytes;
namespace fs = std::filesystem;

namespace {

// Large enough inner size for statistics (E = 4096 samples per (E)-vector), small elsewhere so
// the whole model stays ~0.4 M parameters.
ModelConfig stats_config() {
  ModelConfig c;
  c.vocab_size = 1000;
  c.d_model = 16;
  c.n_layer = 2;
  c.d_state = 4;
  c.d_inner = 4096;
  c.d_conv = 4;
  c.dt_rank = 2;
  c.use_bias = true;
  c.use_conv_bias = true;
  c.tie_word_embeddings = false;
  return c;
}

ModelConfig small_config(bool tied, bool bias) {
  ModelConfig c;
  c.vocab_size = 50;
  c.d_model = 12;
  c.n_layer = 2;
  c.d_state = 3;
  c.d_inner = 24;
  c.d_conv = 3;
  c.dt_rank = 2;
  c.use_bias = bias;
  c.use_conv_bias = !bias;
  c.tie_word_embeddings = tied;
  return c;
}

// U(-b, b): within the bound (F32 rounding of a value just under b may round up to b, hence the
// 1e-6 relative slack), reaching it (n >= 4096: P(max |x| < 0.99 b) = 0.99^n < 1e-17), mean 0
// within 6 standard errors, std b/sqrt(3) within 5% (the standard error of a uniform sample's
// std is sqrt(0.2/n) relative, <= 0.7% here, so 5% is > 7 standard errors).
void check_uniform(const std::string& name, const Tensor& t, double b) {
  INFO(name << ": U(-" << b << ", " << b << "), " << t.numel() << " values");
  REQUIRE(t.numel() >= 4096);
  const Moments m = moments(values(t));
  CHECK(m.max_abs <= b * (1 + 1e-6));
  CHECK(m.max_abs >= 0.99 * b);
  CHECK(std::fabs(m.mean) <= 6 * (b / std::sqrt(3.0)) / std::sqrt(double(t.numel())));
  CHECK(m.std == Approx(b / std::sqrt(3.0)).epsilon(0.05));
}

// ---- the ssmtune binary (as tests/cli_test.cpp runs it) ----

using Result = ssmtune::test::CliResult;
Result run(const std::string& args) { return ssmtune::test::run_cli(args); }

const char* const kSizes = R"({"vocab_size": 40, "hidden_size": 8, "num_hidden_layers": 2,
  "state_size": 4, "expand": 2, "conv_kernel": 3, "time_step_rank": 2})";

}  // namespace

TEST_CASE("init draws every tensor by its rule", "[init]") {
  ModelConfig c = stats_config();
  ModelWeights w = init_mamba_weights(c, 7);
  const auto t = by_name(c, w);
  // 1 embedding + 2 layers x 12 + norm_f + untied lm_head: every parameter, each of its shape.
  CHECK(t.size() == 1 + 2 * 12 + 1 + 1);
  for (const auto& [name, tensor] : t) {
    INFO(name);
    CHECK(tensor.dtype() == DType::F32);
    CHECK(tensor.shape() == expected_param_shape(c, name));
  }
  const double D = double(c.d_model), E = double(c.d_inner), K = double(c.d_conv);
  for (int i = 0; i < 2; ++i) {
    const std::string p = "backbone.layers." + std::to_string(i) + ".";
    SECTION("layer " + std::to_string(i) + ": A_log is exactly ln(n + 1), D, norms 1") {
      const Tensor& a = t.at(p + "mixer.A_log");
      for (std::int64_t e = 0; e < c.d_inner; ++e)
        for (std::int64_t n = 0; n < c.d_state; ++n)
          REQUIRE(a.data<float>()[e * c.d_state + n] == float(std::log(double(n + 1))));
      check_constant(p + "mixer.D", t.at(p + "mixer.D"), 1.0f);
      check_constant(p + "norm.weight", t.at(p + "norm.weight"), 1.0f);
    }
    SECTION("layer " + std::to_string(i) + ": Linear and Conv1d defaults, biases") {
      check_uniform(p + "mixer.in_proj.weight", t.at(p + "mixer.in_proj.weight"), 1 / std::sqrt(D));
      check_uniform(p + "mixer.x_proj.weight", t.at(p + "mixer.x_proj.weight"), 1 / std::sqrt(E));
      check_uniform(p + "mixer.out_proj.weight", t.at(p + "mixer.out_proj.weight"),
                    1 / std::sqrt(E));
      check_uniform(p + "mixer.conv1d.weight", t.at(p + "mixer.conv1d.weight"), 1 / std::sqrt(K));
      check_uniform(p + "mixer.conv1d.bias", t.at(p + "mixer.conv1d.bias"), 1 / std::sqrt(K));
      check_constant(p + "mixer.in_proj.bias", t.at(p + "mixer.in_proj.bias"), 0.0f);
      check_constant(p + "mixer.out_proj.bias", t.at(p + "mixer.out_proj.bias"), 0.0f);
    }
    SECTION("layer " + std::to_string(i) + ": dt_proj weight within +-s, bias softplus^-1(dt)") {
      const double s = std::pow(double(c.dt_rank), -0.5) * c.time_step_scale;
      check_uniform(p + "mixer.dt_proj.weight", t.at(p + "mixer.dt_proj.weight"), s);
      // softplus(bias) = dt in [time_step_min, time_step_max] up to F32 rounding of the bias
      // (relative 6e-8 of |bias| <= 7, i.e. ~4e-7 absolute in the exponent: 1e-5 is ample).
      const std::vector<double> bias = values(t.at(p + "mixer.dt_proj.bias"));
      const double lo = std::log(c.time_step_min), hi = std::log(c.time_step_max);
      std::vector<double> u;  // (ln dt - ln dt_min) / (ln dt_max - ln dt_min), U(0, 1) if right
      for (double b : bias) {
        const double dt = std::log1p(std::exp(b));
        REQUIRE(dt >= c.time_step_min * (1 - 1e-5));
        REQUIRE(dt <= c.time_step_max * (1 + 1e-5));
        u.push_back((std::log(dt) - lo) / (hi - lo));
      }
      // Kolmogorov-Smirnov against U(0, 1): P(D_n > 0.04) ~ 2 exp(-2 n 0.04^2) = 4e-6 at
      // n = 4096, while a dt uniform on the linear scale would give D_n ~ 0.5.
      std::sort(u.begin(), u.end());
      double ks = 0;
      for (std::size_t k = 0; k < u.size(); ++k)
        ks = std::max({ks, std::fabs(u[k] - double(k) / double(u.size())),
                       std::fabs(u[k] - double(k + 1) / double(u.size()))});
      CHECK(ks < 0.04);
    }
  }
  SECTION("embedding ~ N(0, initializer_range), norm_f 1, untied lm_head U(+-1/sqrt(D))") {
    check_normal("backbone.embeddings.weight", t.at("backbone.embeddings.weight"),
                 c.initializer_range);
    check_constant("backbone.norm_f.weight", t.at("backbone.norm_f.weight"), 1.0f);
    check_uniform("lm_head.weight", t.at("lm_head.weight"), 1 / std::sqrt(D));
  }
}

TEST_CASE("init follows the config's init options", "[init]") {
  ModelConfig c = stats_config();
  SECTION("tied lm_head is the embedding itself") {
    c.tie_word_embeddings = true;
    const ModelWeights w = init_mamba_weights(c, 1);
    CHECK(w.lm_head.raw() == w.embedding.raw());
  }
  SECTION("constant dt_proj weight, rescaled out_proj") {
    c.time_step_init_scheme = "constant";
    c.time_step_scale = 0.5;
    c.rescale_prenorm_residual = true;
    ModelWeights w = init_mamba_weights(c, 1);
    const auto t = by_name(c, w);
    check_constant("dt_proj.weight", t.at("backbone.layers.1.mixer.dt_proj.weight"),
                   float(0.5 / std::sqrt(2.0)));
    check_uniform("out_proj.weight", t.at("backbone.layers.1.mixer.out_proj.weight"),
                  1 / std::sqrt(4096.0) / std::sqrt(2.0));
  }
  SECTION("dt is clamped at time_step_floor") {
    c.time_step_min = 1e-5;
    c.time_step_max = 1e-3;
    c.time_step_floor = 1e-4;  // half of the log range lies below it
    ModelWeights w = init_mamba_weights(c, 1);
    const std::vector<double> bias =
        values(by_name(c, w).at("backbone.layers.0.mixer.dt_proj.bias"));
    std::int64_t at_floor = 0;
    for (double b : bias) {
      const double dt = std::log1p(std::exp(b));
      REQUIRE(dt >= 1e-4 * (1 - 1e-4));  // F32 bias near ln(1e-4) = -9.2: ~1e-6 relative in dt
      at_floor += dt < 1e-4 * (1 + 1e-4);
    }
    // Binomial(4096, 0.5): 0.5 +- 0.05 is 6.4 standard errors.
    CHECK(double(at_floor) / double(bias.size()) == Approx(0.5).margin(0.05));
  }
  SECTION("unusable init fields are errors") {
    c.time_step_min = 0.2;
    require_error([&] { init_mamba_weights(c, 1); }, {"time_step_min", "time_step_max"});
    c = stats_config();
    c.initializer_range = -1;
    require_error([&] { init_mamba_weights(c, 1); }, {"initializer_range"});
  }
}

TEST_CASE("parameter count matches the tensors and mamba-130m's known total", "[init]") {
  for (bool tied : {true, false})
    for (bool bias : {true, false}) {
      const ModelConfig c = small_config(tied, bias);
      ModelWeights w = init_mamba_weights(c, 0);
      std::int64_t n = 0;
      for_each_param(c, w, [&](const std::string&, Tensor& t) { n += t.numel(); });
      CHECK(mamba_param_count(c) == n);
    }
  // docs/models.md "Reference sizes": state-spaces/mamba-130m-hf holds 129,135,360 parameters.
  ModelConfig c130m;
  c130m.vocab_size = 50280, c130m.d_model = 768, c130m.n_layer = 24, c130m.d_inner = 1536;
  c130m.d_state = 16, c130m.d_conv = 4, c130m.dt_rank = 48;
  CHECK(mamba_param_count(c130m) == 129'135'360);
}

TEST_CASE("init is deterministic per seed and per tensor name", "[init]") {
  ModelConfig c = small_config(false, true);
  check_seed_determinism(
      c, [](const ModelConfig& m, std::uint64_t seed) { return init_mamba_weights(m, seed); }, [](const std::string& name) {
    return !(name.ends_with("A_log") || name.ends_with("mixer.D") ||
             name.ends_with("norm.weight") || name.ends_with("norm_f.weight") ||
             (name.ends_with("proj.bias") && !name.ends_with("dt_proj.bias")));
  });
  // A tensor's values depend on its name, not on the visiting order: a third layer leaves
  // layers 0 and 1 (and the embedding) as they were.
  ModelConfig c3 = c;
  c3.n_layer = 3;
  ModelWeights w = init_mamba_weights(c, 42), w3 = init_mamba_weights(c3, 42);
  check_tensors_kept(c, w, c3, w3);
}

TEST_CASE("written model directory reloads to identical tensors and runs", "[init]") {
  TempDir tmp;
  for (bool tied : {true, false}) {
    const ModelConfig c = small_config(tied, !tied);
    ModelWeights w = init_mamba_weights(c, 5);
    const fs::path dir = tmp / (tied ? "tied" : "untied");
    write_mamba_model_dir(dir.string(), c, w);
    CHECK(entries(tmp.path()) ==
          (tied ? std::vector<std::string>{"tied"} : std::vector<std::string>{"tied", "untied"}));
    CHECK(entries(dir) == std::vector<std::string>{"config.json", "model.safetensors"});

    const nlohmann::json j = read_json_file(dir / "config.json");
    CHECK(j.at("model_type") == "mamba");
    CHECK(j.at("architectures") == nlohmann::json::array({"MambaForCausalLM"}));
    CHECK(j.at("torch_dtype") == "float32");
    CHECK(j.at("tie_word_embeddings") == tied);
    const SafetensorsFile f = SafetensorsFile::open(dir / "model.safetensors");
    CHECK(f.contains("lm_head.weight") == !tied);

    const ModelWeights w2 = check_reloads(dir, c, w);
    // A forward pass on the reloaded model: finite logits, and at this init (logit std ~0.3)
    // a loss near ln(V) (a badly scaled init would give a loss far from it or NaN).
    const LmLoss loss = forward_loss(c, w2, 7);
    CHECK(loss.loss == Approx(std::log(50.0)).margin(1.0));
  }
}

TEST_CASE("model directory writes are all or nothing", "[init]") {
  TempDir tmp;
  const ModelConfig c = small_config(true, false);
  ModelWeights w = init_mamba_weights(c, 1), w2 = init_mamba_weights(c, 2);
  const fs::path dir = tmp / "m";

  SECTION("an existing non-empty directory is refused, then replaced with overwrite") {
    write_mamba_model_dir(dir.string(), c, w);
    const std::string before = read_bytes(dir / "model.safetensors");
    require_error([&] { write_mamba_model_dir(dir.string(), c, w2); },
                  {dir.string(), "already exists and is not empty"});
    CHECK(read_bytes(dir / "model.safetensors") == before);
    write_mamba_model_dir(dir.string(), c, w2, /*overwrite=*/true);
    CHECK(read_bytes(dir / "model.safetensors") != before);
    CHECK(entries(tmp.path()) == std::vector<std::string>{"m"});  // no .tmp- / .old- left
  }
  SECTION("an existing empty directory is used; a non-model directory is never replaced") {
    fs::create_directory(dir);
    write_mamba_model_dir(dir.string(), c, w);
    CHECK(entries(dir) == std::vector<std::string>{"config.json", "model.safetensors"});
    const fs::path other = tmp / "notes";
    fs::create_directory(other);
    write_bytes(other / "todo.txt", "keep me");
    require_error([&] { write_mamba_model_dir(other.string(), c, w, true); },
                  {"holds no config.json", "refusing"});
    CHECK(read_bytes(other / "todo.txt") == "keep me");
  }
  SECTION("a failure half way leaves no directory and no temporary") {
    write_bytes(tmp / "tokenizer.json", "{}");
    require_error(
        [&] {
          write_mamba_model_dir(dir.string(), c, w, false,
                                {tmp / "tokenizer.json", tmp / "missing.model"});
        },
        {"missing.model", "cannot open"});
    CHECK(entries(tmp.path()) == std::vector<std::string>{"tokenizer.json"});
  }
  SECTION("extra files are copied") {
    write_bytes(tmp / "tokenizer.json", "{\"x\": 1}");
    write_mamba_model_dir(dir.string(), c, w, false, {tmp / "tokenizer.json"});
    CHECK(read_bytes(dir / "tokenizer.json") == "{\"x\": 1}");
  }
  SECTION("a missing parent is an error") {
    require_error([&] { write_mamba_model_dir((tmp / "no" / "m").string(), c, w); },
                  {"parent directory", "does not exist"});
    CHECK(!fs::exists(tmp / "no"));
  }
}

TEST_CASE("ssmtune init writes a model directory and refuses to overwrite it", "[init][cli]") {
  TempDir tmp;
  write_bytes(tmp / "sizes.json", kSizes);
  const fs::path out = tmp / "model";
  Result r = run("init " + (tmp / "sizes.json").string() + " --out " + out.string() + " --seed 9");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("wrote " + out.string()));
  const ModelConfig c = parse_model_config(nlohmann::json::parse(kSizes), "sizes");
  // Per layer 8 + 64 + 16 + 48 + 16 + 256 + 160 + 32 + 16 + 128 = 744; + 40 * 8 + 8 outside.
  CHECK(mamba_param_count(c) == 1816);
  CHECK_THAT(r.output, Catch::Contains("1,816 parameters"));
  CHECK_THAT(r.output, Catch::Contains("seed 9"));
  // The binary draws exactly what the library draws for that seed.
  ModelWeights expected = init_mamba_weights(c, 9);
  ModelWeights loaded = load_model_weights(out.string(), load_model_config(out.string()));
  check_same_tensors(c, expected, loaded);

  const std::string before = read_bytes(out / "model.safetensors");
  r = run("init " + (tmp / "sizes.json").string() + " --out " + out.string() + " --seed 10");
  CHECK(r.exit_code == 2);
  CHECK(r.output == "error: " + out.string() +
                        ": already exists and is not empty (pass --overwrite to replace it)\n");
  CHECK(read_bytes(out / "model.safetensors") == before);
  r = run("init " + (tmp / "sizes.json").string() + " --out " + out.string() +
          " --seed 10 --overwrite");
  CHECK(r.exit_code == 0);
  CHECK(read_bytes(out / "model.safetensors") != before);
  CHECK(entries(tmp.path()) == std::vector<std::string>{"model", "sizes.json"});

  r = run("init --help");
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("Example: ssmtune init"));
}

TEST_CASE("ssmtune init copies and checks the tokenizer", "[init][cli]") {
  TempDir tmp;
  write_bytes(tmp / "sizes.json", kSizes);  // vocab_size 40
  fs::create_directory(tmp / "tok");
  const std::string tok = R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2}},
    "added_tokens": [{"id": 39, "content": "<|end|>"}]})";
  write_bytes(tmp / "tok" / "tokenizer.json", tok);
  write_bytes(tmp / "tok" / "tokenizer_config.json", "{}");
  write_bytes(tmp / "tok" / "unrelated.txt", "not copied");
  const std::string init = "init " + (tmp / "sizes.json").string() + " --out ";

  Result r = run(init + (tmp / "m").string() + " --tokenizer " + (tmp / "tok").string());
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK(entries(tmp / "m") == std::vector<std::string>{"config.json", "model.safetensors",
                                                       "tokenizer.json", "tokenizer_config.json"});
  CHECK(read_bytes(tmp / "m" / "tokenizer.json") == tok);

  // An added token past the model's vocabulary.
  write_bytes(tmp / "tok" / "tokenizer.json",
              R"({"model": {"vocab": {"a": 0}}, "added_tokens": [{"id": 40, "content": "<x>"}]})");
  r = run(init + (tmp / "m2").string() + " --tokenizer " + (tmp / "tok").string());
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.output, Catch::Contains("tokenizer.json: token id 40 (\"<x>\") does not fit "
                                       "vocab_size 40"));
  CHECK(!fs::exists(tmp / "m2"));

  // Unigram: the vocabulary is a list and ids are positions.
  write_bytes(tmp / "tok" / "tokenizer.json",
              R"({"model": {"type": "Unigram", "vocab": [["a", -1.0], ["b", -2.0]]}})");
  r = run(init + (tmp / "m3").string() + " --tokenizer " + (tmp / "tok").string());
  CHECK(r.exit_code == 0);

  fs::create_directory(tmp / "empty");
  r = run(init + (tmp / "m4").string() + " --tokenizer " + (tmp / "empty").string());
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.output, Catch::Contains("holds none of tokenizer.json"));
  CHECK(!fs::exists(tmp / "m4"));
}

TEST_CASE("ssmtune init rejects a bad SIZES.json with exit 2, naming the file and field",
          "[init][cli][bad-input]") {
  TempDir tmp;
  const fs::path sizes = tmp / "sizes.json";
  const fs::path out = tmp / "m";
  const auto expect = [&](const std::string& text, const std::string& message) {
    write_bytes(sizes, text);
    const Result r = run("init " + sizes.string() + " --out " + out.string());
    INFO(text << " -> " << r.output);
    CHECK(r.exit_code == 2);
    CHECK(r.output == "error: " + sizes.string() + ": " + message + "\n");
    CHECK(!fs::exists(out));
  };
  expect(R"({"vocab_size": 40, "hidden_size": "8", "num_hidden_layers": 2})",
         "field \"hidden_size\": expected a positive integer, got string \"8\"");
  expect(R"({"vocab_size": 40, "hidden_size": 8, "num_hidden_layers": 2, "state_size": -4})",
         "field \"state_size\": expected a positive integer no larger than 1024, got number -4");
  expect(R"({"vocab_size": 40, "hidden_size": 8, "num_hidden_layers": 2, "use_bias": 1})",
         "field \"use_bias\": expected true or false, got number 1");
  expect(R"({"vocab_size": 40, "hidden_size": 8, "num_hidden_layers": 2,
             "time_step_min": 0.5})",
         "field \"time_step_min\": time_step_min = 0.5 is larger than time_step_max = 0.1");
  expect(R"({"vocab_size": 40, "hidden_size": 8, "num_hidden_layers": 2,
             "initializer_range": -0.1})",
         "field \"initializer_range\": expected a non-negative number, got number -0.1");

  // A typo is not an error (config.json files carry leftovers) but is pointed out.
  write_bytes(sizes, R"({"vocab_size": 40, "hidden_size": 8, "num_hidden_layers": 1,
                         "stat_size": 4})");
  const Result r = run("init " + sizes.string() + " --out " + out.string());
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("field \"stat_size\" is not a Mamba config field"));
}

TEST_CASE("ssmtune init into an unwritable place exits 1 and leaves nothing",
          "[init][cli][bad-input]") {
  TempDir tmp;
  write_bytes(tmp / "sizes.json", kSizes);
  const std::string init = "init " + (tmp / "sizes.json").string() + " --out ";

  // /proc refuses new entries even to root.
  Result r = run(init + "/proc/ssmtune-init-test");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Catch::StartsWith("error: /proc/ssmtune-init-test: cannot create "
                                         "temporary directory"));
  CHECK(!fs::exists("/proc/ssmtune-init-test"));

  write_bytes(tmp / "file", "x");
  r = run(init + (tmp / "file" / "m").string());
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Catch::Contains("is not a directory"));

  // A read-only directory stops everyone but root (who bypasses permission bits).
  if (::geteuid() != 0) {
    fs::create_directory(tmp / "ro");
    fs::permissions(tmp / "ro", fs::perms(0555));
    r = run(init + (tmp / "ro" / "m").string());
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains("Permission denied"));
    CHECK(fs::is_empty(tmp / "ro"));
  }
}
