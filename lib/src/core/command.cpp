#include "dedup/command.hpp"

#include <fmt/format.h>

namespace dedup {
namespace {

using json = nlohmann::json;

Rejection reject(RejectCode code, std::string message) { return {code, std::move(message)}; }

// Where a value came from, for messages: formatted only when there is something to report (this
// runs for every record; the happy path must not pay for error text).
struct Where {
  const char* kind;  // "body field" or "header"
  std::string_view name;
};
std::string describe(const Where& where) { return fmt::format("{} '{}'", where.kind, where.name); }

// SPEC §1: 1–255 characters, printable ASCII, no surrounding whitespace.
std::optional<Rejection> check_key(std::string_view key, const Where& where) {
  if (key.empty()) return reject(RejectCode::invalid_key, fmt::format("{} is empty", describe(where)));
  if (key.size() > kMaxKeyLength) {
    return reject(RejectCode::invalid_key,
                  fmt::format("{} is {} characters long (at most {})", describe(where), key.size(), kMaxKeyLength));
  }
  for (std::size_t i = 0; i < key.size(); ++i) {
    const auto c = static_cast<unsigned char>(key[i]);
    if (c < 0x20 || c > 0x7e) {
      return reject(RejectCode::invalid_key,
                    fmt::format("{} has a non-printable or non-ASCII byte 0x{:02x} at position {}",
                                describe(where), c, i));
    }
  }
  if (key.front() == ' ' || key.back() == ' ') {
    return reject(RejectCode::invalid_key, fmt::format("{} has leading or trailing whitespace", describe(where)));
  }
  return std::nullopt;
}

// Length in code points of well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing
// above U+10FFFF), or nullopt. Postgres and JSON refuse anything else, so must we.
std::optional<std::size_t> utf8_length(std::string_view text) {
  std::size_t count = 0;
  std::size_t i = 0;
  auto byte = [&](std::size_t at) { return static_cast<unsigned char>(text[at]); };
  auto continuation = [&](std::size_t at) { return at < text.size() && (byte(at) & 0xc0) == 0x80; };
  while (i < text.size()) {
    const unsigned char c = byte(i);
    std::size_t width = 0;
    if (c < 0x80) {
      width = 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
      width = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      width = 3;
      // E0 needs A0..BF (no overlong); ED needs 80..9F (no surrogates).
      if (i + 1 < text.size() && ((c == 0xe0 && byte(i + 1) < 0xa0) || (c == 0xed && byte(i + 1) > 0x9f))) {
        return std::nullopt;
      }
    } else if (c >= 0xf0 && c <= 0xf4) {
      width = 4;
      // F0 needs 90..BF (no overlong); F4 needs 80..8F (<= U+10FFFF).
      if (i + 1 < text.size() && ((c == 0xf0 && byte(i + 1) < 0x90) || (c == 0xf4 && byte(i + 1) > 0x8f))) {
        return std::nullopt;
      }
    } else {
      return std::nullopt;  // C0, C1, F5..FF, or a stray continuation byte
    }
    for (std::size_t k = 1; k < width; ++k) {
      if (!continuation(i + k)) return std::nullopt;
    }
    i += width;
    ++count;
  }
  return count;
}

// Keeps error messages publishable: a parser message may quote the bytes it choked on, and those
// may not be UTF-8. Invalid bytes become "\xNN".
std::string printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    const auto rest = text.substr(i);
    std::size_t width = 1;
    const auto c = static_cast<unsigned char>(rest[0]);
    if (c >= 0x80) width = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
    if (c < 0x80 || (width <= rest.size() && utf8_length(rest.substr(0, width)) == 1)) {
      out.append(rest.substr(0, std::min(width, rest.size())));
      i += width;
    } else {
      out += fmt::format("\\x{:02x}", c);
      i += 1;
    }
  }
  return out;
}

