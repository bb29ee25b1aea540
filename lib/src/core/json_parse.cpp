// parse_json: the strict RFC 8259 parser that keeps every number exactly, and the exact-number
// values it produces (dedup/json_text.hpp).
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <vector>

#include "core/utf8.hpp"
#include "dedup/json_text.hpp"

namespace dedup {
namespace {

using json = nlohmann::json;
using detail::utf8_sequence_width;

// A strict RFC 8259 parser into nlohmann::json. nlohmann's own parser cannot be used: it turns
// every number with a fraction or exponent into a double, and refuses those beyond a double's
// range outright (1e400, or the 401-digit integer Postgres returns for it), which Postgres's
// numeric stores and returns exactly.
class ExactParser {
 public:
  ExactParser(std::string_view text, JsonParseLimits limits) : text_(text), limits_(limits) {}

  std::variant<json, std::string> parse() {
    json root;
    skip_whitespace();
    if (!value(root, 0)) return std::move(error_);
    skip_whitespace();
    if (pos_ != text_.size()) {
      fail("unexpected characters after the JSON value");
      return std::move(error_);
    }
    return root;
  }

 private:
  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return text_[pos_]; }

  bool fail(std::string_view what) {
    error_ = fmt::format("{} (at byte {})", what, pos_);
    return false;
  }

  void skip_whitespace() {
    while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r')) {
      ++pos_;
    }
  }

  bool expect(char c, std::string_view what) {
    skip_whitespace();
    if (at_end() || peek() != c) return fail(what);
    ++pos_;
    return true;
  }

