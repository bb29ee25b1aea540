#include "dedup/kafka/consumer.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>

#include "kafka/client_common.hpp"

namespace dedup::kafka {
namespace {

constexpr const char* kDefaultAutoOffsetReset = "earliest";
// A fetch is answered once 16 KiB (about a hundred commands) are there or after 10 ms, where
// librdkafka's defaults answer at the first record or after 500 ms. A worker takes records in
// batches, and a fetch per handful of records costs the broker and the worker a request each:
// real Kafka, 16 partitions, 14,000 commands/s, two interleaved pairs: broker reads 33,000-34,000/s
// down to 20,000-21,000/s, machine busy 0.90-0.92 down to 0.72-0.77, p99 56-97 ms down to 43-54.
// A record now waits at most 10 ms for its fetch, under any load (500 ms with the defaults on the
// dev broker, which holds an empty fetch for the whole wait). Both stay overridable with -X.
constexpr const char* kDefaultFetchMinBytes = "16384";
constexpr const char* kDefaultFetchWaitMaxMs = "10";
constexpr auto kPollSlice = std::chrono::milliseconds(100);
// How long close() waits for the group to let the consumer go: the revocation of its partitions
// and a LeaveGroup, well under a second when the group is healthy (librdkafka gives up on an
// unanswered LeaveGroup after 5 s).
constexpr auto kCloseDeadline = std::chrono::seconds(10);
// How long a revocation or close() waits for offset commits (the one on its way, then the owed
// offsets): with the coordinator unreachable librdkafka may hold a commit for minutes, and the
// partitions must go all the same.
constexpr auto kReleaseCommitDeadline = std::chrono::seconds(3);

std::string bytes(const void* data, std::size_t size) {
  return {static_cast<const char*>(data), size};
}

}  // namespace

InboundRecord to_inbound_record(const rd_kafka_message_t* message) {
  InboundRecord record;
  record.source.topic = rd_kafka_topic_name(message->rkt);
  record.source.partition = message->partition;
  record.source.offset = message->offset;
  // librdkafka gives a null pointer for a null key/value and a non-null one (size 0) for empty.
  if (message->key != nullptr) record.key = bytes(message->key, message->key_len);
  if (message->payload != nullptr) record.value = bytes(message->payload, message->len);
  rd_kafka_headers_t* headers = nullptr;  // owned by the message
  if (rd_kafka_message_headers(message, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR) {
    const char* name = nullptr;
    const void* value = nullptr;
    std::size_t size = 0;
    for (std::size_t i = 0;
         rd_kafka_header_get_all(headers, i, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR;
         ++i) {
      RecordHeader header{name, std::nullopt};
      if (value != nullptr) header.value = bytes(value, size);
      record.headers.push_back(std::move(header));
    }
  }
  rd_kafka_timestamp_type_t type = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
  const std::int64_t timestamp = rd_kafka_message_timestamp(message, &type);
  if (type != RD_KAFKA_TIMESTAMP_NOT_AVAILABLE && timestamp >= 0) record.timestamp_ms = timestamp;
  return record;
}

namespace {

std::set<TopicPartition> to_set(const rd_kafka_topic_partition_list_t* list) {
  std::set<TopicPartition> out;
  for (int i = 0; list != nullptr && i < list->cnt; ++i) {
    out.emplace(list->elems[i].topic, list->elems[i].partition);
  }
  return out;
}

// librdkafka refuses a mix of eager and cooperative assignors, so one name tells the protocol.
// Read from the configuration, not with rd_kafka_rebalance_protocol(), which waits on librdkafka's
// main thread and can hang in a rebalance served while the consumer closes (librdkafka #4041).
bool cooperative(const rd_kafka_conf_t* conf) {
  return detail::read_conf(conf, config_key::kPartitionAssignmentStrategy).find("cooperative") !=
         std::string::npos;
}

}  // namespace

std::vector<PartitionOffset> next_offsets(std::span<const InboundRecord> records) {
  std::map<TopicPartition, std::int64_t> highest;
  for (const InboundRecord& r : records) {
    auto [it, inserted] =
        highest.try_emplace({r.source.topic, r.source.partition}, r.source.offset);
    if (!inserted) it->second = std::max(it->second, r.source.offset);
  }
  std::vector<PartitionOffset> out;
  out.reserve(highest.size());
  for (const auto& [tp, offset] : highest) out.push_back({tp.first, tp.second, offset + 1});
  return out;
}

Consumer::Consumer(const ConsumerOptions& options, Observer& observer)
    : observer_(observer), stash_(options.per_partition_in_batch) {
  const KafkaSettings defaults{
      {config_key::kBootstrapServers, options.brokers},
      {config_key::kClientId, options.client_id},
      {config_key::kGroupId, options.group},
      {config_key::kAutoOffsetReset, kDefaultAutoOffsetReset},
      {config_key::kFetchMinBytes, kDefaultFetchMinBytes},
      {config_key::kFetchWaitMaxMs, kDefaultFetchWaitMaxMs},
  };
  ConfPtr conf =
      detail::build_conf(defaults, options.settings,
                         {{config_key::kEnableAutoCommit, "false",
                           "offsets are committed only after results are acknowledged (SPEC §4)"},
                          {config_key::kEnableAutoOffsetStore, "false",
                           "offsets are committed explicitly, never from the position"}});
  rd_kafka_conf_set_opaque(conf.get(), this);
  incremental_ = cooperative(conf.get());
  rd_kafka_conf_set_rebalance_cb(conf.get(), &Consumer::on_rebalance);
  rd_kafka_conf_set_error_cb(
      conf.get(), [](rd_kafka_t* rk, int err, const char* reason, void* self) {
        auto* client = static_cast<Consumer*>(self);
        if (detail::report_client_error(rk, client->observer_, err, reason)) {
          client->access_error_.note(err, reason);
        }
      });
  handle_ = make_handle(RD_KAFKA_CONSUMER, std::move(conf));
  // Error and log events are then served by consumer_poll, on the worker thread.
  rd_kafka_poll_set_consumer(handle_.get());
  commit_queue_.reset(rd_kafka_queue_new(handle_.get()));

  TopicPartitionListPtr topics = make_partition_list(static_cast<int>(options.topics.size()));
  for (const std::string& topic : options.topics) {
    rd_kafka_topic_partition_list_add(topics.get(), topic.c_str(), RD_KAFKA_PARTITION_UA);
  }
  const rd_kafka_resp_err_t err = rd_kafka_subscribe(handle_.get(), topics.get());
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) throw KafkaError("cannot subscribe", err);
}

Consumer::~Consumer() {
  close();
  // A consumer that did not finish leaving its group is waiting inside librdkafka, and
  // rd_kafka_destroy() would wait with it (it joins librdkafka's main thread, which ends only with
  // the group). The process is about to exit: the handle is left to it.
  if (abandoned_) (void)handle_.release();
}

void Consumer::on_rebalance(rd_kafka_t* /*rk*/, rd_kafka_resp_err_t err,
                            rd_kafka_topic_partition_list_t* partitions, void* self) {
  try {
    static_cast<Consumer*>(self)->handle_rebalance(err, partitions);
  } catch (const std::exception& e) {
    // Only std::bad_alloc can get here; nothing may unwind through librdkafka.
    spdlog::critical("kafka rebalance callback failed: {}", e.what());
  }
}

void Consumer::handle_rebalance(rd_kafka_resp_err_t err,
                                rd_kafka_topic_partition_list_t* partitions) {
  rd_kafka_t* rk = handle_.get();
  const std::set<TopicPartition> changed = to_set(partitions);

  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    if (incremental_) {
      ErrorPtr error(rd_kafka_incremental_assign(rk, partitions));
      if (error) observer_.on_kafka_error(rd_kafka_error_name(error.get()));
    } else {
      rd_kafka_assign(rk, partitions);
    }
    for (const TopicPartition& tp : changed) assigned_[tp] = ++assignments_made_;
    // A partition assigned during a database outage must not start delivering records that the
    // worker cannot take yet.
    if (paused_ && partitions->cnt > 0) rd_kafka_pause_partitions(rk, partitions);
    spdlog::info("kafka: assigned {} partition(s), {} in total{}", changed.size(), assigned_.size(),
                 paused_ ? " (paused)" : "");
  } else {
    // Revoked (orderly) or lost (session timed out, fenced): either way the partitions are no
    // longer ours, and their uncommitted records will be read again by their new owner.
    const bool lost = rd_kafka_assignment_lost(rk) != 0;
    // The commit on its way is answered while revoked partitions are still ours: released first,
    // it could be applied once the partition is read under a new assignment (ours or another
    // member's) and move its committed offset back (a replay; never past a result, so a commit
    // not answered within the deadline is let go). Owed offsets go now too, while the partitions
    // are ours: otherwise their new owner would read again and replay what this member has
    // published. A lost assignment has moved already; the broker's generation check refuses
    // commits for it.
    settle_commits_before_release(lost ? "lost" : "revoked", /*send_owed=*/!lost);
    if (err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
      spdlog::warn("kafka rebalance error: {}", rd_kafka_err2name(err));
      observer_.on_kafka_error(rd_kafka_err2name(err));
    }
    std::set<TopicPartition> gone = changed;
    if (!incremental_) {  // eager: everything goes
      for (const auto& entry : assigned_) gone.insert(entry.first);
    }
    forget(gone);
    if (incremental_) {
      ErrorPtr error(rd_kafka_incremental_unassign(rk, partitions));
      if (error) observer_.on_kafka_error(rd_kafka_error_name(error.get()));
    } else {
      rd_kafka_assign(rk, nullptr);
    }
    spdlog::info("kafka: {} {} partition(s), {} left", lost ? "lost" : "revoked", changed.size(),
                 assigned_.size());
  }
  assigned_count_.store(assigned_.size());
}

void Consumer::forget(const std::set<TopicPartition>& partitions) {
  for (const TopicPartition& tp : partitions) {
    assigned_.erase(tp);
    owed_commits_.erase(tp);  // the new owner reads from the committed offset
    observer_.on_partition_revoked(tp.second);
  }
  // Fetched-but-unhandled records of these partitions are dropped: after a reassignment, fetching
  // restarts from the committed offset, so keeping them would hand them out twice.
  stash_.forget(partitions);
}

bool Consumer::poll_one(std::chrono::milliseconds timeout) {
  MessagePtr message(rd_kafka_consumer_poll(handle_.get(), static_cast<int>(timeout.count())));
  if (!message) return false;
  if (message->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    InboundRecord record = to_inbound_record(message.get());
    const auto owner = assigned_.find({record.source.topic, record.source.partition});
    // A message of a partition that is not assigned (librdkafka discards those; belt and braces)
    // keeps assignment 0, which drop_unowned removes.
    if (owner != assigned_.end()) record.assignment = owner->second;
    stash_.push(std::move(record));
    return true;
  }
  if (message->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) return false;
  if (message->err == RD_KAFKA_RESP_ERR__FATAL) throw_if_fatal();
  spdlog::warn("kafka consumer: {}: {}", rd_kafka_err2name(message->err),
               rd_kafka_message_errstr(message.get()));
  observer_.on_kafka_error(rd_kafka_err2name(message->err));
  return false;
}

std::vector<InboundRecord> Consumer::poll_batch(std::size_t max_records, std::size_t max_bytes,
                                                std::chrono::milliseconds max_wait) {
  throw_if_fatal();
  const auto deadline = std::chrono::steady_clock::now() + max_wait;
  while (stash_.empty()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left <= std::chrono::milliseconds::zero()) break;
    poll_one(std::min(left, kPollSlice));
  }
  // Take what is already fetched, without waiting; with a per-partition limit, read on (while
  // the stash holds less than max_bytes of memory, headers and overhead included) until the batch
  // need not take more than that from any partition.
  while (stash_.takeable() < max_records && stash_.memory() < max_bytes &&
         poll_one(std::chrono::milliseconds::zero())) {
  }
  return stash_.take(max_records, max_bytes);
}