// Builds the DOM like nlohmann's own SAX DOM parser, and refuses what cannot be handled safely:
// nesting deeper than kMaxDepth (serialization recurses once per level; a 1 MiB value of "[[[[..."
// would overflow the stack) and integers beyond 64 bits (parsed as doubles, they would lose digits
// and two different values would share a fingerprint).
constexpr std::size_t kMaxDepth = 64;

class BoundedDomParser {
 public:
  explicit BoundedDomParser(json& root) : dom_(root, /*allow_exceptions=*/false) {}

  bool null() { return dom_.null(); }
  bool boolean(bool value) { return dom_.boolean(value); }
  bool number_integer(json::number_integer_t value) { return dom_.number_integer(value); }
  bool number_unsigned(json::number_unsigned_t value) { return dom_.number_unsigned(value); }
  bool number_float(json::number_float_t value, const json::string_t& text) {
    if (text.find_first_of(".eE") == json::string_t::npos) {
      return refuse("integer " + text + " does not fit in 64 bits");
    }
    return dom_.number_float(value, text);
  }
  bool string(json::string_t& value) { return dom_.string(value); }
  bool binary(json::binary_t& value) { return dom_.binary(value); }
  bool start_object(std::size_t elements) { return deeper() && dom_.start_object(elements); }
  bool key(json::string_t& value) { return dom_.key(value); }
  bool end_object() { --depth_; return dom_.end_object(); }
  bool start_array(std::size_t elements) { return deeper() && dom_.start_array(elements); }
  bool end_array() { --depth_; return dom_.end_array(); }
  bool parse_error(std::size_t position, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& error) {
    // The message quotes the offending bytes; keep only what is safe to publish.
    return refuse(fmt::format("{} (at byte {})", printable(error.what()), position));
  }

  const std::optional<std::string>& problem() const { return problem_; }

 private:
  bool deeper() {
    if (++depth_ > kMaxDepth) return refuse(fmt::format("nesting is deeper than {} levels", kMaxDepth));
    return true;
  }
  bool refuse(std::string problem) {
    if (!problem_) problem_ = std::move(problem);
    return false;
  }

  nlohmann::detail::json_sax_dom_parser<json> dom_;
  std::size_t depth_ = 0;
  std::optional<std::string> problem_;
};

// SPEC §1: 1–255 characters. We also refuse control characters and surrounding whitespace: a
// scope is an identifier of a tenant, and "org-1" and "org-1 " must not be two tenants by accident.
std::optional<Rejection> check_scope(std::string_view scope, const Where& where) {
  if (scope.empty()) return reject(RejectCode::invalid_scope, fmt::format("{} is empty", describe(where)));
  const auto length = utf8_length(scope);
  if (!length) return reject(RejectCode::invalid_scope, fmt::format("{} is not valid UTF-8", describe(where)));
  if (*length > kMaxScopeLength) {
    return reject(RejectCode::invalid_scope, fmt::format("{} is {} characters long (at most {})",
                                                         describe(where), *length, kMaxScopeLength));
  }
  for (std::size_t i = 0; i < scope.size(); ++i) {
    const auto c = static_cast<unsigned char>(scope[i]);
    if (c < 0x20 || c == 0x7f) {
      return reject(RejectCode::invalid_scope,
                    fmt::format("{} has a control character 0x{:02x} at position {}", describe(where), c, i));
    }
  }
  if (std::isspace(static_cast<unsigned char>(scope.front())) ||
      std::isspace(static_cast<unsigned char>(scope.back()))) {
    return reject(RejectCode::invalid_scope, fmt::format("{} has leading or trailing whitespace", describe(where)));
  }
  return std::nullopt;
}

// Reads a string field that may come from the body, from a header, or both (then they must agree).
struct FieldSource {
  std::string_view body_field;
  std::string_view header;
  RejectCode invalid_code;
  RejectCode mismatch_code;
  std::optional<Rejection> (*check)(std::string_view, const Where&);
};

