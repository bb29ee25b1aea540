// The idempotent producer of results and dead letters, and the records it writes (SPEC §2–3).
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dedup/kafka/handles.hpp"
#include "dedup/observer.hpp"
#include "dedup/record.hpp"
#include "dedup/result.hpp"

namespace dedup::kafka {

// Dead-letter headers added to the original ones (SPEC §3).
inline constexpr std::string_view kDlqErrorCodeHeader = "dedup-error-code";
inline constexpr std::string_view kDlqErrorMessageHeader = "dedup-error-message";
inline constexpr std::string_view kDlqSourceTopicHeader = "dedup-source-topic";
inline constexpr std::string_view kDlqSourcePartitionHeader = "dedup-source-partition";
inline constexpr std::string_view kDlqSourceOffsetHeader = "dedup-source-offset";

// One record to write. Null key/value/header values are kept null (not empty) on the wire.
struct OutboundRecord {
  std::string topic;
  std::optional<std::string> key;
  std::optional<std::string> value;
  std::vector<RecordHeader> headers;
};

// The results-topic record of `result`: key "<scope>/<key>" (null when unknown), value
// result.to_json().dump(). Throws only std::bad_alloc (and nlohmann's type_error for entity JSON
// that is not valid UTF-8, which the store never produces).
OutboundRecord make_result_record(const CommandResult& result, const std::string& results_topic);

// The dead letter of a rejected `record`: its key, value and headers byte for byte, followed by
// the five dedup-* headers. Throws only std::bad_alloc.
OutboundRecord make_dead_letter(const InboundRecord& record, const Rejection& rejection,
                                const std::string& dlq_topic);

// What became of a batch: every record has a delivery report, success or error. Never "unknown".
struct BatchDelivery {
  std::size_t delivered = 0;
  std::size_t failed = 0;
  std::string first_error;  // empty when failed == 0

  bool ok() const noexcept { return failed == 0; }
};

struct ProducerOptions {
  std::string brokers;
  KafkaSettings settings;  // -X passthrough, applied after our defaults
  std::string client_id = "dedup-worker";
};

class Producer {
 public:
  // Creates an idempotent producer (enable.idempotence=true, acks=all; message.timeout.ms 60 s
  // and message.max.bytes 1 MiB + 64 KiB unless -X says otherwise). `observer` is borrowed and
  // must outlive the producer. Throws ConfigError("-X <key>", ...) for a bad setting, including
  // an attempt to turn idempotence off or acks below all.
  Producer(const ProducerOptions& options, Observer& observer);
  // Waits up to 5 s for queued messages (normally none: send_batch waits for every report).
  ~Producer();
  Producer(const Producer&) = delete;
  Producer& operator=(const Producer&) = delete;
  Producer(Producer&&) = delete;
  Producer& operator=(Producer&&) = delete;

  // Enqueues every record and blocks until each one has a delivery report. Per-record failures
  // (broker unreachable past message.timeout.ms, topic missing, too large...) are counted in the
  // result, never lost: ok() means Kafka acknowledged ALL of them. If `deadline` passes first, the
  // records still queued or in flight are purged and reported as failed (they may or may not have
  // been written: a retry can duplicate them, which the results contract allows).
  // Throws KafkaError(fatal = true) if the producer raised a fatal error (idempotence broken).
  BatchDelivery send_batch(std::span<const OutboundRecord> records,
                           std::chrono::steady_clock::time_point deadline =
                               std::chrono::steady_clock::time_point::max());

  // Serves callbacks (errors, logs) without blocking. Never throws.
  void poll() noexcept;

  // Waits until nothing is queued or `timeout` passed. Returns true when everything is delivered.
  bool flush(std::chrono::milliseconds timeout) noexcept;

  // Throws KafkaError(fatal = true) if librdkafka raised a fatal error on this producer.
  void throw_if_fatal() const;

  rd_kafka_t* handle() const noexcept { return handle_.get(); }

 private:
  struct Delivery;
  static void on_delivery(rd_kafka_t* rk, const rd_kafka_message_t* message, void* opaque);

  Observer& observer_;
  HandlePtr handle_;
};

}  // namespace dedup::kafka
