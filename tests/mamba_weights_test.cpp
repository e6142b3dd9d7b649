// Mamba weights: HF names and shapes under a config, and a loader that reports missing, unexpected,
// wrong-shape and untied/tied tensors by name (docs/models.md "Mamba tensors", "safetensors").
#include "model/model_weights.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <limits>

#include "io/json_file.h"
#include "io/safetensors_checkpoint.h"
#include "io_test_util.h"

using namespace ssmtune;
using ssmtune::test::require_error;
using ssmtune::test::poke_f32;
using ssmtune::test::TempDir;

namespace {

// D=4, E=8, N=3, R=2, K=2, V=10: every dimension distinct where it matters for shapes.
ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 10;
  c.d_model = 4;
  c.n_layer = 2;
  c.d_state = 3;
  c.d_inner = 8;
  c.d_conv = 2;
  c.dt_rank = 2;
  c.use_bias = false;
  c.use_conv_bias = true;
  c.tie_word_embeddings = true;
  return c;
}

// Every parameter of `c` with distinct values exactly representable in bf16 (k/8, small k).
std::vector<NamedTensor> tiny_params(const ModelConfig& c) {
  ModelWeights w = zeros_like_params(c, DType::F32);
  std::vector<NamedTensor> out;
  int k = 0;
  for_each_param(c, w, [&](const std::string& name, Tensor& t) {
    for (std::int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = float((k++ % 61) - 30) / 8;
    out.push_back({name, t});
  });
  return out;
}

std::vector<NamedTensor> without(std::vector<NamedTensor> v, const std::string& name) {
  std::erase_if(v, [&](const NamedTensor& nt) { return nt.name == name; });
  return v;
}

std::vector<NamedTensor> replaced(std::vector<NamedTensor> v, const std::string& name, Tensor t) {
  for (auto& nt : v)
    if (nt.name == name) nt.tensor = t;
  return v;
}

Tensor find(const std::vector<NamedTensor>& v, const std::string& name) {
  for (const auto& nt : v)
    if (nt.name == name) return nt.tensor;
  FAIL("no tensor " << name);
  return {};
}

void write_model(const TempDir& dir, const std::vector<NamedTensor>& params,
                 DType dtype = DType::F32) {
  std::vector<NamedTensor> stored;
  for (const auto& [name, t] : params)
    stored.push_back({name, t.dtype() == DType::F32 ? t.to(dtype) : t});  // others as they are
  write_safetensors(dir / "model.safetensors", stored);
}

void require_load_error(const TempDir& dir, const ModelConfig& c,
                        std::initializer_list<std::string> fragments) {
  require_error([&] { load_model_weights(dir.path().string(), c); }, fragments);
}

bool same_values(const Tensor& a, const Tensor& b) {
  const Tensor a64 = a.to(DType::F64), b64 = b.to(DType::F64);
  return a.shape() == b.shape() && std::memcmp(a64.raw(), b64.raw(), a64.nbytes()) == 0;
}

}  // namespace

TEST_CASE("expected_param_shape follows the HF module shapes", "[model][weights]") {
  const ModelConfig c = tiny_config();
  CHECK(expected_param_shape(c, "backbone.embeddings.weight") == Shape{10, 4});
  CHECK(expected_param_shape(c, "backbone.embedding.weight") == Shape{10, 4});  // mamba_ssm name
  CHECK(expected_param_shape(c, "backbone.layers.1.norm.weight") == Shape{4});
  CHECK(expected_param_shape(c, "backbone.layers.1.mixer.in_proj.weight") == Shape{16, 4});
  CHECK(expected_param_shape(c, "backbone.layers.0.mixer.conv1d.weight") == Shape{8, 1, 2});
  CHECK(expected_param_shape(c, "backbone.layers.0.mixer.conv1d.bias") == Shape{8});
  CHECK(expected_param_shape(c, "backbone.layers.0.mixer.x_proj.weight") == Shape{8, 8});  // R + 2N
  CHECK(expected_param_shape(c, "backbone.layers.0.mixer.dt_proj.weight") == Shape{8, 2});
  CHECK(expected_param_shape(c, "backbone.layers.0.mixer.dt_proj.bias") == Shape{8});
  CHECK(expected_param_shape(c, "backbone.layers.0.mixer.A_log") == Shape{8, 3});
  CHECK(expected_param_shape(c, "backbone.layers.0.mixer.D") == Shape{8});
  CHECK(expected_param_shape(c, "backbone.layers.0.mixer.out_proj.weight") == Shape{4, 8});
  CHECK(expected_param_shape(c, "backbone.norm_f.weight") == Shape{4});
  CHECK(expected_param_shape(c, "lm_head.weight") == Shape{10, 4});
  require_error([&] { expected_param_shape(c, "backbone.layers.0.mixer.in_proj.bias"); },
                {"tensor \"backbone.layers.0.mixer.in_proj.bias\" is not a parameter of this Mamba "
                 "config (use_bias is false)"});
  require_error([&] { expected_param_shape(c, "backbone.layers.2.norm.weight"); },
                {"tensor \"backbone.layers.2.norm.weight\" is not a parameter of a Mamba model "
                 "with 2 layers"});
  ModelConfig b = c;
  b.use_bias = true;
  CHECK(expected_param_shape(b, "backbone.layers.0.mixer.in_proj.bias") == Shape{16});
  CHECK(expected_param_shape(b, "backbone.layers.0.mixer.out_proj.bias") == Shape{4});
}

