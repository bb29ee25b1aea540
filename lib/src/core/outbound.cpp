#include "dedup/outbound.hpp"

#include <fmt/format.h>

#include "dedup/fingerprint.hpp"
#include "dedup/json_text.hpp"

namespace dedup {
namespace {

std::size_t optional_size(const std::optional<std::string>& bytes) noexcept {
  return bytes ? bytes->size() : 0;
}

// Kafka's record format adds two varint lengths per header (up to 5 bytes each): counted, or
// 100,000 empty headers would weigh nothing here and 200 KB on the wire.
constexpr std::size_t kHeaderFramingBytes = 10;

std::size_t header_bytes(const std::vector<RecordHeader>& headers) noexcept {
  std::size_t total = 0;
  for (const auto& header : headers) {
    total += header.name.size() + optional_size(header.value) + kHeaderFramingBytes;
  }
  return total;
}

void add_dedup_headers(OutboundRecord& out, const InboundRecord& record,
                       const Rejection& rejection) {
  out.headers.push_back({std::string(kDlqErrorCodeHeader), std::string(to_string(rejection.code))});
  out.headers.push_back({std::string(kDlqErrorMessageHeader), rejection.message});
  out.headers.push_back({std::string(kDlqSourceTopicHeader), record.source.topic});
  out.headers.push_back(
      {std::string(kDlqSourcePartitionHeader), std::to_string(record.source.partition)});
  out.headers.push_back({std::string(kDlqSourceOffsetHeader), std::to_string(record.source.offset)});
}

}  // namespace

std::size_t payload_bytes(const OutboundRecord& record) noexcept {
  return optional_size(record.key) + optional_size(record.value) + header_bytes(record.headers);
}

OutboundRecord make_result_record(const CommandResult& result, const std::string& results_topic,
                                  OutputLimit limit) {
  OutboundRecord out;
  out.topic = results_topic;
  out.key = result.record_key();
  if (result.cloudevent) {
    // The result of a CloudEvent is a CloudEvent itself (binary mode): its id is the input
    // record's position, the same when the result is replayed; its subject is the event it
    // answers. The body names that event in full ("cloudevent").
    out.headers = {
        {"ce_specversion", "1.0"},
        {"ce_id", fmt::format("{}:{}:{}", result.source.topic, result.source.partition,
                              result.source.offset)},
        {"ce_source", std::string(kResultEventSource)},
        {"ce_type", std::string(kResultEventType)},
        {"ce_subject", result.cloudevent->id},
        {"content-type", "application/json"},
    };
  }
  out.value = result.to_json_text();
  if (!limit.compact && payload_bytes(out) <= limit.max_bytes) return out;
  // The entity is the only part of a result that grows with the input (every other field is
  // bounded): it goes, and what identifies it stays. Postgres keeps it (`dedup-worker inspect`).
  if (!result.entity.is_null()) {
    const std::string entity = to_json_text(result.entity);
    const OmittedEntity omitted{entity.size(), to_hex(sha256(entity))};
    out.value = result.to_json_text(&omitted);
  }
  return out;
}

OutboundRecord make_dead_letter(const InboundRecord& record, const Rejection& rejection,
                                const std::string& dlq_topic, OutputLimit limit) {
  OutboundRecord out;
  out.topic = dlq_topic;
  out.key = record.key;
  out.value = record.value;
  out.headers = record.headers;
  add_dedup_headers(out, record, rejection);
  if (!limit.compact && payload_bytes(out) <= limit.max_bytes) return out;

  // Cut down: enough of the record to recognise it, and the means to match the original.
  std::string truncated;
  auto mark = [&](std::string_view what) {
    if (!truncated.empty()) truncated += ',';
    truncated += what;
  };
  out.headers.clear();
  if (header_bytes(record.headers) <= kDlqMaxOriginalHeaderBytes) {
    out.headers = record.headers;
  } else {
    mark("headers");
  }
  if (record.key && record.key->size() > kDlqKeyPrefixBytes) {
    out.key = record.key->substr(0, kDlqKeyPrefixBytes);
    mark("key");
  }
  if (record.value && record.value->size() > kDlqValuePrefixBytes) {
    out.value = record.value->substr(0, kDlqValuePrefixBytes);
    mark("value");
  }
  add_dedup_headers(out, record, rejection);
  if (truncated.empty()) mark("none");  // the broker refused a record that is already small
  out.headers.push_back({std::string(kDlqTruncatedHeader), truncated});
  out.headers.push_back(
      {std::string(kDlqOriginalSizeHeader), std::to_string(optional_size(record.value))});
  out.headers.push_back({std::string(kDlqOriginalSha256Header),
                         to_hex(sha256(record.value ? std::string_view(*record.value) : ""))});
  return out;
}

}  // namespace dedup
