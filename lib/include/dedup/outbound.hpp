// The records the worker writes (SPEC §2–3): one result per input record, and a dead letter per
// rejected one. Built here, in the core, so the wire format is one piece of domain logic that the
// Kafka layer only transports.
//
// Every record written must fit the producer's and the broker's size limits, or the record it
// answers could never be committed: a result whose entity is too large omits the entity (its size
// and SHA-256 stand in for it; Postgres keeps it), and a dead letter whose original record is too
// large keeps a prefix of it, flagged in headers (docs/contract.md §2–3).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dedup/command.hpp"
#include "dedup/record.hpp"
#include "dedup/result.hpp"

namespace dedup {

// Dead-letter headers added to the original ones (SPEC §3).
inline constexpr std::string_view kDlqErrorCodeHeader = "dedup-error-code";
inline constexpr std::string_view kDlqErrorMessageHeader = "dedup-error-message";
inline constexpr std::string_view kDlqSourceTopicHeader = "dedup-source-topic";
inline constexpr std::string_view kDlqSourcePartitionHeader = "dedup-source-partition";
inline constexpr std::string_view kDlqSourceOffsetHeader = "dedup-source-offset";
// Only on a dead letter that could not carry the original record whole: what was cut
// ("key", "value", "headers", comma-separated), and the original value's size and SHA-256.
inline constexpr std::string_view kDlqTruncatedHeader = "dedup-truncated";
inline constexpr std::string_view kDlqOriginalSizeHeader = "dedup-original-size";
inline constexpr std::string_view kDlqOriginalSha256Header = "dedup-original-sha256";

// The result of a CloudEvent is a CloudEvent (binary mode) of this source and type.
inline constexpr std::string_view kResultEventSource = "dedup-worker";
inline constexpr std::string_view kResultEventType = "dedup.result";

// What a cut-down dead letter keeps of the original record.
inline constexpr std::size_t kDlqValuePrefixBytes = 4096;
inline constexpr std::size_t kDlqKeyPrefixBytes = 1024;
inline constexpr std::size_t kDlqMaxOriginalHeaderBytes = std::size_t{16} * 1024;

// One record to write. Null key/value/header values are kept null (not empty) on the wire.
struct OutboundRecord {
  std::string topic;
  std::optional<std::string> key;
  std::optional<std::string> value;
  std::vector<RecordHeader> headers;
  std::int32_t partition = -1;  // -1: chosen from the key by the producer's partitioner

  // The first header with this name, if any.
  const RecordHeader* find_header(std::string_view name) const {
    return dedup::find_header(headers, name);
  }
};

// Key, value, header names and values: what counts against a message size limit, less the
// protocol's own few dozen bytes.
std::size_t payload_bytes(const OutboundRecord& record) noexcept;

// How a record is written: whole when it fits `max_bytes` (payload_bytes), cut down when it does
// not, or cut down whatever its size (`compact`: the broker refused the whole one as too large).
struct OutputLimit {
  std::size_t max_bytes = 0;
  bool compact = false;
};

// The results-topic record of `result`: key CommandResult::record_key() (null when unknown),
// value the result document; when the input was a CloudEvent, headers ce_specversion 1.0, ce_id
// "<topic>:<partition>:<offset>" of the input, ce_source kResultEventSource, ce_type
// kResultEventType, ce_subject the input's id, content-type application/json. When it exceeds the limit, "entity" is null and "entity_omitted":
// {"bytes": <size of the entity's JSON>, "sha256": <hex of it>} is added.
OutboundRecord make_result_record(const CommandResult& result, const std::string& results_topic,
                                  OutputLimit limit);

// The dead letter of a rejected `record`: its key, value and headers byte for byte, followed by
// the five dedup-* headers. Cut down when over the limit: the value's first kDlqValuePrefixBytes,
// the key's first kDlqKeyPrefixBytes, the original headers only if they total at most
// kDlqMaxOriginalHeaderBytes, plus the three headers above.
OutboundRecord make_dead_letter(const InboundRecord& record, const Rejection& rejection,
                                const std::string& dlq_topic, OutputLimit limit);

}  // namespace dedup
