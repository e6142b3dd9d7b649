#include "data/jsonl_dataset.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <utility>

#include "core/error.h"
#include "io/json_fields.h"
#include "io/json_file.h"
#include "io/mapped_file.h"

namespace ssmtune {

namespace {

// Lines of a file, read in fixed-size chunks so a line is never held past kMaxJsonlLineBytes
// (std::getline would grow its string to the whole of a file without newlines).
class LineReader {
 public:
  explicit LineReader(const std::string& path) : path_(path), buf_(std::size_t(1) << 16) {
    std::size_t size = 0;
    fd_ = open_regular_file(path, size);  // names the path if missing, a directory, a FIFO
  }
  ~LineReader() { ::close(fd_); }
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // The next line without its "\n" or "\r\n" (and without a UTF-8 BOM on line 1); false at the
  // end of the file. A last line without "\n" is still a line.
  bool next(std::string& line) {
    line.clear();
    bool any = false;
    for (;;) {
      if (pos_ == n_ && !fill()) break;
      any = true;
      const char* begin = buf_.data() + pos_;
      const char* newline = static_cast<const char*>(std::memchr(begin, '\n', n_ - pos_));
      const std::size_t take = newline ? std::size_t(newline - begin) : n_ - pos_;
      if (line.size() + take > kMaxJsonlLineBytes)
        throw Error(path_ + ":" + std::to_string(line_ + 1) + ": line is longer than " +
                    std::to_string(kMaxJsonlLineBytes >> 20) +
                    " MiB; is this a JSONL file (one JSON object per line)?");
      line.append(begin, take);
      pos_ += take;
      if (newline) {
        ++pos_;
        break;
      }
    }
    if (!any) return false;
    ++line_;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_ == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);
    return true;
  }
  std::int64_t line_number() const { return line_; }

 private:
  bool fill() {
    for (;;) {
      const ssize_t n = ::read(fd_, buf_.data(), buf_.size());
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n < 0)
        throw Error(path_ + ":" + std::to_string(line_ + 1) +
                    ": read failed: " + std::strerror(errno));
      pos_ = 0;
      n_ = std::size_t(n);
      return n > 0;
    }
  }

  std::string path_;
  int fd_ = -1;
  std::vector<char> buf_;
  std::size_t pos_ = 0, n_ = 0;
  std::int64_t line_ = 0;
};

bool is_blank(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t'; });
}

// parse_json_text reports "<where>:1:COL: invalid JSON: ..." (line 1 of its one-line text);
// said as "<where>: invalid JSON at column COL: ..." the message names the file line once.
nlohmann::json parse_line(const std::string& text, const std::string& where) {
  try {
    return parse_json_text(text, where);
  } catch (const Error& e) {
    const std::string msg = e.what();
    const std::string prefix = where + ":1:";
    const std::string marker = ": invalid JSON: ";
    const auto at = msg.find(marker, prefix.size());
    if (msg.rfind(prefix, 0) != 0 || at == std::string::npos) throw;
    throw Error(where + ": invalid JSON at column " +
                msg.substr(prefix.size(), at - prefix.size()) + ": " +
                msg.substr(at + marker.size()));
  }
}

std::string key_list(const nlohmann::json& obj) {
  std::string out;
  int n = 0;
  for (auto it = obj.begin(); it != obj.end(); ++it, ++n) {
    if (n == 8) return out + ", ...";
    out += (n ? ", " : "") + quote_str(it.key(), 40);
  }
  return out.empty() ? "(none)" : out;
}

// The format of a file from the keys of its first line (docs/datasets.md "Auto").
DataFormat detect_format(const nlohmann::json& obj, const std::string& where) {
  if (obj.contains("input_ids")) return DataFormat::Tokens;
  if (obj.contains("label")) return DataFormat::Classification;
  if (obj.contains("prompt") && obj.contains("completion")) return DataFormat::PromptCompletion;
  if (obj.contains("text")) return DataFormat::Text;
  throw Error(where + ": cannot tell the data format from the keys " + key_list(obj) +
              "; expected \"text\", \"prompt\" and \"completion\", \"label\" with \"prompt\" or "
              "\"text\", or \"input_ids\" (or set data.format)");
}

std::string list_names(const std::vector<std::string>& names) {
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i == 10) return out + ", ... (" + std::to_string(names.size()) + " in all)";
    out += (i ? ", " : "") + quote_str(names[i], 60);
  }
  return out;
}