void Consumer::serve(std::chrono::milliseconds duration) {
  throw_if_fatal();
  const auto deadline = std::chrono::steady_clock::now() + duration;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left <= std::chrono::milliseconds::zero()) break;
    poll_one(std::min(left, kPollSlice));
  }
}

CommitOutcome Consumer::start_commit(std::span<const PartitionOffset> offsets) {
  CommitOutcome previous = finish_commit();
  // These offsets join the owed ones (a newer offset of a partition supersedes the one owed, a
  // partition that is not ours is left to its owner), and all go together.
  defer_commit(offsets);
  if (owed_commits_.empty()) return previous;
  CommitInFlight commit{owed_commits_};

  TopicPartitionListPtr list = make_partition_list(static_cast<int>(commit.offsets.size()));
  for (const auto& [tp, offset] : commit.offsets) {
    rd_kafka_topic_partition_list_add(list.get(), tp.first.c_str(), tp.second)->offset =
        offset.next_offset;
  }
  // Cleared only now: an allocation failing above keeps them for the next commit.
  owed_commits_.clear();
  commit.send_error = rd_kafka_commit_queue(handle_.get(), list.get(), commit_queue_.get(),
                                            /*cb=*/nullptr, /*opaque=*/nullptr);
  commit_in_flight_ = std::move(commit);
  return previous;
}

