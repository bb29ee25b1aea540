// write_json: compact JSON, byte-identical to nlohmann's dump() for what both can write, exact
// numbers verbatim (dedup/json_text.hpp).
#include <charconv>

#include "core/utf8.hpp"
#include "dedup/json_text.hpp"

namespace dedup {
namespace {

using json = nlohmann::json;
using detail::utf8_sequence_width;

void write_unsigned(std::string& out, std::uint64_t value) {
  char buffer[24];
  const auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value);
  out.append(buffer, end);
}

}  // namespace

void write_json_string(std::string& out, std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  std::size_t plain_from = 0;  // start of the run of bytes copied as they are
  auto flush = [&](std::size_t to) { out.append(text.substr(plain_from, to - plain_from)); };
  for (std::size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
      ++i;
      continue;
    }
    if (c >= 0x80) {
      const std::size_t width = utf8_sequence_width(text, i);
      if (width > 0) {
        i += width;
        continue;
      }
      flush(i);
      out += "\xef\xbf\xbd";  // U+FFFD REPLACEMENT CHARACTER
      plain_from = ++i;
      continue;
    }
    flush(i);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        out += "\\u00";
        out += kHex[c >> 4];
        out += kHex[c & 0x0f];
    }
    plain_from = ++i;
  }
  flush(text.size());
  out += '"';
}

void write_json(std::string& out, const json& value) {
  switch (value.type()) {
    case json::value_t::null:
    case json::value_t::discarded:
      out += "null";
      return;
    case json::value_t::boolean:
      out += value.get<bool>() ? "true" : "false";
      return;
    case json::value_t::number_integer: {
      const auto number = value.get<std::int64_t>();
      if (number < 0) {
        out += '-';
        write_unsigned(out, 0 - static_cast<std::uint64_t>(number));
      } else {
        write_unsigned(out, static_cast<std::uint64_t>(number));
      }
      return;
    }
    case json::value_t::number_unsigned:
      write_unsigned(out, value.get<std::uint64_t>());
      return;
    case json::value_t::number_float:
      // Only values built in code are doubles (parsed numbers are exact); nlohmann writes the
      // shortest text that reads back as the same double.
      out += value.dump();
      return;
    case json::value_t::string:
      write_json_string(out, value.get_ref<const std::string&>());
      return;
    case json::value_t::binary:
      if (is_exact_number(value)) {
        out += exact_number_text(value);
      } else {
        out += value.dump();
      }
      return;
    case json::value_t::object: {
      out += '{';
      bool first = true;
      for (const auto& [name, member] : value.get_ref<const json::object_t&>()) {
        if (!first) out += ',';
        first = false;
        write_json_string(out, name);
        out += ':';
        write_json(out, member);
      }
      out += '}';
      return;
    }
    case json::value_t::array: {
      out += '[';
      bool first = true;
      for (const auto& element : value.get_ref<const json::array_t&>()) {
        if (!first) out += ',';
        first = false;
        write_json(out, element);
      }
      out += ']';
      return;
    }
  }
}

std::string to_json_text(const json& value) {
  std::string out;
  write_json(out, value);
  return out;
}

}  // namespace dedup
