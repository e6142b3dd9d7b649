// Typed, range-checked reads of the fields of one JSON object (a config.json, a section of
// one), so every mistyped field gives the same kind of error:
//   m/config.json: field "state_size": expected a positive integer, got string "16"
// Absent fields read as std::nullopt: the caller supplies the default.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace ssmtune {

class JsonFields {
 public:
  // `object` must outlive this reader. `prefix` names a nested section in messages
  // ("ssm_cfg." -> field "ssm_cfg.d_state"). Throws Error unless `object` is an object.
  JsonFields(const nlohmann::json& object, std::string file, std::string prefix = "");

  bool has(const std::string& key) const { return object_.contains(key); }
  const nlohmann::json& raw(const std::string& key) const { return object_.at(key); }

  // An integer (not 16.0, not "16") in [min, max].
  std::optional<std::int64_t> get_int(const std::string& key, std::int64_t min,
                                      std::int64_t max) const;
  // Any finite number; range checks are the caller's (via fail()).
  std::optional<double> get_number(const std::string& key) const;
  std::optional<bool> get_bool(const std::string& key) const;
  std::optional<std::string> get_string(const std::string& key) const;
  // A string that must be one of `choices`.
  std::optional<std::string> get_choice(const std::string& key,
                                        std::initializer_list<const char*> choices) const;
  // A nested object, read with prefix "<prefix><key>.".
  std::optional<JsonFields> get_object(const std::string& key) const;

  // `"<file>: field "<prefix><key>""`, the start of every message about that field.
  std::string where(const std::string& key) const;
  // Throws `<where(key)>: expected <expected>, got <the value found>` (or, for an absent
  // field whose default failed a check, `got nothing (the field is absent)`).
  [[noreturn]] void fail(const std::string& key, const std::string& expected) const;

 private:
  const nlohmann::json& object_;
  std::string file_;
  std::string prefix_;
};

}  // namespace ssmtune
