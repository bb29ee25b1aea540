// The outcome of one input record (SPEC §2): exactly one per record read.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "dedup/clock.hpp"
#include "dedup/command.hpp"
#include "dedup/record.hpp"

namespace dedup {

enum class Status { created, duplicate, key_reused, conflict, rejected };

// What a published result says in place of an entity too large to publish (dedup/outbound.hpp).
struct OmittedEntity {
  std::size_t bytes = 0;  // of the entity's JSON text
  std::string sha256;     // of that text, lower-case hex
};

std::string_view to_string(Status status) noexcept;

struct CommandResult {
  Status status = Status::rejected;
  bool replayed = false;  // answered from a stored result (duplicates, replayed conflicts)
  std::optional<std::string> idempotency_key;
  std::optional<std::string> scope;
  std::optional<std::string> type;
  nlohmann::json entity;  // the created row; null unless created/duplicate of a creation
  nlohmann::json error;   // {"code", "message", ["constraint", "sqlstate"]}; null unless failed
  Timestamp first_processed_at{};
  Timestamp processed_at{};
  SourcePosition source;

  // Facts for metrics, logs and the dead-letter topic; not part of the published document.
  std::optional<Rejection> rejection;  // set iff status == rejected: the record goes to the DLQ
  bool natural_key = false;            // key derived from key_from fields
  bool missing_key = false;            // no client key was sent (natural key used, or rejected)
  bool cross_scope_key_reuse = false;  // a new (scope, key) whose key exists under another scope
  // The input was a CloudEvent: the result document names it ("cloudevent"), and the results-topic
  // record is itself a CloudEvent in binary mode (dedup/outbound.hpp).
  std::optional<CloudEventIdentity> cloudevent;

  // The results-topic value of SPEC §2 as compact JSON text, written straight from the fields:
  // no intermediate tree, no copy of the entity (this runs once per record on the worker's
  // thread). Keys in bytewise order, as write_json orders any object (dedup/json_text.hpp). With
  // `omitted`, "entity" is null and "entity_omitted" describes it.
  std::string to_json_text(const OmittedEntity* omitted = nullptr) const;
  // The same document as a value (tests and tools), read back from to_json_text().
  nlohmann::json to_json() const;
  // The results-topic record key "<scope>/<idempotency_key>", each part with '%' written as "%25"
  // and '/' as "%2F"; nullopt when either is unknown.
  std::optional<std::string> record_key() const;
};

// A rejected record's result: status rejected, error from the rejection, times = now.
CommandResult make_rejected_result(const RejectedCommand& rejected, Timestamp now);

}  // namespace dedup