TEST_CASE("for_each_param visits parameters in state_dict order, skipping absent and tied ones",
          "[model][weights]") {
  ModelConfig c = tiny_config();
  ModelWeights w = zeros_like_params(c, DType::F32);
  std::vector<std::string> names;
  for_each_param(c, w, [&](const std::string& name, Tensor&) { names.push_back(name); });
  REQUIRE(names.size() ==
          1 + 2 * 10 + 1);  // embedding, 10 per layer (conv bias, no in/out bias), norm_f
  CHECK(names[0] == "backbone.embeddings.weight");
  CHECK(names[1] == "backbone.layers.0.norm.weight");
  CHECK(names[2] == "backbone.layers.0.mixer.A_log");
  CHECK(names.back() == "backbone.norm_f.weight");
  CHECK(w.lm_head.raw() == w.embedding.raw());  // tied: one storage

  c.use_bias = true;
  c.use_conv_bias = false;
  c.tie_word_embeddings = false;
  w = zeros_like_params(c, DType::F64);
  names.clear();
  for_each_param(c, w, [&](const std::string& name, Tensor& t) {
    names.push_back(name);
    CHECK(t.dtype() == DType::F64);
    CHECK(t.shape() == expected_param_shape(c, name));
  });
  CHECK(names.size() == 1 + 2 * 11 + 2);
  CHECK(names.back() == "lm_head.weight");
  CHECK(w.lm_head.raw() != w.embedding.raw());
  w.layers.pop_back();
  require_error([&] { for_each_param(c, w, [](const std::string&, Tensor&) {}); },
                {"model weights hold 1 layers, the config 2"});
}

TEST_CASE("load_model_weights reads every parameter and converts F32 and BF16 files",
          "[model][weights]") {
  const ModelConfig c = tiny_config();
  const auto params = tiny_params(c);
  for (DType stored : {DType::F32, DType::BF16, DType::F16}) {
    // BF16: frozen weights held in bf16 (model/weight_storage.h).
    for (DType want : {DType::F32, DType::F64, DType::BF16}) {
      DYNAMIC_SECTION(dtype_name(stored) << " -> " << dtype_name(want)) {
        TempDir dir;
        write_model(dir, params, stored);
        ModelWeights w = load_model_weights(dir.path().string(), c, want);
        int n = 0;
        for_each_param(c, w, [&](const std::string& name, Tensor& t) {
          INFO(name);
          CHECK(t.dtype() == want);
          CHECK(same_values(t, find(params, name)));  // k/8 values are exact in every dtype
          ++n;
        });
        CHECK(n == int(params.size()));
        CHECK(w.lm_head.raw() == w.embedding.raw());  // tied and absent: aliased
      }
    }
  }
  require_error([&] { load_model_weights("/nonexistent-dir", c, DType::F16); },
                {"weights load as F32, F64 or BF16, not F16"});
}

TEST_CASE("load_model_weights: a missing tensor is named with its expected shape",
          "[model][weights]") {
  TempDir dir;
  const ModelConfig c = tiny_config();
  write_model(dir, without(tiny_params(c), "backbone.layers.1.mixer.D"));
  require_load_error(dir, c,
                     {dir.path().string() +
                      ": missing tensor \"backbone.layers.1.mixer.D\", expected shape (8,)"});
}

TEST_CASE("load_model_weights: a wrong shape names the tensor, the expected and the found shape",
          "[model][weights]") {
  TempDir dir;
  const ModelConfig c = tiny_config();
  write_model(dir, replaced(tiny_params(c), "backbone.layers.0.mixer.x_proj.weight",
                            Tensor::zeros({7, 8}, DType::F32)));
  require_load_error(dir, c,
                     {"model.safetensors: tensor \"backbone.layers.0.mixer.x_proj.weight\": "
                      "expected shape (8, 8), found (7, 8)"});
  // The config is read the other way round too: a checkpoint of another size does not load.
  ModelConfig bigger = c;
  bigger.d_state = 4;
  write_model(dir, tiny_params(c));
  require_load_error(
      dir, bigger,
      {"tensor \"backbone.layers.0.mixer.x_proj.weight\": expected shape (10, 8), found (8, 8)",
       "and 1 more problem"});
}

