// The group consumer of the commands topic: batches of InboundRecord in, explicit offset commits
// out (one in flight at a time, finished before the next one and before any revocation).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "dedup/kafka/handles.hpp"
#include "dedup/kafka/partition_stash.hpp"
#include "dedup/observer.hpp"
#include "dedup/record.hpp"

namespace dedup::kafka {

// The offset to commit for a partition: the next one to read (last processed + 1).
struct PartitionOffset {
  std::string topic;
  std::int32_t partition = 0;
  std::int64_t next_offset = 0;
};

// For each partition in `records`, the highest offset + 1. Never throws but std::bad_alloc.
std::vector<PartitionOffset> next_offsets(std::span<const InboundRecord> records);

// Copies a fetched message (which must not carry an error) into an InboundRecord: key, value and
// header values keep the null / empty distinction; timestamp when the broker gave one. Throws
// only std::bad_alloc.
InboundRecord to_inbound_record(const rd_kafka_message_t* message);

struct CommitOutcome {
  bool ok = true;
  std::string error;  // librdkafka's reason when !ok
};

struct ConsumerOptions {
  std::string brokers;
  std::string group = "dedup-worker";
  std::vector<std::string> topics;
  KafkaSettings settings;  // -X passthrough, applied after our defaults
  std::string client_id = "dedup-worker";
  // How many records of one partition a batch takes before it turns to other partitions
  // (PartitionStash); no limit: a batch fills up as before, without reading ahead.
  std::size_t per_partition_in_batch = std::numeric_limits<std::size_t>::max();
};

class Consumer {
 public:
  // Creates the consumer and subscribes. Offsets are never committed or stored automatically
  // (enable.auto.commit=false, enable.auto.offset.store=false); auto.offset.reset defaults to
  // earliest so that the first worker of a group reads commands produced before it started.
  // `observer` is borrowed and must outlive the consumer. Throws ConfigError("-X <key>", ...) for
  // a bad setting or an attempt to enable auto commit, KafkaError if subscribing fails.
  Consumer(const ConsumerOptions& options, Observer& observer);
  // Closes (leaves the group) if close() was not called; never throws.
  ~Consumer();
  Consumer(const Consumer&) = delete;
  Consumer& operator=(const Consumer&) = delete;
  Consumer(Consumer&&) = delete;
  Consumer& operator=(Consumer&&) = delete;

  // Waits up to `max_wait` for the first record, then takes whatever else is already fetched, up
  // to `max_records` records and `max_bytes` of keys + values (at least one record, however
  // large). Not waiting to fill the batch keeps latency low when idle; under load the fetch queue
  // fills while a batch is processed, so batches grow by themselves. Per-partition order is kept.
  // With a per_partition_in_batch limit, it reads ahead through what is fetched already (up to
  // `max_bytes` of memory, headers and overhead included) past one partition's run for others,
  // and the batch takes at most that many records from each partition before it takes more from
  // any (PartitionStash::take).
  // Rebalance callbacks run inside this call. Throws KafkaError(fatal = true) on a fatal error;
  // other consumer errors are reported to the observer and logged.
  std::vector<InboundRecord> poll_batch(std::size_t max_records, std::size_t max_bytes,
                                        std::chrono::milliseconds max_wait);

  // Serves the group (heartbeats are librdkafka's, but rebalances and errors are served here)
  // for `duration` while the caller is not ready for records, e.g. during a database backoff.
  // Records that arrive are kept, in order, for the next poll_batch. Throws as poll_batch.
  void serve(std::chrono::milliseconds duration);

  // Sends these offsets (of partitions that are ours) for commit, with the owed ones (deferred, or
  // whose commit failed), and returns without waiting for the broker: the loop
  // processes the next batch meanwhile. The commit already on its way, if any, is finished first
  // (finish_commit), so a partition's commits reach the broker one after the other, in order;
  // returns that commit's outcome ({} when there was none). Never throws but std::bad_alloc.
  CommitOutcome start_commit(std::span<const PartitionOffset> offsets);

  // Waits for the commit on its way, if any, and returns its outcome ({} when none). A failure
  // (rebalance in progress, coordinator moved, partition no longer ours) is a value, reported to
  // the observer; the caller logs it. Its offsets are kept for the next commit if their partition
  // is still ours under the same assignment; if it moves, its records are read again by the new
  // owner and their results replayed. A revocation and close() run this (and log a failure)
  // before they give any partition up. Never throws but std::bad_alloc.
  // With `until`, a commit not answered by then is given up (a failure, kept as one; its late
  // answer is discarded): for a revocation and close(), which must let the partitions go.
  CommitOutcome finish_commit(
      std::chrono::steady_clock::time_point until = std::chrono::steady_clock::time_point::max());

  // start_commit, then finish_commit: the commit, synchronously.
  CommitOutcome commit(std::span<const PartitionOffset> offsets);

  // Keeps these offsets for the next commit instead of sending them now (`run --commit-interval`):
  // a newer offset of a partition replaces the one owed, an offset of a partition that is not
  // ours is not kept. Owed offsets of revoked partitions are committed before they are given up;
  // of lost ones, dropped (their new owner reads the records again and replays their results).
  // Never throws but std::bad_alloc.
  void defer_commit(std::span<const PartitionOffset> offsets);