class Loader {
 public:
  Loader(const std::string& path, const DataConfig& cfg, const Tokenizer& tok)
      : path_(path), cfg_(cfg), tok_(tok) {
    ds_.path = path;
    if (cfg.max_length < 2)
      throw UsageError("data.max_length must be at least 2, got " + std::to_string(cfg.max_length));
    if (cfg.format != DataFormat::Auto) set_format(cfg.format, 0);
  }

  void add_line(const std::string& text, std::int64_t line) {
    where_ = path_ + ":" + std::to_string(line);
    const nlohmann::json j = parse_line(text, where_);
    const JsonFields f(j, where_);  // throws unless the line is an object
    if (ds_.format == DataFormat::Auto) set_format(detect_format(j, where_), line);
    Example ex;
    ex.line = line;
    switch (ds_.format) {
      case DataFormat::Text: {
        ex.input_ids = tok_.encode(required_string(f, "text"));
        ex.labels = ex.input_ids;
        append_eos(ex);
        break;
      }
      case DataFormat::PromptCompletion: {
        const std::string prompt = required_string(f, "prompt");
        add_prompt_completion(ex, tok_.encode(prompt),
                              tok_.encode(required_string(f, "completion")));
        append_eos(ex);
        break;
      }
      case DataFormat::Classification: add_classification(ex, f); break;
      case DataFormat::Tokens: add_tokens(ex, f); break;
      case DataFormat::Auto: break;  // resolved above
    }
    fit_to_max_length(ex);
    ds_.examples.push_back(std::move(ex));
  }

  Dataset finish(const std::vector<std::string>& given_class_names) {
    if (ds_.examples.empty())
      throw Error(path_ + ": no examples (the file is empty or has only blank lines)");
    if (ds_.format == DataFormat::Classification) resolve_classes(given_class_names);
    if (cfg_.packing) pack();
    return std::move(ds_);
  }

 private:
  void set_format(DataFormat format, std::int64_t line) {
    ds_.format = format;
    format_origin_ =
        "format \"" + std::string(data_format_name(format)) + "\"" +
        (line > 0 ? ", detected from line " + std::to_string(line) : " from data.format");
    const bool text_like = format == DataFormat::Text || format == DataFormat::PromptCompletion;
    if (cfg_.packing && format != DataFormat::Text && format != DataFormat::Tokens)
      throw UsageError("data.packing is only for the \"text\" and \"tokens\" formats; " + path_ +
                       " is " + format_origin_);
    if (cfg_.add_eos && text_like) {
      eos_ = tok_.eos_id();
      if (!eos_)
        throw UsageError("data.add_eos is true but the tokenizer " + quote_str(tok_.source()) +
                         " has no EOS token; set data.add_eos = false");
    }
  }

  const std::string& required_string(const JsonFields& f, const std::string& key) {
    if (!f.has(key)) missing(quote_str(key));
    scratch_ = *f.get_string(key);  // names file:line and field when not a string
    return scratch_;
  }
  [[noreturn]] void missing(const std::string& what) const {
    throw Error(where_ + ": missing field " + what + " (" + format_origin_ + ")");
  }

  void append_eos(Example& ex) const {
    if (!eos_) return;
    ex.input_ids.push_back(*eos_);
    ex.labels.push_back(*eos_);  // the model learns to stop
  }

  static void add_prompt_completion(Example& ex, const std::vector<std::int64_t>& prompt,
                                    const std::vector<std::int64_t>& completion) {
    ex.prompt_length = std::int64_t(prompt.size());
    ex.input_ids = prompt;
    ex.input_ids.insert(ex.input_ids.end(), completion.begin(), completion.end());
    ex.labels.assign(prompt.size(), kIgnoreLabel);
    ex.labels.insert(ex.labels.end(), completion.begin(), completion.end());
  }

  // Prompt + " " + label with loss on the label tokens only; no EOS (docs/datasets.md).
  void add_classification(Example& ex, const JsonFields& f) {
    const char* prompt_key = f.has("prompt") ? "prompt" : "text";
    if (!f.has(prompt_key)) missing("\"prompt\" (or \"text\")");
    const std::vector<std::int64_t> prompt = tok_.encode(required_string(f, prompt_key));
    const std::string label = required_string(f, "label");
    if (label.empty()) throw Error(f.where("label") + ": expected a label word, got \"\"");
    if (prompt.empty())
      throw Error(f.where(prompt_key) +
                  ": the prompt encodes to no tokens; the label is scored from the last prompt "
                  "position, so a classification prompt needs at least one token");
    add_prompt_completion(ex, prompt, label_ids(label, where_));
    example_labels_.push_back(label);
  }