TEST_CASE("load_model_weights: unexpected tensors are named", "[model][weights]") {
  TempDir dir;
  const ModelConfig c = tiny_config();
  auto params = tiny_params(c);
  params.push_back({"backbone.layers.0.mixer.extra", Tensor::zeros({2}, DType::F32)});
  params.push_back({"backbone.layers.2.norm.weight", Tensor::zeros({4}, DType::F32)});
  write_model(dir, params);
  require_load_error(dir, c,
                     {"model.safetensors: unexpected tensor \"backbone.layers.0.mixer.extra\"",
                      "unexpected tensor \"backbone.layers.2.norm.weight\" (config.json has "
                      "num_hidden_layers = 2)"});
}

TEST_CASE("load_model_weights: biases must match use_bias and use_conv_bias", "[model][weights]") {
  TempDir dir;
  ModelConfig c = tiny_config();
  auto params = tiny_params(c);
  params.push_back({"backbone.layers.0.mixer.in_proj.bias", Tensor::zeros({16}, DType::F32)});
  write_model(dir, params);
  require_load_error(dir, c,
                     {"tensor \"backbone.layers.0.mixer.in_proj.bias\" is stored, but config.json "
                      "says use_bias is false"});
  c.use_bias = true;
  require_load_error(dir, c,
                     {"missing tensor \"backbone.layers.0.mixer.out_proj.bias\", expected shape "
                      "(4,) (use_bias is true)"});
  c = tiny_config();
  write_model(dir, without(tiny_params(c), "backbone.layers.1.mixer.conv1d.bias"));
  require_load_error(dir, c,
                     {"missing tensor \"backbone.layers.1.mixer.conv1d.bias\", expected shape (8,) "
                      "(use_conv_bias is true)"});
  c.use_conv_bias = false;
  require_load_error(dir, c,
                     {"tensor \"backbone.layers.0.mixer.conv1d.bias\" is stored, but config.json "
                      "says use_conv_bias is false"});
}

TEST_CASE("load_model_weights: tied and untied lm_head", "[model][weights]") {
  TempDir dir;
  ModelConfig c = tiny_config();
  const auto params = tiny_params(c);
  const Tensor embedding = find(params, "backbone.embeddings.weight");

  SECTION("tied, stored and equal: accepted and aliased") {
    auto p = params;
    p.push_back({"lm_head.weight", embedding.clone()});
    write_model(dir, p);
    const ModelWeights w = load_model_weights(dir.path().string(), c);
    CHECK(w.lm_head.raw() == w.embedding.raw());
  }
  SECTION("tied, stored and different: refused") {
    auto p = params;
    Tensor other = embedding.clone();
    other.data<float>()[5] += 1;
    p.push_back({"lm_head.weight", other});
    write_model(dir, p);
    require_load_error(dir, c,
                       {"tensor \"lm_head.weight\" differs from \"backbone.embeddings.weight\", "
                        "but config.json sets tie_word_embeddings = true"});
  }
  SECTION("untied and absent: refused") {
    c.tie_word_embeddings = false;
    write_model(dir, params);
    require_load_error(dir, c,
                       {"missing tensor \"lm_head.weight\", expected shape (10, 4) "
                        "(tie_word_embeddings is false)"});
  }
  SECTION("untied and stored: its own tensor") {
    c.tie_word_embeddings = false;
    auto p = params;
    Tensor head = embedding.clone();
    head.data<float>()[0] = 99;
    p.push_back({"lm_head.weight", head});
    write_model(dir, p);
    const ModelWeights w = load_model_weights(dir.path().string(), c);
    CHECK(w.lm_head.raw() != w.embedding.raw());
    CHECK(w.lm_head.data<float>()[0] == 99);
    CHECK(same_values(w.embedding, embedding));
  }
}

TEST_CASE("load_model_weights accepts mamba_ssm's embedding name, but not both names",
          "[model][weights]") {
  TempDir dir;
  const ModelConfig c = tiny_config();
  auto params = tiny_params(c);
  for (auto& nt : params)
    if (nt.name == "backbone.embeddings.weight") nt.name = "backbone.embedding.weight";
  write_model(dir, params);
  const ModelWeights w = load_model_weights(dir.path().string(), c);
  CHECK(same_values(w.embedding, find(params, "backbone.embedding.weight")));
  params.push_back({"backbone.embeddings.weight", find(params, "backbone.embedding.weight")});
  write_model(dir, params);
  require_load_error(
      dir, c, {"both \"backbone.embeddings.weight\" and \"backbone.embedding.weight\" are stored"});
}