  bool value(json& out, std::size_t depth) {
    if (at_end()) return fail("unexpected end of input");
    switch (peek()) {
      case '{': return object(out, depth + 1);
      case '[': return array(out, depth + 1);
      case '"': {
        std::string text;
        if (!string(text)) return false;
        out = std::move(text);
        return true;
      }
      case 't': return literal("true", json(true), out);
      case 'f': return literal("false", json(false), out);
      case 'n': return literal("null", json(nullptr), out);
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) return number(out);
        return fail(fmt::format("unexpected character '{}'",
                                printable(text_.substr(pos_, std::max<std::size_t>(
                                                                 1, utf8_sequence_width(text_, pos_))))));
    }
  }

  bool nested(std::size_t depth) {
    if (depth > limits_.max_depth) {
      return fail(fmt::format("nesting is deeper than {} levels", limits_.max_depth));
    }
    return true;
  }

  bool object(json& out, std::size_t depth) {
    out = json::object();
    auto& members = out.get_ref<json::object_t&>();
    return elements(depth, '}', "an object", [&] {
      if (at_end() || peek() != '"') return fail("expected a member name");
      std::string name;
      if (!string(name) || !expect(':', "expected ':' after a member name")) return false;
      skip_whitespace();
      json member;
      if (!value(member, depth)) return false;
      members[std::move(name)] = std::move(member);  // a repeated name: the last one wins
      return true;
    });
  }

  bool array(json& out, std::size_t depth) {
    out = json::array();
    auto& items = out.get_ref<json::array_t&>();
    return elements(depth, ']', "an array", [&] {
      json item;
      if (!value(item, depth)) return false;
      items.push_back(std::move(item));
      return true;
    });
  }

  // The comma-separated elements of an object or an array, up to `close`, after its opening
  // bracket: `read_one` reads one element.
  template <typename ReadOne>
  bool elements(std::size_t depth, char close, std::string_view what, ReadOne read_one) {
    if (!nested(depth)) return false;
    ++pos_;  // the opening bracket
    skip_whitespace();
    if (!at_end() && peek() == close) {
      ++pos_;
      return true;
    }
    for (;;) {
      skip_whitespace();
      if (!read_one()) return false;
      skip_whitespace();
      if (at_end()) return fail(fmt::format("unexpected end of input in {}", what));
      if (peek() == close) {
        ++pos_;
        return true;
      }
      if (peek() != ',') return fail(fmt::format("expected ',' or '{}' in {}", close, what));
      ++pos_;
    }
  }

  bool literal(std::string_view word, json value, json& out) {
    if (text_.substr(pos_, word.size()) != word) return fail("invalid literal");
    pos_ += word.size();
    out = std::move(value);
    return true;
  }

  bool hex4(std::uint32_t& unit) {
    if (pos_ + 4 > text_.size()) return fail("incomplete \\u escape");
    unit = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[pos_++];
      unit <<= 4;
      if (c >= '0' && c <= '9') {
        unit |= static_cast<std::uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        unit |= static_cast<std::uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        unit |= static_cast<std::uint32_t>(c - 'A' + 10);
      } else {
        --pos_;
        return fail("invalid \\u escape");
      }
    }
    return true;
  }

  static void append_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xc0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xe0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }

  bool escape(std::string& out) {
    ++pos_;  // backslash
    if (at_end()) return fail("unexpected end of input in an escape");
    const char c = text_[pos_++];
    switch (c) {
      case '"': out += '"'; return true;
      case '\\': out += '\\'; return true;
      case '/': out += '/'; return true;
      case 'b': out += '\b'; return true;
      case 'f': out += '\f'; return true;
      case 'n': out += '\n'; return true;
      case 'r': out += '\r'; return true;
      case 't': out += '\t'; return true;
      case 'u': break;
      default: --pos_; return fail("invalid escape");
    }
    std::uint32_t unit = 0;
    if (!hex4(unit)) return false;
    if (unit >= 0xdc00 && unit <= 0xdfff) return fail("lone low surrogate in a \\u escape");
    if (unit >= 0xd800 && unit <= 0xdbff) {
      std::uint32_t low = 0;
      if (text_.substr(pos_, 2) != "\\u" || (pos_ += 2, !hex4(low)) || low < 0xdc00 ||
          low > 0xdfff) {
        return fail("lone high surrogate in a \\u escape");
      }
      unit = 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
    }
    append_utf8(out, unit);
    return true;
  }

  bool string(std::string& out) {
    ++pos_;  // opening quote
    for (;;) {
      const std::size_t run = pos_;  // copy runs of plain ASCII at once
      while (!at_end()) {
        const auto c = static_cast<unsigned char>(peek());
        if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) break;
        ++pos_;
      }
      out.append(text_.substr(run, pos_ - run));
      if (at_end()) return fail("unexpected end of input in a string");
      const auto c = static_cast<unsigned char>(peek());
      if (c == '"') {
        ++pos_;
        return true;
      }
      if (c == '\\') {
        if (!escape(out)) return false;
      } else if (c < 0x20) {
        return fail("unescaped control character in a string");
      } else {
        const std::size_t width = utf8_sequence_width(text_, pos_);
        if (width == 0) return fail("invalid UTF-8");
        out.append(text_.substr(pos_, width));
        pos_ += width;
      }
    }
  }

  bool digits() {
    const std::size_t start = pos_;
    while (!at_end() && peek() >= '0' && peek() <= '9') ++pos_;
    return pos_ > start;
  }

  bool number(json& out) {
    const std::size_t start = pos_;
    if (peek() == '-') ++pos_;
    if (at_end()) return fail("invalid number");
    if (peek() == '0') {
      ++pos_;
    } else if (!digits()) {
      return fail("invalid number");
    }
    bool integer = true;
    if (!at_end() && peek() == '.') {
      ++pos_;
      if (!digits()) return fail("invalid number: digits must follow '.'");
      integer = false;
    }
    if (!at_end() && (peek() == 'e' || peek() == 'E')) {
      ++pos_;
      if (!at_end() && (peek() == '+' || peek() == '-')) ++pos_;
      if (!digits()) return fail("invalid number: digits must follow the exponent");
      integer = false;
    }
    const std::string_view text = text_.substr(start, pos_ - start);
    if (integer) {
      // As nlohmann's own parser does: non-negative integers unsigned, negative ones signed.
      if (text.front() == '-') {
        std::int64_t value = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (ec == std::errc() && end == text.data() + text.size()) {
          out = value;
          return true;
        }
      } else {
        std::uint64_t value = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (ec == std::errc() && end == text.data() + text.size()) {
          out = value;
          return true;
        }
      }
    }
    out = exact_number(text);
    return true;
  }

  std::string_view text_;
  JsonParseLimits limits_;
  std::size_t pos_ = 0;
  std::string error_;
};

}  // namespace

json exact_number(std::string_view text) {
  return json::binary(json::binary_t::container_type(text.begin(), text.end()),
                      kExactNumberSubtype);
}

bool is_exact_number(const json& value) noexcept {
  return value.is_binary() && value.get_binary().has_subtype() &&
         value.get_binary().subtype() == kExactNumberSubtype;
}

std::string_view exact_number_text(const json& value) noexcept {
  if (!is_exact_number(value)) return {};
  const auto& bytes = value.get_binary();
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

std::variant<json, std::string> parse_json(std::string_view text, JsonParseLimits limits) {
  return ExactParser(text, limits).parse();
}

}  // namespace dedup