CommitOutcome Consumer::finish_commit(std::chrono::steady_clock::time_point until) {
  if (!commit_in_flight_) return {};
  const CommitInFlight commit = std::move(*commit_in_flight_);
  commit_in_flight_.reset();

  rd_kafka_resp_err_t err = commit.send_error;
  std::string where;
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    // librdkafka answers every commit (success, broker error, or its own timeout), as the
    // synchronous rd_kafka_commit relies on too.
    EventPtr event;
    while (!event) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      if (left <= std::chrono::milliseconds::zero()) {
        // Its answer still comes, later, and must not be taken for the next commit's (a refusal
        // read as a success, or the reverse): the next commits get a queue of their own, and
        // librdkafka drops an answer for a destroyed queue. Its offsets are kept as a refusal's:
        // a cooperative revocation gives up only some partitions, and the others' offsets would
        // otherwise never be committed while they get no new record.
        commit_queue_.reset(rd_kafka_queue_new(handle_.get()));
        owe_again(commit.offsets);
        observer_.on_kafka_error(rd_kafka_err2name(RD_KAFKA_RESP_ERR__TIMED_OUT));
        return {false, "offset commit not answered in time"};
      }
      event.reset(rd_kafka_queue_poll(commit_queue_.get(),
                                      static_cast<int>(std::min<std::int64_t>(left.count(), 1000))));
    }
    err = rd_kafka_event_error(event.get());
    const rd_kafka_topic_partition_list_t* list = rd_kafka_event_topic_partition_list(event.get());
    for (int i = 0; err == RD_KAFKA_RESP_ERR_NO_ERROR && list != nullptr && i < list->cnt; ++i) {
      if (list->elems[i].err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        err = list->elems[i].err;
        where = std::string(" on ") + list->elems[i].topic + "/" +
                std::to_string(list->elems[i].partition);
      }
    }
  }
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR) return {};
  owe_again(commit.offsets);
  observer_.on_kafka_error(rd_kafka_err2name(err));
  return {false, std::string(rd_kafka_err2name(err)) + where + ": " + rd_kafka_err2str(err)};
}

