// The worker run loop (SPEC §4): poll a batch -> process -> publish results and dead letters ->
// wait for every acknowledgement -> commit offsets -> next batch. Single-threaded by design: the
// ordering "commit only after the transaction committed and Kafka acknowledged" is then the
// program order, and a batch is the unit of retry.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "dedup/backoff.hpp"
#include "dedup/kafka/handles.hpp"
#include "dedup/observer.hpp"
#include "dedup/processor.hpp"

namespace dedup {

namespace kafka {
class Consumer;
class Producer;
struct BatchDelivery;
}  // namespace kafka

struct WorkerOptions {
  std::string brokers;                 // --brokers
  std::string group = "dedup-worker";  // --group
  std::string commands_topic = "commands";
  std::string results_topic;            // empty: <commands_topic>.results
  std::string dlq_topic;                // empty: <commands_topic>.dlq
  kafka::KafkaSettings kafka_settings;  // -X key=value, for the consumer and the producer

  std::size_t max_batch_records = 500;
  std::size_t max_batch_bytes = 16 * 1024 * 1024;
  std::chrono::milliseconds max_batch_wait{200};  // wait for the first record of a batch

  // On shutdown, how long the in-flight batch may still take (processing, publishing, retries).
  // Keep below the pod's terminationGracePeriodSeconds.
  std::chrono::milliseconds drain_timeout{20'000};

  // Backoff between retries of a batch (database unavailable, publishing failed): exponential
  // from `backoff_initial`, capped at `backoff_max`, each wait randomized to [50%, 100%].
  std::chrono::milliseconds backoff_initial{200};
  std::chrono::milliseconds backoff_max{30'000};

  // Run from the loop every `cleanup_interval` (first run one interval after start). Exceptions
  // it throws are logged and ignored: expired keys are treated as absent anyway (SPEC §4).
  std::function<void()> cleanup;
  std::chrono::milliseconds cleanup_interval{300'000};

  std::chrono::milliseconds lag_report_interval{5'000};
};

// Failpoints, FOR CRASH TESTS ONLY: with DEDUP_FAILPOINT=<name>[:<n>] in the environment, the
// worker kills itself with SIGKILL the n-th time (default 1st) it reaches <name>:
//   after_db_commit       the batch is committed in Postgres, nothing published
//   after_results_acked   results and dead letters acknowledged, offsets not committed
//   before_offset_commit  observer notified, right before the offset commit
// Unset in production; an unknown name is a ConfigError("DEDUP_FAILPOINT", ...).
inline constexpr const char* kFailpointEnv = "DEDUP_FAILPOINT";

class Worker {
 public:
  // Creates the consumer (subscribed) and the producer. The processor and observer are borrowed
  // and must outlive the worker. Throws ConfigError for a bad option or -X setting (exit 2) and
  // kafka::KafkaError when a client cannot be created.
  Worker(WorkerOptions options, Processor& processor, Observer& observer);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Runs until request_stop() or a failure. Returns the process exit status: 0 after a clean
  // shutdown (in-flight batch finished within drain_timeout, offsets committed, group left,
  // producer flushed), 1 after PermanentDatabaseError, a fatal Kafka error or an unexpected
  // exception (logged). Call once. Never throws but std::bad_alloc.
  int run();

  // Asks run() to finish the in-flight batch and return. Async-signal-safe (one lock-free atomic
  // store), so it may be called from a SIGTERM handler; thread-safe.
  void request_stop() noexcept;

  // For /readyz: partitions are assigned, the database answered the last batch, and no stop was
  // requested. Thread-safe.
  bool ready() const noexcept;

 private:
  enum class BatchOutcome { done, abandoned };
  BatchOutcome handle_batch(std::vector<InboundRecord>& batch);
  // Serves the consumer for the backoff of `attempt` (or less, when stopping). Then drops records
  // of revoked partitions from `batch`.
  void back_off(int attempt, std::vector<InboundRecord>& batch);
  // Throws a fatal kafka::KafkaError when a client reported an authentication, TLS or
  // authorization error and no partition was ever assigned: start-up cannot succeed.
  void stop_if_kafka_refuses_access() const;
  // Drops the records of `batch` that were not read under their partition's current assignment.
  void drop_unowned(std::vector<InboundRecord>& batch);
  // Writes one result per record and a dead letter per rejected one, waiting for every
  // acknowledgement; records too large for Kafka are written cut down (dedup/outbound.hpp).
  kafka::BatchDelivery publish(const std::vector<InboundRecord>& batch,
                               const std::vector<CommandResult>& results,
                               std::chrono::steady_clock::time_point deadline);
  void note_stop() noexcept;
  bool drain_expired() noexcept;
  void warn_about_missing_topics();
  void maybe_cleanup();
  void maybe_report_lag();
  void failpoint(const char* name);

  WorkerOptions options_;
  Processor& processor_;
  Observer& observer_;
  Backoff backoff_;
  // What a result or dead letter may weigh (dedup/outbound.hpp): the producer's
  // message.max.bytes, less librdkafka's framing.
  std::size_t output_max_bytes_ = 0;
  std::unique_ptr<kafka::Consumer> consumer_;
  std::unique_ptr<kafka::Producer> producer_;

  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> db_healthy_{true};
  std::chrono::steady_clock::time_point drain_deadline_{};  // set when the stop is first seen
  std::chrono::steady_clock::time_point next_cleanup_{};
  std::chrono::steady_clock::time_point next_lag_report_{};

  std::string failpoint_name_;  // empty: none
  long failpoint_countdown_ = 0;
};

static_assert(std::atomic<bool>::is_always_lock_free, "request_stop must be async-signal-safe");

// Routes SIGTERM and SIGINT to worker.request_stop() while alive; restores the previous handlers
// when destroyed. One at a time (throws std::logic_error if another is alive).
class StopSignals {
 public:
  explicit StopSignals(Worker& worker);
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct sigaction_storage;
  std::unique_ptr<sigaction_storage> previous_;
};

}  // namespace dedup