  const std::vector<std::int64_t>& label_ids(const std::string& label, const std::string& where) {
    auto it = label_ids_.find(label);
    if (it == label_ids_.end()) {
      std::vector<std::int64_t> ids = tok_.encode(" " + label);
      if (ids.empty()) throw Error(where + ": label " + quote_str(label) + " encodes to no tokens");
      it = label_ids_.emplace(label, std::move(ids)).first;
    }
    return it->second;
  }

  std::vector<std::int64_t> read_ids(const JsonFields& f, const std::string& key,
                                     bool allow_ignore) const {
    const nlohmann::json& v = f.raw(key);
    if (!v.is_array()) f.fail(key, "an array of token ids");
    const std::int64_t vocab = tok_.vocab_size();
    std::vector<std::int64_t> ids;
    ids.reserve(v.size());  // bounded by the line length
    for (std::size_t i = 0; i < v.size(); ++i) {
      const nlohmann::json& x = v[i];
      const bool is_int =
          x.is_number_integer() && !(x.is_number_unsigned() && x.get<std::uint64_t>() > INT64_MAX);
      const std::int64_t id = is_int ? x.get<std::int64_t>() : -1;
      if (is_int && ((id >= 0 && id < vocab) || (allow_ignore && id == kIgnoreLabel))) {
        ids.push_back(id);
        continue;
      }
      throw Error(f.where(key) + "[" + std::to_string(i) + "]: expected " +
                  (allow_ignore ? "-100 or " : "") + "a token id from 0 to " +
                  std::to_string(vocab - 1) + ", got " + describe_json_value(x));
    }
    return ids;
  }

  // Pre-tokenised: taken verbatim (no EOS added); labels default to the input ids.
  void add_tokens(Example& ex, const JsonFields& f) const {
    if (!f.has("input_ids")) missing("\"input_ids\"");
    ex.input_ids = read_ids(f, "input_ids", false);
    if (ex.input_ids.empty())
      throw Error(f.where("input_ids") + ": expected at least one token id, got an empty array");
    if (!f.has("labels")) {
      ex.labels = ex.input_ids;
      return;
    }
    ex.labels = read_ids(f, "labels", true);
    if (ex.labels.size() != ex.input_ids.size())
      throw Error(f.where("labels") + ": expected one label per input id (" +
                  std::to_string(ex.input_ids.size()) + "), got " +
                  std::to_string(ex.labels.size()) + " labels");
    while (ex.prompt_length < std::int64_t(ex.labels.size()) &&
           ex.labels[ex.prompt_length] == kIgnoreLabel)
      ++ex.prompt_length;
  }

  // Applies data.too_long and refuses examples that would carry no loss. Packing cuts blocks
  // of its own, so there the length of one example does not matter.
  void fit_to_max_length(Example& ex) {
    if (cfg_.packing) return;
    const std::int64_t n = std::int64_t(ex.input_ids.size());
    const std::int64_t max = cfg_.max_length;
    if (n > max) {
      if (cfg_.too_long == TooLong::Error)
        throw Error(where_ + ": example is " + std::to_string(n) +
                    " tokens, more than data.max_length = " + std::to_string(max) +
                    "; raise data.max_length or set data.too_long = \"truncate\"");
      const bool has_completion =
          ds_.format == DataFormat::PromptCompletion || ds_.format == DataFormat::Classification;
      if (has_completion && ex.prompt_length >= max)
        throw Error(where_ + ": the prompt alone is " + std::to_string(ex.prompt_length) +
                    " tokens, so truncating to data.max_length = " + std::to_string(max) +
                    " would cut all of the completion; raise data.max_length or shorten it");
      ex.input_ids.resize(std::size_t(max));
      ex.labels.resize(std::size_t(max));
      ex.prompt_length = std::min(ex.prompt_length, max);
      ++ds_.n_truncated;
    }
    if (count_loss_tokens(ex.labels) > 0) return;
    const char* why = "";
    switch (ds_.format) {
      case DataFormat::Text: why = "a text of fewer than 2 tokens has nothing to predict"; break;
      case DataFormat::PromptCompletion:
        why =
            "the completion is empty and data.add_eos is false, or the prompt is empty and "
            "the completion is one token (the first token is never predicted)";
        break;
      default: why = "every label after the first is -100"; break;
    }
    throw Error(where_ + ": example has no tokens to learn from: " + why);
  }