  // Commits the owed offsets (deferred, or whose commit failed), if any: commit({}). For an idle
  // loop, and before closing: a partition that gets no new batch would otherwise never have them
  // committed. Collect the commit on its way first (finish_commit): its failure is one of them.
  CommitOutcome commit_owed();
  bool owes_commits() const noexcept { return !owed_commits_.empty(); }

  // Pauses / resumes fetching from every assigned partition. While paused, partitions assigned by
  // a rebalance are paused as well. Never throw; failures are reported to the observer.
  void pause_all() noexcept;
  void resume_all() noexcept;
  bool paused() const noexcept { return paused_; }

  // Removes from `records` every record that was not read under the current assignment of its
  // partition: its partition was revoked (or lost) since, even if it was assigned again. Such a
  // record is delivered again from the committed offset, to whoever owns the partition now (us,
  // perhaps); processing it here too is harmless, but committing its offset is not: it could
  // move the partition past records fetched under the new assignment and never processed.
  // Returns how many were removed. Throws only std::bad_alloc.
  std::size_t drop_unowned(std::vector<InboundRecord>& records) const;

  // Number of partitions currently assigned. Thread-safe (read by /readyz).
  std::size_t assigned_count() const noexcept { return assigned_count_.load(); }
  // Whether any partition was ever assigned: the group and the brokers were reachable once.
  bool ever_assigned() const noexcept { return assignments_made_ > 0; }
  // The first authentication, TLS or authorization error reported, or "".
  const std::string& access_error() const noexcept { return access_error_.message(); }

  // Reports high watermark - position for every assigned partition to the observer, from
  // librdkafka's cached watermarks (no broker round trip). Never throws.
  void report_lag() noexcept;

  // Collects the commit on its way, if any, commits the owed offsets (defer_commit), leaves the
  // group (revoking the assignment), and closes. Returns within about 10 s even when librdkafka does not let the
  // group go: the handle is then never destroyed (see ~Consumer). Idempotent. Never throws;
  // errors are logged.
  void close() noexcept;

  // Throws KafkaError(fatal = true) if librdkafka raised a fatal error on this consumer.
  void throw_if_fatal() const;

  rd_kafka_t* handle() const noexcept { return handle_.get(); }

 private:
  static void on_rebalance(rd_kafka_t* rk, rd_kafka_resp_err_t err,
                           rd_kafka_topic_partition_list_t* partitions, void* opaque);
  void handle_rebalance(rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* partitions);
  // One rd_kafka_consumer_poll; appends a record to stash_ or reports an error. True if a record
  // was stashed.
  bool poll_one(std::chrono::milliseconds timeout);
  void forget(const std::set<TopicPartition>& partitions);
  // Cooperative protocol, before leave_group: unsubscribes and serves rebalances until nothing is
  // assigned (or `until`).
  void give_back_assignment(std::chrono::steady_clock::time_point until) noexcept;
  // Closes the consumer's group membership, serving its last rebalance; false if librdkafka did
  // not finish by `until`.
  bool leave_group(std::chrono::steady_clock::time_point until) noexcept;
  // Before partitions are given up (`moment`: "revoked", "lost", "closed"): finish_commit, then
  // (with `send_owed`) the owed offsets' commit, waiting at most 3 s in all; logs a failure.
  // Never throws: the partitions must go all the same.
  void settle_commits_before_release(const char* moment, bool send_owed) noexcept;

  Observer& observer_;
  HandlePtr handle_;
  // Where the answers to offset commits arrive (rd_kafka_commit_queue), never through the
  // consumer's poll: one commit is on its way at most, so one queue serves them all — until a
  // commit is given up (finish_commit's deadline): then a new queue, so that its late answer is
  // never read as another commit's. Declared after handle_: destroyed before it.
  QueuePtr commit_queue_;
  // The assigned partitions, each with the number of its current assignment (InboundRecord::
  // assignment). Every assignment gets a new number, so a revoke followed by an assign of the
  // same partition within one poll is still told apart.
  std::map<TopicPartition, std::uint64_t> assigned_;
  std::uint64_t assignments_made_ = 0;
  std::atomic<std::size_t> assigned_count_{0};
  PartitionStash stash_;  // fetched but not yet handed out
  bool paused_ = false;
  bool closed_ = false;
  bool incremental_ = false;  // the cooperative rebalance protocol (incremental assign/unassign)
  bool abandoned_ = false;    // close() gave up waiting for librdkafka: never destroy the handle
  AccessError access_error_;
  // An offset with the assignment it was read under.
  struct AssignedOffset {
    std::int64_t next_offset;
    std::uint64_t assignment;
  };
  // Offsets owed: deferred (defer_commit), or whose commit failed; sent with the next commit.
  // Only of partitions ours under the assignment noted: forget() drops a revoked partition's.
  std::map<TopicPartition, AssignedOffset> owed_commits_;
  // The commit sent and not yet finished; its answer arrives on commit_queue_.
  struct CommitInFlight {
    std::map<TopicPartition, AssignedOffset> offsets;
    rd_kafka_resp_err_t send_error = RD_KAFKA_RESP_ERR_NO_ERROR;  // refused before it was sent
  };
  std::optional<CommitInFlight> commit_in_flight_;
  // A commit's offsets that were not committed (refused, or not answered in time) are owed again
  // for partitions still ours under the same assignment; an offset owed meanwhile is newer.
  void owe_again(const std::map<TopicPartition, AssignedOffset>& offsets);
};

}  // namespace dedup::kafka
