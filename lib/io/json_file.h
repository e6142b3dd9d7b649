// Reading JSON input files (config.json, index files, experiment configs) strictly enough
// that a hostile or mistyped file gives one clear error instead of a crash or a surprise.
#pragma once

#include <cstddef>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace ssmtune {

// Config and index files are kilobytes; tokenizer.json a few megabytes. Anything past this is
// not one of ours, and reading it whole would be the "huge allocation" docs/conventions.md forbids.
inline constexpr std::size_t kMaxJsonFileBytes = std::size_t(64) << 20;
inline constexpr int kMaxJsonDepth = 64;

// Parses `text`; every error is an ssmtune::Error that starts with `source`:
//   <source>:3:14: invalid JSON: syntax error while parsing object - unexpected '}'; ...
//   <source>: duplicate key "lr" in object "optimizer"
// Duplicate keys are errors: nlohmann keeps the last one silently, Python's json too, other
// readers the first, so such a file means different things to different tools.
// Nesting deeper than max_depth is an error (bounded work on hostile input).
nlohmann::json parse_json_text(std::string_view text, const std::string& source,
                               int max_depth = kMaxJsonDepth);

// The bytes of `path`, a regular file of at most max_bytes bytes (errors name the path).
std::string read_json_text(const std::filesystem::path& path,
                           std::size_t max_bytes = kMaxJsonFileBytes);

// Reads `path` (a regular file of at most max_bytes bytes) and parses it as above, with the
// path as the source in error messages.
nlohmann::json read_json_file(const std::filesystem::path& path,
                              std::size_t max_bytes = kMaxJsonFileBytes);

// Python's json module writes the non-standard constants Infinity, -Infinity and NaN for
// floats (transformers' Mamba2Config.time_step_limit defaults to (0.0, inf)), which a strict
// parser refuses. This reads a config.json that may hold them: outside strings each becomes the
// string "Infinity", "-Infinity" or "NaN", and the reader of the field decides what it means.
nlohmann::json read_python_json_file(const std::filesystem::path& path,
                                     std::size_t max_bytes = kMaxJsonFileBytes);
// The inverse for writing: `j` dumped with `indent`, the strings "Infinity", "-Infinity" and
// "NaN" written as Python's bare constants (so transformers reads them back as floats).
std::string dump_python_json(const nlohmann::json& j, int indent);

// A JSON value described for an error message: `string "16"`, `number -3`, `boolean true`,
// `null`, `an array`, `an object`. Long strings are cut.
std::string describe_json_value(const nlohmann::json& v);

// `s` in double quotes with control characters escaped and cut to max_chars, so a hostile
// name cannot break the one-line error format or flood the terminal.
std::string quote_str(std::string_view s, std::size_t max_chars = 200);

}  // namespace ssmtune
