// Fuzz target: one safetensors file, header and data, through SafetensorsFile::open (what every
// model, adapter and optimizer read goes through), then every tensor read and converted as the
// loaders do, and the non-finite check adapters and optimizer state get.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "fuzz_files.h"
#include "io/finite_tensors.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static ssmtune::fuzz::ScratchDir dir;
  dir.write({"model.safetensors"}, {{reinterpret_cast<const char*>(data), size}});
  try {
    const auto st = ssmtune::SafetensorsFile::open(dir.path() / "model.safetensors");
    for (const auto& e : st.entries()) {
      const ssmtune::Tensor t = st.tensor(e.name);
      if (t.dtype() != ssmtune::DType::BOOL) (void)t.to(ssmtune::DType::F32);
    }
    ssmtune::check_finite_tensors(st);
  } catch (const ssmtune::Error&) {  // the expected refusal of a bad file
  }
  return 0;
}
