#include "dedup/worker.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <future>
#include <stdexcept>
#include <system_error>

#include "dedup/errors.hpp"
#include "dedup/kafka/consumer.hpp"
#include "dedup/kafka/producer.hpp"
#include "worker/publication.hpp"

namespace dedup {
namespace {

using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kServeSlice{100};

// From the record's timestamp to the acknowledgement of its result (not to when the loop gets
// to it: with pipelining that is while the next batch is in its transaction).
double end_to_end_seconds(const InboundRecord& record,
                          std::chrono::system_clock::time_point acknowledged_at) {
  if (!record.timestamp_ms) return -1.0;
  if (acknowledged_at == std::chrono::system_clock::time_point{}) {
    acknowledged_at = std::chrono::system_clock::now();
  }
  const auto at_ms =
      std::chrono::duration_cast<milliseconds>(acknowledged_at.time_since_epoch()).count();
  return static_cast<double>(at_ms - *record.timestamp_ms) / 1000.0;
}

// librdkafka checks key + value + headers plus its framing against message.max.bytes; this much
// is left for the framing (a few dozen bytes per record and header).
constexpr std::size_t kFramingAllowance = 4096;
// The largest cut-down record (dedup/outbound.hpp) is a dead letter: 4 KiB of value, 1 KiB of
// key, up to 16 KiB of original headers, ~1.5 KiB of its own; a result without its entity is
// smaller. Below this, some records could never be written and their batch would retry forever.
constexpr std::size_t kMinMessageMaxBytes = std::size_t{64} * 1024;

// A failed offset commit is not the batch's failure: its results are out, and the consumer keeps
// the offsets for the next commit while the partition stays ours.
void warn_if_failed(const kafka::CommitOutcome& commit) {
  if (!commit.ok) spdlog::warn("offset commit failed (kept for the next commit): {}", commit.error);
}

}  // namespace

Worker::Worker(WorkerOptions options, BatchProcessor& processor, Observer& observer)
    : options_(checked(std::move(options))),
      processor_(processor),
      observer_(observer),
      backoff_(options_.backoff_initial, options_.backoff_max) {
  if (!options_.failpoint.name.empty()) {
    spdlog::warn("TEST FAILPOINT armed: the worker kills itself at {} (hit {})",
                 options_.failpoint.name, options_.failpoint.hit);
  }
  producer_ = std::make_unique<kafka::Producer>(
      kafka::ProducerOptions{options_.brokers, options_.kafka_settings}, observer_);
  if (producer_->max_message_bytes() < kMinMessageMaxBytes) {
    throw ConfigError("-X message.max.bytes",
                      "must be at least " + std::to_string(kMinMessageMaxBytes) +
                          ": a cut-down dead letter needs up to ~24 KiB");
  }
  output_topics_ = {options_.results_topic, options_.dlq_topic,
                    producer_->max_message_bytes() - kFramingAllowance};
  kafka::ConsumerOptions consumer_options{
      options_.brokers, options_.group, {options_.commands_topic}, options_.kafka_settings};
  if (processor_.transactions_per_batch() > 1) {
    // Lanes take whole partitions: a poll of N batches must span partitions to keep N busy.
    consumer_options.per_partition_in_batch = options_.max_batch_records;
  }
  consumer_ = std::make_unique<kafka::Consumer>(consumer_options, observer_);
}

Worker::~Worker() = default;

void Worker::request_stop() noexcept { stop_requested_.store(true); }

bool Worker::ready() const noexcept {
  return !stop_requested_.load() && db_healthy_.load() && consumer_->assigned_count() > 0;
}

void Worker::note_stop() noexcept {
  // The signal handler can only set a flag; the drain clock starts when the loop first sees it.
  if (stop_requested_.load() && drain_deadline_ == SteadyClock::time_point{}) {
    drain_deadline_ = SteadyClock::now() + options_.drain_timeout;
  }
}

bool Worker::drain_expired() noexcept {
  note_stop();
  return drain_deadline_ != SteadyClock::time_point{} && SteadyClock::now() >= drain_deadline_;
}

int Worker::run() {
  try {
    const auto start = SteadyClock::now();
    next_cleanup_ = start + options_.cleanup_interval;
    next_lag_report_ = start;
    spdlog::info("worker started: {} -> {} / {} (group {})", options_.commands_topic,
                 options_.results_topic, options_.dlq_topic, options_.group);
    warn_about_missing_topics();

    while (!stop_requested_.load()) {
      maybe_cleanup();
      maybe_report_lag();
      producer_->poll();
      // With results on their way, take only what is already fetched: waiting for a fuller
      // batch would delay their acknowledgement and offset commit for nothing.
      std::vector<InboundRecord> batch = consumer_->poll_batch(
          options_.max_batch_records * processor_.transactions_per_batch(),
          options_.max_batch_bytes, in_flight_ ? milliseconds::zero() : options_.max_batch_wait);
      stop_if_kafka_refuses_access();
      drop_unowned(batch);
      BatchOutcome outcome = BatchOutcome::done;
      if (!batch.empty()) {
        outcome = handle_batch(batch);
      } else if (in_flight_) {
        outcome = finish_in_flight();
        // Caught up (nothing was fetched meanwhile): the owed offsets go now, not after the
        // next poll's wait for a record.
        if (outcome == BatchOutcome::done && consumer_->owes_commits()) send_commit({});
      } else {
        warn_if_failed(consumer_->finish_commit());  // the last batch's
        // Deferred offsets go as soon as no batch comes; failed ones are tried again.
        if (const auto owed = consumer_->commit_owed(); !owed.ok) {
          spdlog::debug("offset commit failed while idle (tried again next time): {}", owed.error);
        }
      }
      if (outcome == BatchOutcome::abandoned) break;
      if (consumer_->paused()) consumer_->resume_all();
    }
    if (in_flight_ && !drain_expired()) (void)finish_in_flight();
    abandon_in_flight();

    spdlog::info("worker stopping: leaving the group, flushing the producer");
    consumer_->close();  // commits the owed offsets first
    if (!producer_->flush(milliseconds(5'000))) spdlog::warn("producer flush timed out");
    return 0;
  } catch (const PermanentDatabaseError& e) {
    spdlog::critical("permanent database error, stopping: {} (SQLSTATE {})", e.what(),
                     e.sqlstate().empty() ? "none" : e.sqlstate());
  } catch (const kafka::KafkaError& e) {
    spdlog::critical("kafka error, stopping: {}", e.what());
  } catch (const std::exception& e) {
    spdlog::critical("unexpected error, stopping: {}", e.what());
  }
  db_healthy_.store(false);
  in_flight_.reset();  // uncommitted: redelivered and replayed
  return 1;
}

Worker::BatchOutcome Worker::handle_batch(std::vector<InboundRecord>& batch) {
  for (int attempt = 0;; ++attempt) {
    if (batch.empty()) {
      // Every partition of the batch was revoked during a backoff. Whether the database is back is
      // unknown until the next batch; readiness must not stay false on an idle worker meanwhile.
      db_healthy_.store(true);
      return in_flight_ ? finish_in_flight() : BatchOutcome::done;
    }
    if (drain_expired()) {
      spdlog::warn(
          "drain timeout: abandoning a batch of {} record(s) uncommitted (redelivered "
          "later, results replayed)",
          batch.size());
      abandon_in_flight();
      return BatchOutcome::abandoned;
    }

    Processed processed = process_beside_in_flight(batch);
    // Abandoned while stopping: neither batch is committed; both are read again and replayed. A
    // permanent error still ends the run with its status (thrown below, to run()).
    const bool abandoned = processed.in_flight == BatchOutcome::abandoned;
    try {
      if (processed.error) std::rethrow_exception(processed.error);
    } catch (const TransientDatabaseError& e) {
      if (abandoned) return BatchOutcome::abandoned;
      spdlog::warn("database unavailable (attempt {}), batch of {} will be retried: {}",
                   attempt + 1, batch.size(), e.what());
      // The previous batch was finished meanwhile. Stop fetching but keep polling: the group must
      // see us alive and rebalances must be served.
      if (!consumer_->paused()) consumer_->pause_all();
      back_off(attempt, &batch);
      continue;
    }
    if (abandoned) return BatchOutcome::abandoned;
    db_healthy_.store(true);
    std::vector<CommandResult>& results = processed.results;
    if (results.size() != batch.size()) {
      throw std::logic_error("processor returned " + std::to_string(results.size()) +
                             " results for " + std::to_string(batch.size()) + " records");
    }
    // Sent only now that the previous batch is finished: a partition's results and offset commits
    // follow the order of its batches.
    failpoint("after_db_commit");
    in_flight_ = std::make_unique<Publication>(*producer_, std::move(batch), std::move(results),
                                               output_topics_);
    return BatchOutcome::done;
  }
}

Worker::Processed Worker::process_beside_in_flight(std::span<const InboundRecord> batch) {
  Processed processed;
  const bool beside = in_flight_ != nullptr;
  auto process = [&] {
    try {
      processed.results = processor_.process(batch);
    } catch (...) {
      processed.error = std::current_exception();
      // Not ready from now on, not only once the previous batch is finished (which can take as
      // long as Kafka refuses its results).
      db_healthy_.store(false);
      return;
    }
    if (beside) failpoint("after_db_commit_in_flight");
  };
  if (!beside) {
    process();
    return processed;
  }
  std::future<void> running;
  if (failpoint_due("after_db_commit_in_flight")) {
    // Crash tests: the state the failpoint names, exactly. This batch committed, the previous
    // one not yet finished (its acknowledgements not awaited, its offsets not sent).
    process();
  } else {
    try {
      running = std::async(std::launch::async, process);
    } catch (const std::system_error&) {
      process();  // no thread to be had: one after the other
    }
  }
  // Should finishing throw, the future's destructor waits for the transaction before `processed`
  // and `batch` go.
  processed.in_flight = finish_in_flight();
  if (running.valid()) running.get();
  return processed;
}

Worker::BatchOutcome Worker::finish_in_flight() {
  Publication& publication = *in_flight_;
  kafka::BatchDelivery delivery;
  for (int attempt = 0;; ++attempt) {
    if (attempt > 0) publication.resend();
    note_stop();
    const auto deadline = drain_deadline_ != SteadyClock::time_point{}
                              ? drain_deadline_
                              : SteadyClock::time_point::max();
    // Past the drain deadline this only collects the reports that already arrived: if all did,
    // the batch is still committed (fewer repeats after the shutdown).
    delivery = publication.finish(deadline);
    if (delivery.ok()) break;
    if (drain_expired()) {
      spdlog::warn("drain timeout: abandoning the results of {} record(s) on their way, offsets "
                   "uncommitted (redelivered later, results replayed)",
                   publication.batch().size());
      abandon_in_flight();
      return BatchOutcome::abandoned;
    }
    // Nothing is committed; the records are sent again (the store would replay the same results
    // for the same source positions, so sending the ones built is the same thing, cheaper).
    spdlog::warn("publishing failed for {} of {} record(s) (attempt {}): {}", delivery.failed,
                 delivery.delivered + delivery.failed, attempt + 1, delivery.first_error);
    if (!consumer_->paused()) consumer_->pause_all();
    // The batch keeps every record while it waits: its results and dead letters are matched to
    // its records by index. Records of revoked partitions are dropped right before the commit.
    back_off(attempt, nullptr);
  }
  failpoint("after_results_acked");

  std::vector<InboundRecord>& batch = publication.batch();
  const std::vector<CommandResult>& results = publication.results();
  for (std::size_t i = 0; i < batch.size(); ++i) {
    observer_.on_result_published(results[i],
                                  end_to_end_seconds(batch[i], delivery.acknowledged_at));
  }
  observer_.on_results_published();  // the audit lines are out before the offsets go
  failpoint("before_offset_commit");

  // Callbacks run while polling, so partitions may have moved since the batch was read:
  // committing for a partition read under an earlier assignment is the one thing that can lose
  // records.
  drop_unowned(batch);
  // Sent, not waited for: the broker applies it while the next batch is processed. The previous
  // batch's commit is finished first (it normally arrived long ago), so commits of a partition
  // are applied in order; a failed one is kept and sent again with this one, or while idle, if
  // its partition stays ours (if it moves, the new owner re-reads and replays the same results).
  // Within --commit-interval of the last commit the offsets are owed instead, and sent with the
  // next one, or while idle, or before their partition is revoked.
  const auto offsets = kafka::next_offsets(batch);
  if (SteadyClock::now() >= next_commit_) {
    send_commit(offsets);
  } else {
    consumer_->defer_commit(offsets);
    failpoint("after_offset_commit_deferred");
  }
  in_flight_.reset();
  return BatchOutcome::done;
}

void Worker::send_commit(std::span<const kafka::PartitionOffset> offsets) {
  warn_if_failed(consumer_->start_commit(offsets));  // the owed offsets go with these
  next_commit_ = SteadyClock::now() + options_.commit_interval;
  failpoint("after_offset_commit_sent");
}

void Worker::abandon_in_flight() noexcept {
  // Its offsets are not committed: its records are delivered again and their results replayed.
  in_flight_.reset();
}

void Worker::back_off(int attempt, std::vector<InboundRecord>* batch) {
  // Owed offsets are of batches whose results are out: an outage must not hold them back (a
  // crash during it would replay those batches too).
  if (consumer_->owes_commits()) send_commit({});
  const auto end = SteadyClock::now() + backoff_.delay(attempt);
  for (;;) {
    note_stop();
    const auto until = stop_requested_.load() ? std::min(end, drain_deadline_) : end;
    const auto left = std::chrono::duration_cast<milliseconds>(until - SteadyClock::now());
    if (left <= milliseconds::zero()) break;
    consumer_->serve(std::min(left, kServeSlice));
    producer_->poll();
    stop_if_kafka_refuses_access();
    maybe_report_lag();  // lag grows during an outage: that is exactly when it must be seen
  }
  if (batch != nullptr) drop_unowned(*batch);
}

void Worker::stop_if_kafka_refuses_access() const {
  // librdkafka retries a failed login or TLS handshake forever; a worker that never got a
  // partition would wait forever with it. Once it has worked, the same errors are taken as
  // passing (a broker's certificate being rotated) and only counted.
  if (consumer_->ever_assigned()) return;
  for (const std::string* error : {&consumer_->access_error(), &producer_->access_error()}) {
    if (!error->empty()) {
      throw kafka::KafkaError("Kafka refuses access (credentials, TLS trust or ACLs): " + *error,
                              RD_KAFKA_RESP_ERR__AUTHENTICATION, /*fatal=*/true);
    }
  }
}

void Worker::drop_unowned(std::vector<InboundRecord>& batch) {
  if (const auto dropped = consumer_->drop_unowned(batch); dropped > 0) {
    spdlog::info("dropped {} in-flight record(s) of revoked partitions; they are read again from "
                 "the committed offset by the partition's owner",
                 dropped);
  }
}

void Worker::warn_about_missing_topics() {
  // Only a warning: topics may be created by an operator after start (the worker retries
  // publishing until they exist), and a broker may be slow to answer at start-up.
  const auto topics = kafka::list_topics(producer_->handle(), milliseconds(5'000));
  if (!topics) {
    spdlog::warn("could not list topics at start-up (brokers unreachable?)");
    return;
  }
  for (const std::string* name :
       {&options_.commands_topic, &options_.results_topic, &options_.dlq_topic}) {
    if (std::find(topics->begin(), topics->end(), *name) == topics->end()) {
      spdlog::warn("topic '{}' does not exist: {}", *name,
                   name == &options_.commands_topic ? "nothing to consume until it does"
                                                    : "publishing will be retried until it does");
    }
  }
}

void Worker::maybe_cleanup() {
  if (!options_.cleanup || SteadyClock::now() < next_cleanup_) return;
  try {
    options_.cleanup();
  } catch (const std::exception& e) {
    spdlog::warn("periodic cleanup of expired keys failed (retried next interval): {}", e.what());
  }
  next_cleanup_ = SteadyClock::now() + options_.cleanup_interval;
}

void Worker::maybe_report_lag() {
  if (SteadyClock::now() < next_lag_report_) return;
  consumer_->report_lag();
  next_lag_report_ = SteadyClock::now() + options_.lag_report_interval;
}

bool Worker::failpoint_due(const char* name) const {
  return options_.failpoint.name == name && options_.failpoint.hit <= 1;
}

void Worker::failpoint(const char* name) {
  if (options_.failpoint.name != name) return;
  if (--options_.failpoint.hit > 0) return;
  // Straight to stderr, past the logger: the lines it holds (LogFlush::held) are lost, as with a
  // SIGKILL from outside, so the crash tests see what a real crash leaves of the audit lines.
  const std::string line = std::string("TEST FAILPOINT ") + name + " reached: killing the process\n";
  if (::write(STDERR_FILENO, line.data(), line.size()) < 0) {
    // Nothing to do: the kill below is what the test waits for.
  }
  if (std::raise(SIGKILL) != 0) std::_Exit(137);  // same exit status a shell shows for SIGKILL
}

}  // namespace dedup