std::variant<std::optional<std::string>, Rejection> read_field(const json& body,
                                                               const InboundRecord& record,
                                                               const FieldSource& source) {
  std::optional<std::string> from_body;
  if (auto it = body.find(source.body_field); it != body.end() && !it->is_null()) {
    if (!it->is_string()) {
      return reject(source.invalid_code, fmt::format("body field '{}' must be a string, got {}",
                                                     source.body_field, it->type_name()));
    }
    from_body = it->get<std::string>();
    if (auto bad = source.check(*from_body, Where{"body field", source.body_field})) {
      return *bad;
    }
  }
  std::optional<std::string> from_header;
  if (const auto* header = record.find_header(source.header); header && header->value) {
    from_header = *header->value;
    if (auto bad = source.check(*from_header, Where{"header", source.header})) return *bad;
  }
  if (from_body && from_header && *from_body != *from_header) {
    return reject(source.mismatch_code,
                  fmt::format("body field '{}' and header '{}' disagree", source.body_field,
                              source.header));
  }
  return from_body ? from_body : from_header;
}

}  // namespace

std::string_view to_string(RejectCode code) noexcept {
  switch (code) {
    case RejectCode::too_large: return "too_large";
    case RejectCode::invalid_json: return "invalid_json";
    case RejectCode::not_an_object: return "not_an_object";
    case RejectCode::missing_key: return "missing_key";
    case RejectCode::invalid_key: return "invalid_key";
    case RejectCode::key_mismatch: return "key_mismatch";
    case RejectCode::missing_scope: return "missing_scope";
    case RejectCode::invalid_scope: return "invalid_scope";
    case RejectCode::scope_mismatch: return "scope_mismatch";
    case RejectCode::missing_type: return "missing_type";
    case RejectCode::unknown_type: return "unknown_type";
    case RejectCode::invalid_payload: return "invalid_payload";
  }
  return "unknown";
}

std::variant<std::string, Rejection> derive_natural_key(const CommandType& type,
                                                        const json& payload) {
  json material = json::array({type.name});
  for (const auto& field : type.key_from) {
    const auto it = payload.find(field);
    if (it == payload.end() || it->is_null()) {
      return reject(RejectCode::missing_key,
                    fmt::format("no idempotency key was sent, and the natural-key field '{}' of "
                                "type '{}' is missing from the payload",
                                field, type.name));
    }
    material.push_back(*it);
  }
  return "nk:" + to_hex(sha256(canonical_json(material)));
}

