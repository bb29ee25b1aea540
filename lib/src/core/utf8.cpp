// UTF-8: the one well-formedness check (detail::utf8_sequence_width) and the text helpers of
// dedup/json_text.hpp built on it.
#include <fmt/format.h>

#include "core/utf8.hpp"
#include "dedup/json_text.hpp"

namespace dedup {
namespace detail {

std::size_t utf8_sequence_width(std::string_view text, std::size_t i) noexcept {
  auto byte = [&](std::size_t at) { return static_cast<unsigned char>(text[at]); };
  const unsigned char c = byte(i);
  std::size_t width = 0;
  unsigned char low = 0x80;   // the allowed range of the second byte
  unsigned char high = 0xbf;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) {
    width = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    width = 3;
    if (c == 0xe0) low = 0xa0;   // no overlong forms
    if (c == 0xed) high = 0x9f;  // no surrogates
  } else if (c >= 0xf0 && c <= 0xf4) {
    width = 4;
    if (c == 0xf0) low = 0x90;   // no overlong forms
    if (c == 0xf4) high = 0x8f;  // nothing above U+10FFFF
  } else {
    return 0;  // C0, C1, F5..FF, or a stray continuation byte
  }
  if (i + width > text.size()) return 0;
  if (byte(i + 1) < low || byte(i + 1) > high) return 0;
  for (std::size_t k = 2; k < width; ++k) {
    if ((byte(i + k) & 0xc0) != 0x80) return 0;
  }
  return width;
}

}  // namespace detail

using detail::utf8_sequence_width;

std::optional<std::size_t> utf8_length(std::string_view text) noexcept {
  std::size_t count = 0;
  for (std::size_t i = 0; i < text.size(); ++count) {
    const std::size_t width = utf8_sequence_width(text, i);
    if (width == 0) return std::nullopt;
    i += width;
  }
  return count;
}

std::string truncate_utf8(std::string_view text, std::size_t max_bytes) {
  if (text.size() <= max_bytes) return std::string(text);
  constexpr std::string_view kEllipsis = "\xe2\x80\xa6";  // …
  if (max_bytes < kEllipsis.size()) return {};
  std::size_t end = max_bytes - kEllipsis.size();
  // Back up to the start of a sequence: continuation bytes are 10xxxxxx.
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xc0) == 0x80) --end;
  std::string out(text.substr(0, end));
  out += kEllipsis;
  return out;
}

std::string printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t width = utf8_sequence_width(text, i);
    if (width > 0) {
      out.append(text.substr(i, width));
      i += width;
    } else {
      out += fmt::format("\\x{:02x}", static_cast<unsigned char>(text[i]));
      ++i;
    }
  }
  return out;
}

}  // namespace dedup
