// What the worker loop is told, and the one place it is checked: `checked()` fills in the
// defaults that depend on other options and refuses a bad value naming its flag, before any
// client is created.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <string>

#include "dedup/kafka/settings.hpp"

namespace dedup {

// Failpoints, FOR CRASH TESTS ONLY: with DEDUP_FAILPOINT=<name>[:<n>] in the environment, the
// worker kills itself with SIGKILL the n-th time (default 1st) it reaches <name>:
//   after_db_commit       the batch is committed in Postgres, nothing of it published
//   after_db_commit_in_flight  the same, reached only while the previous batch's results are
//                         on their way (sent, not all acknowledged, offsets not committed); in
//                         other hits than the n-th, the previous batch is finished meanwhile
//   after_results_acked   results and dead letters acknowledged, offsets not committed
//   before_offset_commit  observer notified, right before the offset commit
//   after_offset_commit_sent  the offset commit handed to librdkafka, its outcome not yet known
//                         (the broker may or may not apply it)
//   after_offset_commit_deferred  a batch's offsets owed, not sent (within --commit-interval)
// Unset in production. The library never reads the environment itself: the program that wants
// failpoints (the worker's main, a test's child process) reads them with failpoint_from_environment.
inline constexpr const char* kFailpointEnv = "DEDUP_FAILPOINT";

struct Failpoint {
  std::string name;  // empty: none armed
  long hit = 1;      // killed the hit-th time the loop reaches `name`
};

// DEDUP_FAILPOINT parsed. Throws ConfigError("DEDUP_FAILPOINT", ...) for an unknown name or a
// count that is not a positive integer; an unset or empty variable arms nothing.
Failpoint failpoint_from_environment();

struct WorkerOptions {
  std::string brokers;                 // --brokers
  std::string group = "dedup-worker";  // --group
  std::string commands_topic = "commands";
  std::string results_topic;            // empty: <commands_topic>.results
  std::string dlq_topic;                // empty: <commands_topic>.dlq
  kafka::KafkaSettings kafka_settings;  // -X key=value, for the consumer and the producer

  // --max-batch: records per transaction. With N lanes (--db-connections N) a batch holds up to
  // N times this, split over the lanes.
  std::size_t max_batch_records = 500;
  std::size_t max_batch_bytes = std::size_t{16} * 1024 * 1024;
  std::chrono::milliseconds max_batch_wait{200};  // wait for the first record of a batch

  // --commit-interval: offsets are committed at most this often while batches keep coming (0:
  // after every batch), and at once when none comes, when partitions are revoked and on close.
  // Never past a result that is not acknowledged; a crash replays at most this much more, with
  // identical results. Per batch, each commit is a broker request (and a write of its offsets
  // topic) that costs the broker as much as the batch's results when batches are small.
  std::chrono::milliseconds commit_interval{100};

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

  Failpoint failpoint;  // tests only, see kFailpointEnv
};

// `options` with the topic defaults filled in. Throws ConfigError naming the flag: --brokers
// empty, --commands-topic empty, results or dead letters written into the commands topic (the
// worker would consume its own output), --max-batch 0, durations that are not positive.
WorkerOptions checked(WorkerOptions options);

}  // namespace dedup
