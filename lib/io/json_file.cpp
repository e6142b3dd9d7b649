#include "io/json_file.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <vector>

#include "core/error.h"
#include "io/mapped_file.h"

namespace ssmtune {

namespace {

// Where the parser is inside the document, to name the object holding a duplicate key.
struct Frame {
  bool is_object = false;
  std::set<std::string> keys;  // keys seen so far (objects only)
  std::string last_key;
  std::size_t n_children = 0;  // completed children (arrays: the next index)
  std::string label;           // how the parent names this container: "\"key\"" or "[3]"
};

std::string frame_path(const std::vector<Frame>& stack) {
  if (stack.size() <= 1) return "the top-level object";
  std::string path;
  for (std::size_t i = 1; i < stack.size(); ++i)
    path += (i > 1 && stack[i].label[0] != '[' ? "." : "") + stack[i].label;
  return "object " + path;
}

std::string child_label(const Frame& parent) {
  if (parent.is_object) return quote_str(parent.last_key, 80);
  // Appended piecewise: "[" + std::to_string(n) trips a g++ 12 -Wrestrict false positive.
  std::string label = "[";
  label += std::to_string(parent.n_children);
  label += ']';
  return label;
}

// "[json.exception.parse_error.101] parse error at line 1, column 2: REASON" -> "REASON",
// "[json.exception.out_of_range.406] REASON" -> "REASON"
std::string parse_error_reason(const char* what) {
  std::string_view w(what);
  if (const auto id_end = w.find("] "); !w.empty() && w[0] == '[' && id_end != w.npos)
    w.remove_prefix(id_end + 2);
  const auto at = w.find("parse error");
  const auto colon = at == std::string_view::npos ? at : w.find(": ", at);
  return std::string(colon == std::string_view::npos ? w : w.substr(colon + 2));
}

// "LINE:COLUMN" (1-based) of byte `pos` of `text`.
std::string line_column(std::string_view text, std::size_t pos) {
  pos = std::min(pos, text.size());
  const std::size_t line = 1 + std::size_t(std::count(text.begin(), text.begin() + pos, '\n'));
  std::size_t column = pos + 1;
  if (pos > 0) {
    const std::size_t newline = text.rfind('\n', pos - 1);
    if (newline != std::string_view::npos) column = pos - newline;
  }
  return std::to_string(line) + ":" + std::to_string(column);
}

// A SAX that builds nothing and records where the parser gave up. nlohmann reports a number
// too large for a double (out_of_range.406, "1e999") without a position; parsing the text again
// through this finds it.
struct ErrorPosition : nlohmann::json_sax<nlohmann::json> {
  using json = nlohmann::json;
  std::size_t end = 0;        // bytes read when the error was found: just past the token
  std::size_t token_size = 0;  // the offending token's length
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(json::number_integer_t) override { return true; }
  bool number_unsigned(json::number_unsigned_t) override { return true; }
  bool number_float(json::number_float_t, const json::string_t&) override { return true; }
  bool string(json::string_t&) override { return true; }
  bool binary(json::binary_t&) override { return true; }
  bool start_object(std::size_t) override { return true; }
  bool key(json::string_t&) override { return true; }
  bool end_object() override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t position, const std::string& last_token,
                   const nlohmann::detail::exception&) override {
    end = position;
    token_size = last_token.size();
    return false;
  }
};

// Byte offset of the token where `text` fails to parse (see ErrorPosition).
std::size_t error_token_offset(std::string_view text) {
  ErrorPosition sax;
  nlohmann::json::sax_parse(text.begin(), text.end(), &sax);
  return sax.end >= sax.token_size ? sax.end - sax.token_size : 0;
}

}  // namespace

nlohmann::json parse_json_text(std::string_view text, const std::string& source, int max_depth) {
  std::vector<Frame> stack;
  auto on_event = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    switch (event) {
      case E::object_start:
      case E::array_start: {
        if (int(stack.size()) >= max_depth)
          throw Error(source + ": JSON nested deeper than " + std::to_string(max_depth) +
                      " levels");
        Frame f;
        f.is_object = event == E::object_start;
        if (!stack.empty()) f.label = child_label(stack.back());
        stack.push_back(std::move(f));
        break;
      }
      case E::key: {
        Frame& f = stack.back();
        f.last_key = parsed.get<std::string>();
        if (!f.keys.insert(f.last_key).second)
          throw Error(source + ": duplicate key " + quote_str(f.last_key) + " in " +
                      frame_path(stack));
        break;
      }
      case E::object_end:
      case E::array_end:
        stack.pop_back();
        if (!stack.empty()) ++stack.back().n_children;
        break;
      case E::value:
        if (!stack.empty()) ++stack.back().n_children;
        break;
    }
    return true;
  };
  // nlohmann takes a NUL byte for the end of its input: JSON followed by a NUL and anything at
  // all would parse. A raw NUL is valid nowhere in JSON (in a string it must be \u0000).
  if (const std::size_t nul = text.find('\0'); nul != std::string_view::npos)
    throw Error(source + ":" + line_column(text, nul) + ": invalid JSON: a NUL byte (0x00)");
  try {
    return nlohmann::json::parse(text.begin(), text.end(), on_event);
  } catch (const nlohmann::json::parse_error& e) {
    // e.byte is the 1-based index of the last byte read; report it as line:column.
    throw Error(source + ":" + line_column(text, e.byte == 0 ? 0 : e.byte - 1) +
                ": invalid JSON: " + parse_error_reason(e.what()));
  } catch (const nlohmann::json::out_of_range& e) {
    // A number beyond a double's range ("1e999"): nlohmann gives no position, so find it.
    throw Error(source + ":" + line_column(text, error_token_offset(text)) +
                ": invalid JSON: " + parse_error_reason(e.what()));
  } catch (const nlohmann::json::exception& e) {
    throw Error(source + ": invalid JSON: " + e.what());
  }
}

