// Hooks through which the library reports what it does, for metrics and logs. The Prometheus
// implementation is dedup::Metrics (metrics.hpp); tests use fakes or the no-op base. Every method
// has an empty default so an observer overrides only what it needs. Methods may be called from the
// worker's loop, from the threads of its transactions (the Processor's and key store's hooks, at
// the same time as the loop's, even with one lane) and from librdkafka's callbacks;
// implementations must be thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "dedup/result.hpp"

namespace dedup {

enum class DbErrorKind { transient, permanent };

class Observer {
 public:
  virtual ~Observer() = default;

  // Processor: a batch of `records` records was handed to Processor::process.
  virtual void on_batch(std::size_t /*records*/) {}
  // Processor: KeyStore::apply took `seconds` (including its internal retries).
  virtual void on_store_transaction(double /*seconds*/) {}
  // Key store: a database attempt failed (transient ones are retried; every failure counts).
  virtual void on_db_error(DbErrorKind /*kind*/) {}
  // Cleanup: `count` expired keys were deleted.
  virtual void on_keys_expired(std::size_t /*count*/) {}

  // Worker: Kafka acknowledged the result of one record (and its dead letter, if rejected).
  // `end_to_end_seconds` is record timestamp -> acknowledgement, negative when unknown.
  virtual void on_result_published(const CommandResult& /*result*/, double /*end_to_end_seconds*/) {}
  // Worker: every result of a batch has been reported by on_result_published, and the batch's
  // offsets are about to be committed (what must be out before then, such as the audit lines, goes
  // out now).
  virtual void on_results_published() {}
  // Worker: a Kafka error was reported (by a callback, a failed delivery or a failed commit).
  virtual void on_kafka_error(std::string_view /*what*/) {}
  // Worker: current lag of an assigned partition (high watermark - committed/consumed position).
  virtual void on_consumer_lag(std::int32_t /*partition*/, std::int64_t /*lag*/) {}
  // Worker: a partition was revoked; forget its lag.
  virtual void on_partition_revoked(std::int32_t /*partition*/) {}
};

}  // namespace dedup