void Consumer::owe_again(const std::map<TopicPartition, AssignedOffset>& offsets) {
  // Kept for the next commit, or for commit_owed() while no batch comes: otherwise an
  // idle partition's committed offset would stay behind its published results (lag alerts, and
  // a replay of the whole tail after the next rebalance). Partitions given up are forgotten, their
  // owed offsets with them; close() drops the rest.
  // An offset owed meanwhile (deferred after this commit was sent) is newer: it stays.
  for (const auto& [tp, offset] : offsets) {
    const auto owner = assigned_.find(tp);
    if (owner != assigned_.end() && owner->second == offset.assignment)
      owed_commits_.try_emplace(tp, offset);
  }
}

CommitOutcome Consumer::commit(std::span<const PartitionOffset> offsets) {
  (void)start_commit(offsets);
  return finish_commit();
}

void Consumer::defer_commit(std::span<const PartitionOffset> offsets) {
  for (const PartitionOffset& o : offsets) {
    const TopicPartition tp{o.topic, o.partition};
    const auto owner = assigned_.find(tp);
    if (owner != assigned_.end()) owed_commits_[tp] = {o.next_offset, owner->second};
  }
}

CommitOutcome Consumer::commit_owed() {
  if (owed_commits_.empty()) return {};
  return commit({});
}

