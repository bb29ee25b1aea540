// The idempotent producer of results and dead letters, and the records it writes (SPEC §2–3).
#pragma once

#include <chrono>
#include <memory>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dedup/kafka/handles.hpp"
#include "dedup/observer.hpp"
#include "dedup/record.hpp"
#include "dedup/outbound.hpp"

namespace dedup::kafka {

// The records are built in the core (dedup/outbound.hpp); this layer only transports them.
using dedup::OutboundRecord;

// What became of a batch: every record has a delivery report, success or error. Never "unknown".
struct BatchDelivery {
  std::size_t delivered = 0;
  std::size_t failed = 0;
  std::string first_error;  // empty when failed == 0
  // Indices (into the records sent) of those refused as too large, by librdkafka or the broker:
  // a property of the record, not of the infrastructure, so the caller writes them cut down.
  std::vector<std::size_t> too_large;
  // When the last report arrived (for end-to-end latency); unset when nothing was sent.
  std::chrono::system_clock::time_point acknowledged_at{};

  bool ok() const noexcept { return failed == 0; }
};

struct ProducerOptions {
  std::string brokers;
  KafkaSettings settings;  // -X passthrough, applied after our defaults
  std::string client_id = "dedup-worker";
};

class Producer {
  struct Delivery;  // the reports of one send()

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

  // Records on their way: enqueued, their delivery reports arriving while the caller does other
  // work (reports are served by poll(), wait() and send()). Move-only; destroying one whose
  // reports have not all arrived waits for them (up to the purge grace), so no report can find
  // freed memory.
  class InFlight {
   public:
    InFlight();
    InFlight(InFlight&&) noexcept;
    InFlight& operator=(InFlight&&) noexcept;
    ~InFlight();
    // True when there is nothing on its way (default-constructed, or already waited for).
    bool empty() const noexcept { return delivery_ == nullptr; }

   private:
    friend class Producer;
    Producer* producer_ = nullptr;
    std::unique_ptr<Delivery> delivery_;
  };

  // Enqueues every record and returns at once. Records refused before queueing (too large for
  // the producer, unknown topic) are counted as failed in the InFlight's outcome.
  // Throws KafkaError(fatal = true) if the producer raised a fatal error (idempotence broken).
  InFlight send(std::span<const OutboundRecord> records);

  // Blocks until each record of `in_flight` has a delivery report. Per-record failures (broker
  // unreachable past message.timeout.ms, topic missing, too large...) are counted in the result,
  // never lost: ok() means Kafka acknowledged ALL of them. If `deadline` passes first, the
  // records still queued or in flight are purged — every record of this producer, not only
  // these — and reported as failed (they may or may not have been written: a retry can
  // duplicate them, which the results contract allows). Leaves `in_flight` empty.
  // Throws KafkaError(fatal = true) if the producer raised a fatal error.
  BatchDelivery wait(InFlight& in_flight, std::chrono::steady_clock::time_point deadline =
                                              std::chrono::steady_clock::time_point::max());

  // send() then wait().
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

  // The first authentication, TLS or authorization error reported, or "".
  const std::string& access_error() const noexcept { return access_error_.message(); }

  // The producer's message.max.bytes: no record larger than this can be written.
  std::size_t max_message_bytes() const;

 private:
  static void on_delivery(rd_kafka_t* rk, const rd_kafka_message_t* message, void* opaque);

  Observer& observer_;
  HandlePtr handle_;
  AccessError access_error_;
};

}  // namespace dedup::kafka