TEST_CASE("load_model_weights refuses integer tensors and non-finite values", "[model][weights]") {
  TempDir dir;
  const ModelConfig c = tiny_config();
  write_model(dir,
              replaced(tiny_params(c), "backbone.norm_f.weight", Tensor::zeros({4}, DType::I32)));
  require_load_error(
      dir, c, {"tensor \"backbone.norm_f.weight\": expected F32, F16, BF16 or F64, found I32"});
  write_model(dir, tiny_params(c));  // write_safetensors refuses NaN: put it in the file after
  poke_f32(dir / "model.safetensors", "backbone.layers.0.mixer.D", 3,
           std::numeric_limits<float>::quiet_NaN());
  require_load_error(
      dir, c,
      {"tensor \"backbone.layers.0.mixer.D\" holds a non-finite value (NaN or Inf) at element 3"});
  // Held in bf16 (frozen weights): a float beyond bf16's largest finite value (~3.39e38) rounds
  // to Inf, which the same check catches, saying so.
  Tensor big = Tensor::zeros({8}, DType::F32);
  big.data<float>()[5] = std::numeric_limits<float>::max();
  write_model(dir, replaced(tiny_params(c), "backbone.layers.0.mixer.D", big));
  CHECK_NOTHROW(load_model_weights(dir.path().string(), c, DType::F32));
  require_error([&] { load_model_weights(dir.path().string(), c, DType::BF16); },
                {"holds a non-finite value (NaN or Inf) at element 5 once converted to BF16"});
}

// Fixtures from data_scripts/make_fixtures.py (transformers' MambaForCausalLM, saved with
// save_pretrained). Every Mamba fixture directory is loaded, so new fixtures are picked up.
TEST_CASE("every Mamba fixture model loads with the shapes its config implies",
          "[model][weights][fixtures]") {
  namespace fs = std::filesystem;
  const fs::path root = SSMTUNE_FIXTURES_DIR;
  std::vector<fs::path> model_dirs;
  if (fs::is_directory(root))
    for (const auto& e : fs::directory_iterator(root))
      if (fs::exists(e.path() / "config.json")) model_dirs.push_back(e.path());
  if (model_dirs.empty()) {
    WARN("no fixture models under " << root << ": run data_scripts/make_fixtures.py");
    return;
  }
  std::sort(model_dirs.begin(), model_dirs.end());
  int n_loaded = 0;
  bool saw_sharded_bf16 = false;
  for (const fs::path& dir : model_dirs) {
    const auto j = read_json_file(dir / "config.json");
    if (j.value("model_type", "mamba") != "mamba") continue;  // Mamba-2 / Jamba: their own tests
    {
      INFO("fixture " << dir.string());
      const ModelConfig c = load_model_config(dir.string());
      const SafetensorsCheckpoint ckpt = SafetensorsCheckpoint::open(dir);
      for (DType want : {DType::F32, DType::F64}) {
        ModelWeights w = load_model_weights(dir.string(), c, want);
        std::int64_t n_params = 0;
        int n_tensors = 0;
        for_each_param(c, w, [&](const std::string& name, Tensor& t) {
          INFO(name);
          CHECK(t.shape() == expected_param_shape(c, name));
          CHECK(t.dtype() == want);
          // Same values as stored, converted exactly (F16/BF16/F32 all widen exactly).
          CHECK(same_values(t, ckpt.tensor(name)));
          n_params += t.numel();
          ++n_tensors;
        });
        CHECK(n_tensors == int(ckpt.names().size()));  // every stored tensor is a parameter
        CHECK(n_params > 0);
        CHECK(w.layers.size() == std::size_t(c.n_layer));
        if (c.tie_word_embeddings) CHECK(w.lm_head.raw() == w.embedding.raw());
      }
      if (dir.filename() == "mamba-sharded-bf16") {
        saw_sharded_bf16 = true;
        CHECK(ckpt.sharded());
        CHECK(ckpt.files().size() > 1);
        CHECK(ckpt.entry("backbone.embeddings.weight").dtype == DType::BF16);
      }
      // The reference outputs were written by Python's safetensors: our reader must agree.
      for (const char* ref : {"reference.safetensors", "reference_f64.safetensors"})
        if (fs::exists(dir / ref)) CHECK(!SafetensorsFile::open(dir / ref).entries().empty());
      ++n_loaded;
    }
  }
  // Not vacuous: fixtures exist, so at least one Mamba model must have been checked.
  CHECK(n_loaded > 0);
  if (fs::exists(root / "mamba-sharded-bf16")) CHECK(saw_sharded_bf16);
}
