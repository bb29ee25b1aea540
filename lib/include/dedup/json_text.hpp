// JSON text in and out, exactly: the one parser and the one writer for every JSON document the
// worker reads (command values, entity rows Postgres returns) and writes (results, canonical
// payloads, statement inputs).
//
// Values are nlohmann::json, with one extension: a number that is not a 64-bit integer (it has a
// fraction or an exponent, or more digits than 64 bits hold) is kept as the exact text it was
// written with, stored as a binary value of subtype kExactNumberSubtype. nlohmann would turn it
// into a double and lose digits: 12345678901234567.89 would become 12345678901234568, and 1e-400
// would become 0. Postgres's jsonb and numeric keep every digit, so the worker passes a number to
// Postgres, fingerprints it and returns it exactly as written. JSON text never produces a binary
// value, so the extension cannot be confused with parsed input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include <nlohmann/json.hpp>

namespace dedup {

inline constexpr std::uint8_t kExactNumberSubtype = 'N';

// A number kept as its text (which the caller guarantees is a JSON number).
nlohmann::json exact_number(std::string_view text);
bool is_exact_number(const nlohmann::json& value) noexcept;
// The text of an exact number; empty for any other value.
std::string_view exact_number_text(const nlohmann::json& value) noexcept;

struct JsonParseLimits {
  // Deeper nesting is refused: writing recurses once per level, and a 1 MiB value of "[[[[..."
  // must not overflow the stack.
  std::size_t max_depth = 64;
};

// Parses strict RFC 8259 JSON (UTF-8, one value, nothing after it). Integers that fit 64 bits
// become nlohmann integers; every other number an exact number. Duplicate object keys: the last
// one wins (as in Postgres's jsonb). Returns the value, or a message that says what is wrong and
// where, safe to publish (bytes that are not UTF-8 are shown as \xNN).
std::variant<nlohmann::json, std::string> parse_json(std::string_view text,
                                                     JsonParseLimits limits = {});

// Writes `value` as compact JSON: object keys in bytewise order (nlohmann's objects are ordered
// maps), no whitespace, strings with only the escapes JSON requires (as nlohmann's dump() writes
// them, so fingerprints of existing keys do not change), exact numbers verbatim. Bytes of strings
// that are not UTF-8 are replaced by U+FFFD: output must never fail on odd input.
void write_json(std::string& out, const nlohmann::json& value);
std::string to_json_text(const nlohmann::json& value);

// Appends `text` as a JSON string (with the replacement above).
void write_json_string(std::string& out, std::string_view text);

// Length in code points of well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing
// above U+10FFFF), or nullopt.
std::optional<std::size_t> utf8_length(std::string_view text) noexcept;

// `text` cut to at most `max_bytes` bytes without splitting a UTF-8 sequence; "…" marks a cut.
std::string truncate_utf8(std::string_view text, std::size_t max_bytes);

// Bytes that are not UTF-8 shown as "\xNN", so a message quoting input is always publishable.
std::string printable(std::string_view text);

}  // namespace dedup