ParsedCommand parse_command(const InboundRecord& record, const CommandCatalog& catalog,
                            const ParseOptions& options) {
  RejectedCommand rejected;
  rejected.source = record.source;
  auto fail = [&](Rejection rejection) -> ParsedCommand {
    rejected.rejection = std::move(rejection);
    return rejected;
  };

  if (!record.value) return fail(reject(RejectCode::invalid_json, "record value is null"));
  if (record.value->size() > options.max_message_bytes) {
    return fail(reject(RejectCode::too_large,
                       fmt::format("record value is {} bytes (at most {})", record.value->size(),
                                   options.max_message_bytes)));
  }
  json body;
  BoundedDomParser parser(body);
  if (!json::sax_parse(*record.value, &parser, json::input_format_t::json, /*strict=*/true) ||
      parser.problem()) {
    return fail(reject(RejectCode::invalid_json,
                       "value is not valid JSON: " + parser.problem().value_or("parse error")));
  }
  if (!body.is_object()) {
    return fail(reject(RejectCode::not_an_object,
                       fmt::format("value must be a JSON object, got {}", body.type_name())));
  }

  // Read what we can before judging, so a rejected result still names key, scope and type.
  auto key = read_field(body, record,
                        {"idempotency_key", kKeyHeader, RejectCode::invalid_key,
                         RejectCode::key_mismatch, &check_key});
  auto scope = read_field(body, record,
                          {"scope", kScopeHeader, RejectCode::invalid_scope,
                           RejectCode::scope_mismatch, &check_scope});
  if (auto* ok = std::get_if<std::optional<std::string>>(&key)) rejected.idempotency_key = *ok;
  if (auto* ok = std::get_if<std::optional<std::string>>(&scope)) rejected.scope = *ok;
  // The default applies to a scope that is missing, not to one that was sent and is invalid.
  const bool scope_missing = std::holds_alternative<std::optional<std::string>>(scope) &&
                             !std::get<std::optional<std::string>>(scope);
  if (scope_missing && options.default_scope) rejected.scope = options.default_scope;
  const auto type_it = body.find("type");
  // Echo the type only when it could be a type name (an unknown 1 MiB "type" is not repeated).
  if (type_it != body.end() && type_it->is_string() && type_it->get_ref<const std::string&>().size() <= 255) {
    rejected.type = type_it->get<std::string>();
  }
  rejected.missing_key = std::holds_alternative<std::optional<std::string>>(key) &&
                         !std::get<std::optional<std::string>>(key);

  if (auto* bad = std::get_if<Rejection>(&key)) return fail(std::move(*bad));
  if (auto* bad = std::get_if<Rejection>(&scope)) return fail(std::move(*bad));
  if (!rejected.scope) {
    return fail(reject(RejectCode::missing_scope,
                       "no scope in body field 'scope' or header 'idempotency-scope', and no "
                       "--default-scope is configured"));
  }
  if (type_it == body.end() || type_it->is_null()) {
    return fail(reject(RejectCode::missing_type, "body field 'type' is missing"));
  }
  if (!type_it->is_string()) {
    return fail(reject(RejectCode::unknown_type,
                       fmt::format("body field 'type' must be a string, got {}", type_it->type_name())));
  }
  const CommandType* type = rejected.type ? catalog.find(*rejected.type) : nullptr;
  if (!type) {
    return fail(reject(RejectCode::unknown_type,
                       rejected.type ? fmt::format("command type '{}' is not configured", *rejected.type)
                                     : std::string("command type is not configured")));
  }
  const auto payload_it = body.find("payload");
  if (payload_it == body.end() || !payload_it->is_object()) {
    return fail(reject(RejectCode::invalid_payload,
                       payload_it == body.end()
                           ? std::string("body field 'payload' is missing")
                           : fmt::format("body field 'payload' must be a JSON object, got {}",
                                         payload_it->type_name())));
  }
  if (type->table) {
    // Payload field names become column names: only plain identifiers, and at least one.
    if (payload_it->empty()) {
      return fail(reject(RejectCode::invalid_payload, "payload has no fields to insert"));
    }
    for (const auto& [field, value] : payload_it->items()) {
      if (!is_valid_identifier(field)) {
        return fail(reject(RejectCode::invalid_payload,
                           fmt::format("payload field '{}' is not a column name "
                                       "([A-Za-z_][A-Za-z0-9_]*, at most 63 characters)",
                                       field)));
      }
    }
  }

  Command command;
  if (rejected.missing_key) {
    if (type->key_from.empty()) {
      return fail(reject(RejectCode::missing_key,
                         "no idempotency key in body field 'idempotency_key' or header "
                         "'idempotency-key', and type '" + type->name + "' has no key_from"));
    }
    auto derived = derive_natural_key(*type, *payload_it);
    if (auto* bad = std::get_if<Rejection>(&derived)) return fail(std::move(*bad));
    command.idempotency_key = std::move(std::get<std::string>(derived));
    command.natural_key = true;
  } else {
    command.idempotency_key = std::move(*rejected.idempotency_key);
  }
  command.source = record.source;
  command.scope = std::move(*rejected.scope);
  command.type = type;
  command.canonical_payload = canonical_json(*payload_it);
  command.fingerprint = command_fingerprint_of_canonical(type->name, command.canonical_payload);
  command.payload = std::move(*payload_it);
  return command;
}

}  // namespace dedup