void Consumer::settle_commits_before_release(const char* moment, bool send_owed) noexcept {
  const auto until = std::chrono::steady_clock::now() + kReleaseCommitDeadline;
  try {
    if (const CommitOutcome last = finish_commit(until); !last.ok) {
      spdlog::warn(
          "offset commit failed as partitions are {} (their owner reads them again from "
          "the committed offset): {}",
          moment, last.error);
    }
    if (!send_owed || owed_commits_.empty()) return;
    (void)start_commit({});  // the commit on its way was collected above
    if (const CommitOutcome owed = finish_commit(until); !owed.ok) {
      spdlog::warn("commit of owed offsets failed as partitions are {} (their owner reads them "
                   "again from the committed offset): {}",
                   moment, owed.error);
    }
  } catch (const std::exception& e) {  // std::bad_alloc
    spdlog::warn("offsets not committed (partitions {}): {}", moment, e.what());
  }
}

void Consumer::pause_all() noexcept {
  paused_ = true;
  rd_kafka_topic_partition_list_t* raw = nullptr;
  if (rd_kafka_assignment(handle_.get(), &raw) != RD_KAFKA_RESP_ERR_NO_ERROR) return;
  TopicPartitionListPtr list(raw);
  if (list->cnt > 0) rd_kafka_pause_partitions(handle_.get(), list.get());
}

void Consumer::resume_all() noexcept {
  paused_ = false;
  rd_kafka_topic_partition_list_t* raw = nullptr;
  if (rd_kafka_assignment(handle_.get(), &raw) != RD_KAFKA_RESP_ERR_NO_ERROR) return;
  TopicPartitionListPtr list(raw);
  if (list->cnt > 0) rd_kafka_resume_partitions(handle_.get(), list.get());
}

std::size_t Consumer::drop_unowned(std::vector<InboundRecord>& records) const {
  return std::erase_if(records, [&](const InboundRecord& r) {
    const auto owner = assigned_.find({r.source.topic, r.source.partition});
    return owner == assigned_.end() || owner->second != r.assignment;
  });
}

