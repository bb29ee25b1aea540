// The worker run loop (SPEC §4): poll a batch -> process it (its transactions, on a thread of
// their own) while this thread waits for every acknowledgement of the previous batch's results
// and commits its offsets -> send this batch's results and dead letters -> next batch (docs/
// design.md, "The worker loop"). Everything but the transactions stays on the loop's thread:
// "commit only after Kafka acknowledged" is the program order of finish_in_flight(), a batch's
// results are sent only after the previous batch is finished, and a batch is the unit of retry.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <exception>
#include <memory>
#include <span>
#include <string>

#include "dedup/backoff.hpp"
#include "dedup/observer.hpp"
#include "dedup/processor.hpp"
#include "dedup/stop_signals.hpp"
#include "dedup/worker_options.hpp"

namespace dedup {

namespace kafka {
class Consumer;
class Producer;
struct PartitionOffset;
}  // namespace kafka
class Publication;

// Where results and dead letters go, and what one may weigh (dedup/outbound.hpp).
struct OutputTopics {
  std::string results;
  std::string dlq;
  std::size_t max_bytes = 0;  // the producer's message.max.bytes, less librdkafka's framing
};

class Worker final : public Stoppable {
 public:
  // Creates the consumer (subscribed) and the producer. The processor and observer are borrowed
  // and must outlive the worker. Throws ConfigError for a bad option or -X setting (exit 2) and
  // kafka::KafkaError when a client cannot be created.
  Worker(WorkerOptions options, BatchProcessor& processor, Observer& observer);
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
  void request_stop() noexcept override;

  // For /readyz: partitions are assigned, the database answered the last batch, and no stop was
  // requested. Thread-safe.
  bool ready() const noexcept;

 private:
  enum class BatchOutcome { done, abandoned };
  BatchOutcome handle_batch(std::vector<InboundRecord>& batch);
  // What one attempt at a batch's transaction came to, and what finishing the batch on its way
  // came to meanwhile.
  struct Processed {
    std::vector<CommandResult> results;
    std::exception_ptr error;  // what processing threw, if it did
    BatchOutcome in_flight = BatchOutcome::done;
  };
  // Processes `batch` on a thread of its own while this one finishes the batch on its way, if
  // any: the loop's own work (acknowledgements, per-record metrics and logs, the offset commit)
  // is then off the database's path. Returns after both.
  Processed process_beside_in_flight(std::span<const InboundRecord> batch);
  // Serves the consumer for the backoff of `attempt` (or less, when stopping). Then drops records
  // of revoked partitions from `batch`, if given.
  void back_off(int attempt, std::vector<InboundRecord>* batch);
  // Throws a fatal kafka::KafkaError when a client reported an authentication, TLS or
  // authorization error and no partition was ever assigned: start-up cannot succeed.
  void stop_if_kafka_refuses_access() const;
  // Drops the records of `batch` that were not read under their partition's current assignment.
  void drop_unowned(std::vector<InboundRecord>& batch);
  // Waits for the acknowledgements of the batch whose results are on their way (sending again
  // after failures, with backoff), then commits its offsets.
  BatchOutcome finish_in_flight();
  // Sends these offsets for commit, with the owed ones, without waiting; the next is deferred
  // until --commit-interval from now.
  void send_commit(std::span<const kafka::PartitionOffset> offsets);
  // Forgets the batch on its way, uncommitted (drain timeout, failure).
  void abandon_in_flight() noexcept;
  void note_stop() noexcept;
  bool drain_expired() noexcept;
  void warn_about_missing_topics();
  void maybe_cleanup();
  void maybe_report_lag();
  void failpoint(const char* name);
  // Whether failpoint(name) would kill the process if reached now (for a failpoint whose state
  // depends on two threads, to reach it deterministically).
  bool failpoint_due(const char* name) const;

  WorkerOptions options_;
  BatchProcessor& processor_;
  Observer& observer_;
  Backoff backoff_;
  OutputTopics output_topics_;
  std::unique_ptr<kafka::Consumer> consumer_;
  std::unique_ptr<kafka::Producer> producer_;
  // The batch whose results are on their way while the next one is in its transaction (at most
  // one: memory stays at two batches whatever the backlog). Declared after producer_: destroyed
  // first, since it waits for its reports.
  std::unique_ptr<Publication> in_flight_;

  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> db_healthy_{true};
  std::chrono::steady_clock::time_point drain_deadline_{};  // set when the stop is first seen
  std::chrono::steady_clock::time_point next_cleanup_{};
  std::chrono::steady_clock::time_point next_commit_{};  // offsets are deferred until then
  std::chrono::steady_clock::time_point next_lag_report_{};

};

}  // namespace dedup
