// Builders for dedup::InboundRecord, for tests that feed records to parse_command, the Processor or
// the key store without going through Kafka.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dedup/record.hpp"

namespace dedup::test {

// A record at `position` whose value is `value`, byte for byte (nullopt: a null value). Use it for
// values that are not valid JSON, or whose exact bytes matter (size limits, invalid UTF-8).
inline InboundRecord record_raw(std::optional<std::string> value,
                                SourcePosition position = {"commands", 0, 0},
                                std::vector<RecordHeader> headers = {}) {
  InboundRecord record;
  record.source = std::move(position);
  record.value = std::move(value);
  record.headers = std::move(headers);
  return record;
}

// A record at `position` whose value is `body` serialized as compact JSON.
inline InboundRecord record(const nlohmann::json& body,
                            SourcePosition position = {"commands", 0, 0},
                            std::vector<RecordHeader> headers = {}) {
  return record_raw(body.dump(), std::move(position), std::move(headers));
}

// A record header; nullopt gives a header with a null value.
inline RecordHeader header(std::string name, std::optional<std::string> value) {
  return RecordHeader{std::move(name), std::move(value)};
}

// The command envelope of SPEC §1 with every field set. Tests that exercise one field take this and
// change or erase just that field.
inline nlohmann::json command_body(std::string idempotency_key, std::string scope, std::string type,
                                   nlohmann::json payload) {
  return {{"idempotency_key", std::move(idempotency_key)},
          {"scope", std::move(scope)},
          {"type", std::move(type)},
          {"payload", std::move(payload)}};
}

}  // namespace dedup::test