  void resolve_classes(const std::vector<std::string>& given) {
    std::vector<std::string> names = given;
    std::string origin = "the train set's labels";
    if (names.empty() && !cfg_.labels.empty()) {
      names = cfg_.labels;
      origin = "data.labels";
    }
    if (names.empty()) {
      std::set<std::string> unique(example_labels_.begin(), example_labels_.end());
      names.assign(unique.begin(), unique.end());
      origin = "the labels of this file";
      if (names.size() < 2)
        throw Error(path_ + ": every example has the label " + quote_str(names[0]) +
                    "; classification needs at least two classes (or list them in data.labels)");
    }
    std::map<std::string, std::int64_t> index;
    std::map<std::int64_t, std::string> by_first_token;
    for (const std::string& name : names) {
      if (name.empty()) throw UsageError(origin + ": a label word is \"\"");
      if (!index.emplace(name, std::int64_t(index.size())).second)
        throw UsageError(origin + ": label " + quote_str(name) + " is listed twice");
      const std::int64_t first = label_ids(name, path_)[0];
      const auto [it, fresh] = by_first_token.emplace(first, name);
      if (!fresh)
        throw Error(path_ + ": label words " + quote_str(it->second) + " and " + quote_str(name) +
                    " both start with token " + std::to_string(first) +
                    "; classification scores the first token of encode(\" \" + label), so "
                    "the label words' first tokens must differ");
      ds_.class_token_ids.push_back(first);
    }
    for (std::size_t i = 0; i < ds_.examples.size(); ++i) {
      const auto it = index.find(example_labels_[i]);
      if (it == index.end())
        throw Error(path_ + ":" + std::to_string(ds_.examples[i].line) +
                    ": field \"label\": " + quote_str(example_labels_[i]) +
                    " is not one of the class names (" + list_names(names) + ") from " + origin);
      ds_.examples[i].class_index = it->second;
    }
    ds_.class_names = std::move(names);
  }

  // Concatenates every example in file order and cuts max_length blocks; a last block of at
  // least 2 tokens (one prediction) is kept.
  void pack() {
    const std::size_t max = std::size_t(cfg_.max_length);
    std::vector<Example> blocks;
    Example block;
    for (Example& ex : ds_.examples) {
      for (std::size_t t = 0; t < ex.input_ids.size(); ++t) {
        if (block.input_ids.empty()) block.line = ex.line;
        block.input_ids.push_back(ex.input_ids[t]);
        block.labels.push_back(ex.labels[t]);
        if (block.input_ids.size() == max) blocks.push_back(std::exchange(block, Example{}));
      }
      ex = Example{};  // frees the source as the blocks grow
    }
    if (block.input_ids.size() >= 2) blocks.push_back(std::move(block));
    if (blocks.empty())
      throw Error(path_ + ": packing found fewer than 2 tokens in the whole file");
    const auto no_loss = std::find_if(blocks.begin(), blocks.end(), [](const Example& b) {
      return count_loss_tokens(b.labels) == 0;
    });
    if (no_loss != blocks.end())
      throw Error(path_ + ":" + std::to_string(no_loss->line) +
                  ": the packed block starting at this line has no tokens to learn from (every "
                  "label after the first is -100)");
    ds_.examples = std::move(blocks);
  }

  const std::string& path_;
  const DataConfig& cfg_;
  const Tokenizer& tok_;
  Dataset ds_;
  std::string where_;                // "<path>:<line>" of the line being read
  std::string format_origin_;        // how the format was chosen, for messages
  std::optional<std::int64_t> eos_;  // set when EOS is appended
  std::string scratch_;
  std::vector<std::string> example_labels_;  // classification: the label of each example
  std::map<std::string, std::vector<std::int64_t>> label_ids_;  // label -> encode(" " + label)
};

}  // namespace

Dataset load_jsonl_dataset(const std::string& path, const DataConfig& cfg,
                           const Tokenizer& tokenizer,
                           const std::vector<std::string>& class_names) {
  Loader loader(path, cfg, tokenizer);
  LineReader lines(path);
  std::string text;
  while (lines.next(text))
    if (!is_blank(text)) loader.add_line(text, lines.line_number());
  return loader.finish(class_names);
}

std::string_view data_format_name(DataFormat format) {
  switch (format) {
    case DataFormat::Auto: return "auto";
    case DataFormat::Text: return "text";
    case DataFormat::PromptCompletion: return "prompt_completion";
    case DataFormat::Tokens: return "tokens";
    case DataFormat::Classification: return "classification";
  }
  return "?";
}

std::int64_t count_loss_tokens(const std::vector<std::int64_t>& labels) {
  std::int64_t n = 0;
  for (std::size_t t = 1; t < labels.size(); ++t) n += labels[t] != kIgnoreLabel;
  return n;
}

}  // namespace ssmtune
