#include "io/json_fields.h"

#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "io/json_file.h"

namespace ssmtune {

JsonFields::JsonFields(const nlohmann::json& object, std::string file, std::string prefix)
    : object_(object), file_(std::move(file)), prefix_(std::move(prefix)) {
  if (!object_.is_object()) {
    const std::string what =
        prefix_.empty() ? file_ + ": expected a JSON object"
                        : file_ + ": field " + quote_str(prefix_.substr(0, prefix_.size() - 1)) +
                              ": expected an object";
    throw Error(what + ", got " + describe_json_value(object_));
  }
}

std::string JsonFields::where(const std::string& key) const {
  return file_ + ": field " + quote_str(prefix_ + key);
}

void JsonFields::fail(const std::string& key, const std::string& expected) const {
  // A check on a defaulted value fails for an absent field too (Jamba's num_attention_heads
  // default 32 against hidden_size 61): say so instead of reading a value that is not there.
  const std::string got =
      has(key) ? describe_json_value(raw(key)) : "nothing (the field is absent)";
  throw Error(where(key) + ": expected " + expected + ", got " + got);
}

std::optional<std::int64_t> JsonFields::get_int(const std::string& key, std::int64_t min,
                                                std::int64_t max) const {
  if (!has(key)) return std::nullopt;
  const std::string kind = min == 1   ? "a positive integer"
                           : min == 0 ? "a non-negative integer"
                                      : "an integer";
  const nlohmann::json& v = raw(key);
  if (!v.is_number_integer()) fail(key, kind);
  const bool past_int64 =
      v.is_number_unsigned() && v.get<std::uint64_t>() > std::uint64_t(INT64_MAX);
  const std::int64_t n = past_int64 ? 0 : v.get<std::int64_t>();
  if (past_int64 || n < min || n > max)
    fail(key, min == 0 || min == 1
                  ? kind + " no larger than " + std::to_string(max)
                  : "an integer from " + std::to_string(min) + " to " + std::to_string(max));
  return n;
}

std::optional<double> JsonFields::get_number(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  const nlohmann::json& v = raw(key);
  if (!v.is_number() || !std::isfinite(v.get<double>())) fail(key, "a number");
  return v.get<double>();
}

std::optional<bool> JsonFields::get_bool(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  if (!raw(key).is_boolean()) fail(key, "true or false");
  return raw(key).get<bool>();
}

std::optional<std::string> JsonFields::get_string(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  if (!raw(key).is_string()) fail(key, "a string");
  return raw(key).get<std::string>();
}

std::optional<std::string> JsonFields::get_choice(
    const std::string& key, std::initializer_list<const char*> choices) const {
  auto s = get_string(key);
  if (!s) return s;
  std::string list;
  for (const char* c : choices) {
    if (*s == c) return s;
    list += std::string(list.empty() ? "" : " or ") + quote_str(c);
  }
  fail(key, list);
}

std::optional<JsonFields> JsonFields::get_object(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  if (!raw(key).is_object()) fail(key, "an object");
  return JsonFields(raw(key), file_, prefix_ + key + ".");
}

}  // namespace ssmtune
