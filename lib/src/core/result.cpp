#include "dedup/result.hpp"

#include <fmt/format.h>

#include <charconv>
#include <cstdint>
#include <variant>

#include "dedup/json_text.hpp"
#include "dedup/key_store.hpp"

namespace dedup {

using json = nlohmann::json;

std::string_view to_string(Status status) noexcept {
  switch (status) {
    case Status::created: return "created";
    case Status::duplicate: return "duplicate";
    case Status::key_reused: return "key_reused";
    case Status::conflict: return "conflict";
    case Status::rejected: return "rejected";
  }
  return "unknown";
}

namespace {

void write_optional_string(std::string& out, const std::optional<std::string>& value) {
  if (value) {
    write_json_string(out, *value);
  } else {
    out += "null";
  }
}

void write_integer(std::string& out, std::int64_t value) {
  char buffer[24];
  const auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value);
  out.append(buffer, end);
}

}  // namespace

std::string CommandResult::to_json_text(const OmittedEntity* omitted) const {
  // Member names in bytewise order (as write_json writes an object): the text is the same
  // whether a document is written here or built as a value and written by write_json.
  std::string out;
  out.reserve(256);
  out += '{';
  if (cloudevent) {
    out += R"("cloudevent":{"id":)";
    write_json_string(out, cloudevent->id);
    out += R"(,"source":)";
    write_json_string(out, cloudevent->source);
    out += R"(,"type":)";
    write_json_string(out, cloudevent->type);
    out += "},";
  }
  out += R"("entity":)";
  if (omitted != nullptr) {
    out += R"(null,"entity_omitted":{"bytes":)";
    write_integer(out, static_cast<std::int64_t>(omitted->bytes));
    out += R"(,"sha256":)";
    write_json_string(out, omitted->sha256);
    out += '}';
  } else {
    write_json(out, entity);
  }
  out += R"(,"error":)";
  write_json(out, error);
  // Nothing is stored for a rejected record, so there is no first time to report; null keeps a
  // re-read rejection identical to the first one but for processed_at (SPEC §2).
  out += R"(,"first_processed_at":)";
  if (status == Status::rejected) {
    out += "null";
  } else {
    out += '"';
    append_timestamp(out, first_processed_at);
    out += '"';
  }
  out += R"(,"idempotency_key":)";
  write_optional_string(out, idempotency_key);
  out += R"(,"processed_at":")";
  append_timestamp(out, processed_at);
  out += '"';
  out += R"(,"replayed":)";
  out += replayed ? "true" : "false";
  out += R"(,"scope":)";
  write_optional_string(out, scope);
  out += R"(,"source":{"offset":)";
  write_integer(out, source.offset);
  out += R"(,"partition":)";
  write_integer(out, source.partition);
  out += R"(,"topic":)";
  write_json_string(out, source.topic);
  out += R"(},"status":")";
  out += to_string(status);
  out += R"(","type":)";
  write_optional_string(out, type);
  out += '}';
  return out;
}

json CommandResult::to_json() const {
  // Deeper than any input may nest (JsonParseLimits' default), plus the document's own levels.
  constexpr JsonParseLimits kLimits{.max_depth = 256};
  return std::get<json>(parse_json(to_json_text(), kLimits));
}

namespace {
// '%' and '/' percent-encoded, so that '/' separates scope from key unambiguously: ("a/b", "c")
// and ("a", "b/c") must not share a record key on a compacted results topic.
void append_key_part(std::string& out, std::string_view part) {
  for (const char c : part) {
    if (c == '%') {
      out += "%25";
    } else if (c == '/') {
      out += "%2F";
    } else {
      out += c;
    }
  }
}
}  // namespace

std::optional<std::string> CommandResult::record_key() const {
  if (!scope || !idempotency_key) return std::nullopt;
  std::string key;
  key.reserve(scope->size() + idempotency_key->size() + 1);
  append_key_part(key, *scope);
  key += '/';
  append_key_part(key, *idempotency_key);
  return key;
}

CommandResult make_rejected_result(const RejectedCommand& rejected, Timestamp now) {
  CommandResult result;
  result.status = Status::rejected;
  result.idempotency_key = rejected.idempotency_key;
  result.scope = rejected.scope;
  result.type = rejected.type;
  result.error = json{{"code", to_string(rejected.rejection.code)},
                      {"message", rejected.rejection.message}};
  result.first_processed_at = now;
  result.processed_at = now;
  result.source = rejected.source;
  result.rejection = rejected.rejection;
  result.missing_key = rejected.missing_key;
  result.cloudevent = rejected.cloudevent;
  return result;
}

CommandResult resolve_stored(const Command& command, const StoredKey& stored, Timestamp now) {
  CommandResult result;
  result.idempotency_key = command.idempotency_key;
  result.scope = command.scope;
  result.type = command.type->name;
  result.first_processed_at = stored.first_processed_at;
  result.processed_at = now;
  result.source = command.source;
  result.natural_key = command.natural_key;
  result.missing_key = command.natural_key;
  result.cloudevent = command.cloudevent;

  if (command.fingerprint != stored.fingerprint) {
    result.status = Status::key_reused;
    result.error = json{
        {"code", "key_reused"},
        {"message", fmt::format("idempotency key was already used at {} by a '{}' command with a "
                                "different payload",
                                format_timestamp(stored.first_processed_at), stored.command_type)}};
    return result;
  }
  result.entity = stored.entity;
  result.error = stored.error;
  if (command.source == stored.source) {
    // The claiming record itself, read again: republish its original result (SPEC §2), so a crash
    // between commit and acknowledgement can never turn a `created` into a `duplicate`.
    result.status = stored.status;
    result.replayed = false;
    return result;
  }
  result.status = stored.status == Status::created ? Status::duplicate : Status::conflict;
  result.replayed = true;
  return result;
}

}  // namespace dedup
