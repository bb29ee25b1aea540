// Parsing and validation of the command envelope (SPEC §1).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include <nlohmann/json.hpp>

#include "dedup/config.hpp"
#include "dedup/fingerprint.hpp"
#include "dedup/record.hpp"

namespace dedup {

inline constexpr std::string_view kKeyHeader = "idempotency-key";
inline constexpr std::string_view kScopeHeader = "idempotency-scope";
inline constexpr std::size_t kMaxKeyLength = 255;
inline constexpr std::size_t kMaxScopeLength = 255;
// Error messages that quote input are cut to this many bytes.
inline constexpr std::size_t kMaxRejectionMessageBytes = 1024;

// Why a record is rejected. Each one is a stable, documented code (docs/contract.md) that appears
// as error.code in the result and as the dedup-error-code header of the dead letter.
enum class RejectCode {
  too_large,           // value larger than --max-message-bytes
  invalid_json,        // value is missing (null) or not valid UTF-8 JSON
  not_an_object,       // value is JSON but not an object
  missing_key,         // no idempotency key in body or header, and no natural key configured
  invalid_key,         // key is not a 1–255 char printable-ASCII string without surrounding spaces
  key_mismatch,        // body key and header key differ
  missing_scope,       // no scope in body or header, and no --default-scope
  invalid_scope,       // scope is not a 1–255 char string without control characters
  scope_mismatch,      // body scope and header scope differ
  missing_type,        // no "type" field
  unknown_type,        // "type" is not in the config
  invalid_payload,     // payload is missing or not an object, a field name is not an identifier
                       // (table mode), a natural-key field is missing, or Postgres refused a value
  invalid_event,       // input format cloudevents: not a CloudEvent, specversion is not 1.0, or a
                       // required attribute (id, source, type) is missing
};

std::string_view to_string(RejectCode code) noexcept;

struct Rejection {
  RejectCode code = RejectCode::invalid_json;
  std::string message;  // precise and human-readable; names the field at fault
};

// The identity of a CloudEvent the command came as (input format cloudevents): what the result
// carries back, so the producer can match it.
struct CloudEventIdentity {
  std::string id;
  std::string source;
  std::string type;  // as sent, before any `input.types` rename

  friend bool operator==(const CloudEventIdentity&, const CloudEventIdentity&) = default;
};

// A command that passed validation: ready for the key store.
struct Command {
  SourcePosition source;
  std::string scope;
  std::string idempotency_key;
  const CommandType* type = nullptr;  // points into the CommandCatalog, which outlives the command
  nlohmann::json payload;             // always an object
  std::string canonical_payload;      // canonical_json(payload): fingerprinted, and sent as is
  Fingerprint fingerprint{};
  bool natural_key = false;           // the key was derived from key_from fields, not sent
  std::optional<CloudEventIdentity> cloudevent;
};

// A command that failed validation, with what could still be read of it: the result carries these
// fields, and the results-topic record key needs scope and key.
struct RejectedCommand {
  SourcePosition source;
  Rejection rejection;
  std::optional<std::string> scope;
  std::optional<std::string> idempotency_key;
  std::optional<std::string> type;
  bool missing_key = false;  // no client key was sent (for dedup_missing_key_total)
  std::optional<CloudEventIdentity> cloudevent;  // when it was read as a CloudEvent
};

struct ParseOptions {
  std::size_t max_message_bytes = std::size_t{1024} * 1024;
  std::optional<std::string> default_scope;
};

using ParsedCommand = std::variant<Command, RejectedCommand>;

// Validates one record against every rule of SPEC §1. Never throws for bad input: every violation
// is a RejectedCommand with a precise code and message. Throws only std::bad_alloc.
ParsedCommand parse_command(const InboundRecord& record, const CommandCatalog& catalog,
                            const ParseOptions& options);

// The key derived in natural-key mode from the values of `fields` in `payload`:
// "nk:" + hex(sha256(canonical_json([type, value1, value2, ...]))). Returns a Rejection naming the
// first missing field, or a field whose value is null.
std::variant<std::string, Rejection> derive_natural_key(const CommandType& type,
                                                        const nlohmann::json& payload);

}  // namespace dedup
