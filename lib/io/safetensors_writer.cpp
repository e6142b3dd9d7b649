#include <algorithm>
#include <set>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/finite_tensors.h"
#include "io/json_file.h"
#include "io/safetensors.h"

namespace ssmtune {

void write_safetensors(const std::filesystem::path& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string where = path.string();
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__")
      throw Error(where + ": \"__metadata__\" is reserved, not a tensor name");
    if (!seen.insert(name).second)
      throw Error(where + ": tensor " + quote_str(name) + " given twice");
    if (!t.defined()) throw Error(where + ": tensor " + quote_str(name) + " is undefined");
  }

  // The reference writer's order (safetensors tensor.rs prepare): largest alignment first, so
  // every offset is a multiple of its dtype size.
  std::vector<const NamedTensor*> order(tensors.size());
  std::transform(tensors.begin(), tensors.end(), order.begin(),
                 [](const NamedTensor& nt) { return &nt; });
  std::sort(order.begin(), order.end(), [](const NamedTensor* a, const NamedTensor* b) {
    const std::size_t sa = dtype_size(a->tensor.dtype()), sb = dtype_size(b->tensor.dtype());
    return sa != sb ? sa > sb : a->name < b->name;
  });

  // ordered_json keeps __metadata__ first and the tensors in data order, as a reader expects.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  auto& meta = header["__metadata__"] = nlohmann::ordered_json::object();
  if (!metadata.count("format")) meta["format"] = "pt";
  for (const auto& [key, value] : metadata) meta[key] = value;
  std::uint64_t offset = 0;
  for (const NamedTensor* nt : order) {
    const std::uint64_t n_bytes = nt->tensor.nbytes();
    header[nt->name] = {{"dtype", std::string(dtype_name(nt->tensor.dtype()))},
                        {"shape", nt->tensor.shape()},
                        {"data_offsets", {offset, offset + n_bytes}}};
    offset += n_bytes;
  }
  std::string text;
  try {
    text = header.dump();  // strict: a name or value that is not UTF-8 is an error
  } catch (const nlohmann::json::exception& e) {
    throw Error(where + ": a tensor name or metadata value is not valid UTF-8 (" + e.what() + ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // data area starts 8-byte aligned

  unsigned char length_le[8];
  for (int i = 0; i < 8; ++i)
    length_le[i] = static_cast<unsigned char>(std::uint64_t(text.size()) >> (8 * i));
  AtomicFile out(path);
  out.write(length_le, 8);
  out.write(text);
  for (const NamedTensor* nt : order) {
    const Tensor host = nt->tensor.host_readable();
    // A model, adapter or checkpoint holding NaN or Inf is one ssmtune itself refuses to read
    // (finite_tensors.h): not written. The temporary is removed, the old file stays.
    if (const std::int64_t bad = first_non_finite(host); bad >= 0)
      throw Error(where + ": tensor " + quote_str(nt->name) +
                  " holds a non-finite value (NaN or Inf) at element " + std::to_string(bad) +
                  "; not writing it");
    if (host.nbytes()) out.write(static_cast<const char*>(host.raw()), host.nbytes());
  }
  out.commit();
}

}  // namespace ssmtune
