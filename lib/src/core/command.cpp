#include "dedup/command.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>

#include "dedup/json_text.hpp"
#include "input_formats.hpp"

namespace dedup {
namespace {

using json = nlohmann::json;

using input::describe;
using input::reject;
using input::Where;

// Postgres stores no U+0000 in text or jsonb (it refuses "\u0000" in jsonb input, 22P05): a
// payload carrying one can never be written, so it is refused here with a clear reason instead
// of failing a whole statement later. Returns the path of the first field that has one.
std::optional<std::string> find_nul(const json& value, const std::string& path) {
  auto has_nul = [](std::string_view text) { return text.find('\0') != std::string_view::npos; };
  if (value.is_string()) {
    return has_nul(value.get_ref<const std::string&>()) ? std::optional(path) : std::nullopt;
  }
  if (value.is_object()) {
    for (const auto& [name, member] : value.get_ref<const json::object_t&>()) {
      std::string inner = path;
      if (!inner.empty()) inner += '.';
      inner += name;
      if (has_nul(name)) return inner;
      if (auto found = find_nul(member, inner)) return found;
    }
  } else if (value.is_array()) {
    std::size_t index = 0;
    for (const auto& element : value.get_ref<const json::array_t&>()) {
      if (auto found = find_nul(element, path + "[" + std::to_string(index++) + "]")) return found;
    }
  }
  return std::nullopt;
}

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
    case RejectCode::invalid_event: return "invalid_event";
  }
  return "unknown";
}

