// The transport-neutral view of one input record: what Kafka delivered, or what a test or the
// benchmark feeds in directly.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <string>
#include <vector>

namespace dedup {

// Where a record was read from. The key store remembers the position of the record that claimed a
// key, so that reading that very record again (after a crash) republishes its original result.
struct SourcePosition {
  std::string topic;
  std::int32_t partition = 0;
  std::int64_t offset = 0;

  friend auto operator<=>(const SourcePosition&, const SourcePosition&) = default;
};

struct RecordHeader {
  std::string name;
  std::optional<std::string> value;  // bytes; nullopt for a header with a null value
};

// The first header named `name`, or nullptr.
inline const RecordHeader* find_header(std::span<const RecordHeader> headers,
                                       std::string_view name) {
  for (const auto& header : headers) {
    if (header.name == name) return &header;
  }
  return nullptr;
}

struct InboundRecord {
  SourcePosition source;
  std::optional<std::string> key;    // bytes, nullopt for a null key
  std::optional<std::string> value;  // bytes, nullopt for a null value (tombstone)
  std::vector<RecordHeader> headers;
  std::optional<std::int64_t> timestamp_ms;  // record timestamp (create or log-append time)
  // Which assignment of its partition the record was read under (the Kafka consumer numbers
  // every assignment; 0 elsewhere). A record read before its partition was revoked must not be
  // mistaken for one read after it was assigned again (kafka::Consumer::drop_unowned).
  std::uint64_t assignment = 0;

  // The first header with this name, if any.
  const RecordHeader* find_header(std::string_view name) const {
    return dedup::find_header(headers, name);
  }

  // What a batch counts against its byte limit (WorkerOptions::max_batch_bytes): key + value.
  std::size_t payload_bytes() const noexcept {
    return (key ? key->size() : 0) + (value ? value->size() : 0);
  }
};

}  // namespace dedup