void Consumer::report_lag() noexcept {
  try {
    rd_kafka_topic_partition_list_t* raw = nullptr;
    if (rd_kafka_assignment(handle_.get(), &raw) != RD_KAFKA_RESP_ERR_NO_ERROR) return;
    TopicPartitionListPtr list(raw);
    if (list->cnt == 0) return;
    rd_kafka_position(handle_.get(), list.get());
    // Records fetched but not yet handed to the worker are not progress.
    const std::map<TopicPartition, std::int64_t> stashed_from = stash_.first_offsets();
    for (int i = 0; i < list->cnt; ++i) {
      const auto& elem = list->elems[i];
      std::int64_t low = -1;
      std::int64_t high = -1;
      rd_kafka_get_watermark_offsets(handle_.get(), elem.topic, elem.partition, &low, &high);
      std::int64_t position = elem.offset;
      if (const auto it = stashed_from.find({elem.topic, elem.partition});
          it != stashed_from.end()) {
        position = it->second;
      }
      // Unknown until the first fetch response (watermark) and the first record (position).
      if (high < 0 || position < 0) continue;
      observer_.on_consumer_lag(elem.partition, std::max<std::int64_t>(0, high - position));
    }
  } catch (...) {
    // Lag is best effort; never let it disturb the loop.
  }
}

void Consumer::close() noexcept {
  if (closed_ || !handle_) return;
  closed_ = true;
  settle_commits_before_release("closed", /*send_owed=*/true);
  owed_commits_.clear();  // tried once: the revocation below must not wait for them again
  const auto until = std::chrono::steady_clock::now() + kCloseDeadline;
  if (incremental_) give_back_assignment(until);
  if (!leave_group(until)) {
    // Nothing is lost by giving up: every offset this consumer will ever commit is committed (or
    // refused) by now, and its partitions move to another member once its session times out.
    spdlog::warn(
        "kafka consumer did not leave its group within {} s; left as it is until the process "
        "exits (its partitions move once its session times out)",
        kCloseDeadline.count());
    abandoned_ = true;
  }
  assigned_count_.store(0);
}

void Consumer::give_back_assignment(std::chrono::steady_clock::time_point until) noexcept {
  // librdkafka 2.0.2 can wait for ever in its close when a cooperative assignment arrives while
  // it closes (librdkafka #4527, fixed in 2.4.0; a CI run hung in a test's destructors). Leaving
  // the subscription first, and serving the revocation (and any assignment still on its way) the
  // usual way, leaves nothing to arrive during the close.
  if (const rd_kafka_resp_err_t err = rd_kafka_unsubscribe(handle_.get());
      err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    spdlog::warn("kafka consumer unsubscribe: {}", rd_kafka_err2name(err));
    return;
  }
  try {
    while (!assigned_.empty() && std::chrono::steady_clock::now() < until) poll_one(kPollSlice);
  } catch (const std::exception& e) {  // a fatal error: the close below finds it too
    spdlog::warn("kafka consumer while giving back its partitions: {}", e.what());
  }
}

bool Consumer::leave_group(std::chrono::steady_clock::time_point until) noexcept {
  // rd_kafka_consumer_close() has no deadline; the same close through a queue served here has.
  rd_kafka_t* rk = handle_.get();
  const QueuePtr events(rd_kafka_queue_new(rk));
  if (const ErrorPtr error(rd_kafka_consumer_close_queue(rk, events.get())); error) {
    spdlog::warn("kafka consumer close: {}", rd_kafka_error_string(error.get()));
    return true;  // refused (a fatal error): there is no group to leave
  }
  while (rd_kafka_consumer_closed(rk) == 0) {
    if (std::chrono::steady_clock::now() >= until) return false;
    const EventPtr event(rd_kafka_queue_poll(events.get(), static_cast<int>(kPollSlice.count())));
    // The revocation of what is still assigned comes as an event here, not as a callback.
    if (event && rd_kafka_event_type(event.get()) == RD_KAFKA_EVENT_REBALANCE) {
      on_rebalance(rk, rd_kafka_event_error(event.get()),
                   rd_kafka_event_topic_partition_list(event.get()), this);
    }
  }
  return true;
}

void Consumer::throw_if_fatal() const { kafka::throw_if_fatal(handle_.get()); }

}  // namespace dedup::kafka
