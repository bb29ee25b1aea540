#include "dedup/result.hpp"

#include <fmt/format.h>

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
json optional_string(const std::optional<std::string>& value) {
  return value ? json(*value) : json(nullptr);
}
}  // namespace

json CommandResult::to_json() const {
  json document{
      {"idempotency_key", optional_string(idempotency_key)},
      {"scope", optional_string(scope)},
      {"type", optional_string(type)},
      {"status", to_string(status)},
      {"replayed", replayed},
      {"entity", entity},
      {"error", error},
      // Nothing is stored for a rejected record, so there is no first time to report; null keeps
      // a re-read rejection identical to the first one but for processed_at (SPEC §2).
      {"first_processed_at",
       status == Status::rejected ? json(nullptr) : json(format_timestamp(first_processed_at))},
      {"processed_at", format_timestamp(processed_at)},
      {"source", {{"topic", source.topic}, {"partition", source.partition}, {"offset", source.offset}}},
  };
  if (cloudevent) {
    document["cloudevent"] = {
        {"id", cloudevent->id}, {"source", cloudevent->source}, {"type", cloudevent->type}};
  }
  return document;
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