std::string read_json_text(const std::filesystem::path& path, std::size_t max_bytes) {
  std::size_t size = 0;
  const int fd = open_regular_file(path, size);
  auto too_big = [&](std::size_t n) {
    return Error(path.string() + ": file is " + std::to_string(n) + " bytes, more than the " +
                 std::to_string(max_bytes) + "-byte limit for a JSON file");
  };
  if (size > max_bytes) {
    ::close(fd);
    throw too_big(size);
  }
  // Read until EOF rather than trusting st_size: the file may change under us.
  std::string text(size, '\0');
  std::size_t n_read = 0;
  for (;;) {
    if (n_read == text.size()) {
      if (text.size() > max_bytes) {
        ::close(fd);
        throw too_big(text.size());
      }
      text.resize(text.size() + 4096);
    }
    const ssize_t n = ::read(fd, text.data() + n_read, text.size() - n_read);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      throw Error(path.string() + ": read failed: " + std::strerror(err));
    }
    if (n == 0) break;
    n_read += std::size_t(n);
  }
  ::close(fd);
  text.resize(n_read);
  return text;
}

namespace {

const char* const kPythonConstants[] = {"-Infinity", "Infinity", "NaN"};

}  // namespace

nlohmann::json read_json_file(const std::filesystem::path& path, std::size_t max_bytes) {
  return parse_json_text(read_json_text(path, max_bytes), path.string());
}

nlohmann::json read_python_json_file(const std::filesystem::path& path, std::size_t max_bytes) {
  const std::string text = read_json_text(path, max_bytes);
  std::string out;
  out.reserve(text.size() + 16);
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (in_string) {
      out += ch;
      if (ch == '\\' && i + 1 < text.size()) out += text[++i];
      else if (ch == '"') in_string = false;
      continue;
    }
    if (ch == '"') in_string = true;
    const char* constant = nullptr;
    for (const char* c : kPythonConstants)
      if (text.compare(i, std::strlen(c), c) == 0) constant = c;
    if (!constant) {
      out += ch;
      continue;
    }
    out += '"';
    out += constant;
    out += '"';
    i += std::strlen(constant) - 1;
  }
  return parse_json_text(out, path.string());
}

std::string dump_python_json(const nlohmann::json& j, int indent) {
  std::string text = j.dump(indent);
  for (const char* c : kPythonConstants) {
    const std::string quoted = std::string("\"") + c + "\"";
    for (std::size_t at = text.find(quoted); at != std::string::npos;
         at = text.find(quoted, at + 1))
      text.replace(at, quoted.size(), c);
  }
  return text;
}

std::string describe_json_value(const nlohmann::json& v) {
  using T = nlohmann::json::value_t;
  switch (v.type()) {
    case T::null: return "null";
    case T::boolean: return std::string("boolean ") + (v.get<bool>() ? "true" : "false");
    case T::string: return "string " + quote_str(v.get_ref<const std::string&>(), 60);
    case T::number_integer:
    case T::number_unsigned:
    case T::number_float: return "number " + v.dump();
    case T::array: return "an array";
    case T::object: return "an object";
    default: return "a " + std::string(v.type_name());
  }
}

std::string quote_str(std::string_view s, std::size_t max_chars) {
  std::string out = "\"";
  std::size_t n = 0;
  for (unsigned char ch : s) {
    if (n++ == max_chars) {
      out += "...";
      break;
    }
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += char(ch);
    } else if (ch < 0x20 || ch == 0x7f) {
      static const char* kHex = "0123456789abcdef";
      out += "\\x";
      out += kHex[ch >> 4];
      out += kHex[ch & 15];
    } else {
      out += char(ch);
    }
  }
  return out + "\"";
}

}  // namespace ssmtune