// Natural keys stay what they were before v1.1 (a record read before an upgrade and again after
// it must find its own key, or it is claimed anew and writes a second entity): in the key
// material, a number with a fraction or exponent is written as before, as the shortest text of
// its double (nlohmann's strtod), when that is finite; other numbers (integers beyond 64 bits,
// 1e400: refused before v1.1, so no old key exists) as written.
static json legacy_numbers(const json& value) {
  if (is_exact_number(value)) {
    const std::string text(exact_number_text(value));
    if (text.find_first_of(".eE") == std::string::npos) return value;
    const double number = std::strtod(text.c_str(), nullptr);  // the "C" locale: '.'
    return std::isfinite(number) ? json(number) : value;
  }
  if (value.is_array()) {
    json out = json::array();
    for (const auto& element : value) out.push_back(legacy_numbers(element));
    return out;
  }
  if (value.is_object()) {
    json out = json::object();
    for (const auto& [name, member] : value.items()) out[name] = legacy_numbers(member);
    return out;
  }
  return value;
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
    material.push_back(legacy_numbers(*it));
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
  auto parsed = parse_json(*record.value);
  if (auto* problem = std::get_if<std::string>(&parsed)) {
    return fail(reject(RejectCode::invalid_json, "value is not valid JSON: " + *problem));
  }
  json& body = std::get<json>(parsed);
  const InputSpec& spec = catalog.input();
  if (!body.is_object()) {
    // A binary-mode CloudEvent's value is its data: the payload.
    const bool data = spec.format == InputFormat::cloudevents && input::is_binary_cloudevent(record);
    return fail(reject(data ? RejectCode::invalid_payload : RejectCode::not_an_object,
                       fmt::format("{} must be a JSON object, got {}",
                                   data ? "the CloudEvent's data" : "value", body.type_name())));
  }

  // Read what we can before judging, so a rejected result still names key, scope and type.
  input::Fields fields = input::read_fields(record, body, spec);
  rejected.cloudevent = fields.cloudevent;
  auto validated = [](input::FieldRead& read, auto check) -> std::variant<std::optional<std::string>, Rejection> {
    if (auto* bad = std::get_if<Rejection>(&read)) return *bad;
    auto* found = std::get_if<input::Found>(&read);
    if (!found) return std::optional<std::string>();
    if (auto problem = check(found->value, found->where)) return *problem;
    return std::optional<std::string>(std::move(found->value));
  };
  auto key = validated(fields.key, &check_key);
  auto scope = validated(fields.scope, &check_scope);
  if (auto* ok = std::get_if<std::optional<std::string>>(&key)) rejected.idempotency_key = *ok;
  if (auto* ok = std::get_if<std::optional<std::string>>(&scope)) rejected.scope = *ok;
  // The default applies to a scope that is missing, not to one that was sent and is invalid.
  const bool scope_missing = std::holds_alternative<std::optional<std::string>>(scope) &&
                             !std::get<std::optional<std::string>>(scope);
  if (scope_missing && options.default_scope && !fields.cloudevent) {
    rejected.scope = options.default_scope;
  }
  const auto* type_found = std::get_if<input::Found>(&fields.type);
  // Echo the type only when it could be a type name (an unknown 1 MiB "type" is not repeated).
  if (type_found && type_found->value.size() <= 255) {
    rejected.type = std::string(spec.command_type(type_found->value));
  }
  rejected.missing_key = std::holds_alternative<std::optional<std::string>>(key) &&
                         !std::get<std::optional<std::string>>(key);

  if (fields.event_problem) return fail(std::move(*fields.event_problem));
  if (auto* bad = std::get_if<Rejection>(&key)) return fail(std::move(*bad));
  if (auto* bad = std::get_if<Rejection>(&scope)) return fail(std::move(*bad));
  if (!rejected.scope) {
    return fail(reject(RejectCode::missing_scope,
                       fmt::format("no scope in {}, and no --default-scope is configured",
                                   input::describe(fields.scope_places))));
  }
  if (auto* bad = std::get_if<Rejection>(&fields.type)) return fail(std::move(*bad));
  if (!type_found) {
    return fail(reject(RejectCode::missing_type, fmt::format("no type in {}", input::describe(fields.type_places))));
  }
  const CommandType* type = rejected.type ? catalog.find(*rejected.type) : nullptr;
  if (!type) {
    return fail(reject(RejectCode::unknown_type,
                       rejected.type ? fmt::format("command type '{}' is not configured", *rejected.type)
                                     : std::string("command type is not configured")));
  }
  if (fields.payload_problem) return fail(std::move(*fields.payload_problem));
  if (!fields.payload || !fields.payload->is_object()) {
    return fail(reject(RejectCode::invalid_payload,
                       !fields.payload
                           ? fmt::format("{} is missing", input::describe(fields.payload_place))
                           : fmt::format("{} must be a JSON object, got {}",
                                         input::describe(fields.payload_place),
                                         fields.payload->type_name())));
  }
  json& payload = *fields.payload;
  if (auto field = find_nul(payload, "")) {
    return fail(reject(RejectCode::invalid_payload,
                       fmt::format("payload field '{}' contains U+0000, which Postgres cannot store",
                                   printable(*field))));
  }
  if (type->table) {
    // Payload field names become column names: only plain identifiers, and at least one.
    if (payload.empty()) {
      return fail(reject(RejectCode::invalid_payload, "payload has no fields to insert"));
    }
    for (const auto& [field, value] : payload.items()) {
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
                         fmt::format("no idempotency key in {}, and type '{}' has no key_from",
                                     input::describe(fields.key_places), type->name)));
    }
    auto derived = derive_natural_key(*type, payload);
    if (auto* bad = std::get_if<Rejection>(&derived)) return fail(std::move(*bad));
    command.idempotency_key = std::move(std::get<std::string>(derived));
    command.natural_key = true;
  } else {
    command.idempotency_key = std::move(*rejected.idempotency_key);
  }
  command.source = record.source;
  command.scope = std::move(*rejected.scope);
  command.type = type;
  command.canonical_payload = canonical_json(payload);
  command.fingerprint = command_fingerprint_of_canonical(type->name, command.canonical_payload);
  command.payload = std::move(payload);  // out of the parsed value, which is not needed any more
  command.cloudevent = std::move(fields.cloudevent);
  return command;
}

}  // namespace dedup
