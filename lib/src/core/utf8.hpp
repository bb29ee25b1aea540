// The UTF-8 check shared by the JSON parser, the JSON writer and the text helpers.
#pragma once

#include <cstddef>
#include <string_view>

namespace dedup::detail {

// The width of the well-formed UTF-8 sequence at text[i] (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF), or 0.
std::size_t utf8_sequence_width(std::string_view text, std::size_t i) noexcept;

}  // namespace dedup::detail
