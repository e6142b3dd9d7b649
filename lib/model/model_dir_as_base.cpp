#include "model/model_dir_as_base.h"

#include <cstring>
#include <map>
#include <set>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/safetensors_checkpoint.h"
#include "model/model_dir.h"

namespace ssmtune {

namespace fs = std::filesystem;

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kEmbeddingMambaSsm = "backbone.embedding.weight";  // mamba_ssm's name
constexpr const char* kLmHead = "lm_head.weight";

// One tensor of the output: its value, and where and how the base stores it.
struct PlannedTensor {
  std::string name;      // written under this name
  Tensor value;          // the merged tensor
  std::string stored;    // the base's name for it; "" when the base lacks it
  std::size_t file = 0;  // index into the base's files()
  DType dtype = DType::F32;
};

// The base tensor a tensor the base lacks sits beside: its module's weight; the embedding for
// an lm_head (it was the embedding until a LoRA term on the embedding untied them).
std::string neighbour_of(const std::string& name, const std::string& embedding) {
  if (name == kLmHead) return embedding;
  if (name.ends_with(".bias")) return name.substr(0, name.size() - 5) + ".weight";
  return "";
}

std::vector<PlannedTensor> plan_tensors(const ModelConfig& c, const ModelWeights& w,
                                        const SafetensorsCheckpoint& base) {
  std::map<fs::path, std::size_t> file_index;
  for (std::size_t i = 0; i < base.files().size(); ++i) file_index[base.files()[i].path()] = i;
  const auto place = [&](PlannedTensor& p, const std::string& from) {
    p.file = file_index.at(base.file_of(from).path());
    p.dtype = base.entry(from).dtype;
  };
  // load_model_weights accepts mamba_ssm's embedding name; the output uses HF's.
  std::string embedding = embedding_name(c);
  if (!base.contains(embedding) && base.contains(kEmbeddingMambaSsm))
    embedding = kEmbeddingMambaSsm;

  std::vector<PlannedTensor> out;
  ModelWeights handles = w;  // for_each_param wants a mutable struct; copies only handles
  for_each_param(c, handles, [&](const std::string& name, Tensor& t) {
    PlannedTensor p{name, t, ""};
    const std::string stored = name == embedding_name(c) ? embedding : name;
    if (base.contains(stored)) {
      p.stored = stored;
      place(p, stored);
    } else {
      const std::string beside = neighbour_of(name, embedding);
      if (beside.empty() || !base.contains(beside))
        throw Error(base.dir().string() + ": the merged model has tensor " + quote_str(name) +
                    ", which the base lacks, and no file of the base holds its module");
      place(p, beside);
    }
    out.push_back(std::move(p));
  });
  // Stored although tied: load_model_weights checked that it equals the embedding; so it stays.
  if (c.tie_word_embeddings && base.contains(kLmHead)) {
    PlannedTensor p{kLmHead, w.embedding, kLmHead};
    place(p, kLmHead);
    out.push_back(std::move(p));
  }
  std::set<std::string> kept;
  for (const PlannedTensor& p : out) kept.insert(p.stored);
  for (const std::string& name : base.names())
    if (!kept.count(name))
      throw Error(base.file_of(name).path().string() + ": tensor " + quote_str(name) +
                  " has no counterpart in the merged model");
  return out;
}

// The tensor as written: w's value rounded once to the stored dtype, or the base file's own
// bytes when they are what rounding gives (an unchanged tensor is copied byte for byte).
Tensor as_stored(const PlannedTensor& p, const SafetensorsCheckpoint& base, bool& changed) {
  const Tensor value = p.value.host_readable();
  Tensor rounded = value.dtype() == p.dtype ? value : value.to(p.dtype);
  changed = true;
  if (p.stored.empty()) return rounded;
  Tensor original = base.tensor(p.stored);
  if (original.nbytes() == rounded.nbytes() &&
      std::memcmp(original.raw(), rounded.raw(), rounded.nbytes()) == 0) {
    changed = false;
    return original;
  }
  return rounded;
}

// config.json's torch_dtype: the dtype that holds the most parameters.
DType main_dtype(const std::vector<PlannedTensor>& plan) {
  std::map<DType, std::int64_t> count;
  for (const PlannedTensor& p : plan) count[p.dtype] += p.value.numel();
  DType best = DType::F32;
  std::int64_t most = -1;
  for (const auto& [dtype, n] : count)
    if (n > most) best = dtype, most = n;
  return best;
}

}  // namespace

WrittenModelDir write_model_dir_as_base(const std::string& dir, const std::string& base_dir,
                                        const ModelConfig& c, const ModelWeights& w, bool overwrite,
                                        const std::vector<fs::path>& extra_files) {
  const SafetensorsCheckpoint base = SafetensorsCheckpoint::open(base_dir);
  const std::vector<PlannedTensor> plan = plan_tensors(c, w, base);
  WrittenModelDir written;
  written.files = base.files().size();
  written.tensors = plan.size();

  ModelDirContents contents;
  contents.config = model_config_to_json(c);
  const DType dtype = main_dtype(plan);
  check(torch_dtype_name(dtype) != nullptr,
        base_dir + ": the base stores its weights as " + std::string(dtype_name(dtype)));
  contents.config["torch_dtype"] = torch_dtype_name(dtype);
  for (const SafetensorsFile& f : base.files())
    contents.weight_files.push_back(f.path().filename().string());
  if (base.sharded()) contents.weight_files.push_back(kIndexName);
  contents.extra_files = extra_files;
  contents.write_weights = [&](const fs::path& staging) {
    std::uint64_t total_bytes = 0;
    nlohmann::json weight_map = nlohmann::json::object();
    for (std::size_t i = 0; i < base.files().size(); ++i) {
      const std::string file_name = base.files()[i].path().filename().string();
      std::vector<NamedTensor> tensors;  // this file's only: freed before the next
      for (const PlannedTensor& p : plan) {
        if (p.file != i) continue;
        bool changed = false;
        tensors.push_back({p.name, as_stored(p, base, changed)});
        written.changed += changed;
        total_bytes += tensors.back().tensor.nbytes();
        weight_map[p.name] = file_name;
      }
      write_safetensors(staging / file_name, tensors, base.files()[i].metadata());
    }
    if (!base.sharded()) return;
    // As transformers writes it: metadata.total_size = the tensors' bytes (headers not counted).
    const nlohmann::json old_index = read_json_file(base.dir() / kIndexName);
    nlohmann::json metadata = old_index.value("metadata", nlohmann::json::object());
    metadata["total_size"] = total_bytes;
    const nlohmann::json index = {{"metadata", metadata}, {"weight_map", weight_map}};
    write_file_atomic(staging / kIndexName, index.dump(2) + "\n");
  };
  write_model_dir(dir, contents, overwrite);
  return written;
}

}  // namespace ssmtune
