// The "layers.I." / "layers.I-J." prefix that restricts a PEFT target (LoRA targets, partial
// tuning's tensors) to some layers.
#pragma once

#include <cstdint>
#include <string>

namespace ssmtune {

// Takes an optional layer prefix off `name` (in place) and sets [first, last] to its layers, or
// to every layer [0, n_layer) when there is none; returns whether there was one. UsageError,
// naming `field` and `original`, for a malformed range or layers the model does not have.
bool take_layer_range(std::string& name, std::int64_t n_layer, std::int64_t& first,
                      std::int64_t& last, const std::string& field, const std::string& original);

}  // namespace ssmtune
