// The worker loop with a real Processor over an in-memory KeyStore, against the mock cluster:
// one result per record, dead letters, commit after acknowledgement, retry on transient database
// errors and failed publishing, stop on permanent errors, drain on shutdown.
#include "dedup/worker.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "dedup/kafka/mock_cluster.hpp"
#include "dedup/logging.hpp"
#include "dedup/kafka/producer.hpp"
#include "dedup/processor.hpp"
#include "support/kafka_test_util.hpp"

namespace dedup {
namespace {

using namespace std::chrono_literals;
using kafka::OutboundRecord;
using test::read_topic;

template <typename Predicate>
bool eventually(Predicate predicate, std::chrono::milliseconds timeout = 20s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (predicate()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return predicate();
}

// A worker on its own thread, as main() would run it.
class RunningWorker {
 public:
  RunningWorker(WorkerOptions options, BatchProcessor& processor, Observer& observer)
      : worker_(std::move(options), processor, observer),
        thread_([this] { status_ = worker_.run(); }) {}
  ~RunningWorker() {
    worker_.request_stop();
    if (thread_.joinable()) thread_.join();
  }
  Worker& worker() { return worker_; }
  int stop() {
    worker_.request_stop();
    return wait();
  }
  int wait() {
    thread_.join();
    return status_;
  }

 private:
  Worker worker_;
  std::atomic<int> status_{-1};
  std::thread thread_;
};

class WorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cluster_.create_topic("commands", 2);
    cluster_.create_topic("commands.results", 1);
    cluster_.create_topic("commands.dlq", 1);
  }

  WorkerOptions options() {
    WorkerOptions o;
    o.brokers = brokers_;
    o.group = group_;
    o.commands_topic = "commands";
    o.kafka_settings = test::fast_group_settings();
    o.max_batch_wait = 100ms;
    o.backoff_initial = 50ms;
    o.backoff_max = 400ms;
    o.drain_timeout = 5s;
    o.lag_report_interval = 100ms;
    return o;
  }

  OutboundRecord command(std::string_view key, std::string_view payload = R"({"title":"t"})") {
    return {"commands",
            "org/" + std::string(key),
            test::command_json(key, "org", "todo.create", payload),
            {}};
  }

  std::int64_t total_committed(int partitions = 2) {
    std::int64_t total = 0;
    for (const std::int64_t offset :
         test::committed_offsets(brokers_, group_, "commands", partitions)) {
      if (offset >= 0) total += offset;
    }
    return total;
  }

  kafka::MockCluster cluster_;
  std::string brokers_ = cluster_.bootstraps();
  std::string group_ = test::unique_name("worker");
  test::FakeKeyStore store_;
  SystemClock clock_;
  test::RecordingObserver observer_;
  Processor processor_{test::test_catalog(), store_, clock_, observer_, ParseOptions{}};
};

TEST_F(WorkerTest, PublishesOneResultPerRecordDeadLettersRejectsAndCommits) {
  std::vector<OutboundRecord> input = {command("a"),
                                       command("b"),
                                       command("c"),
                                       command("d"),
                                       {"commands", "junk", "not json", {{"trace", "t-1"}}},
                                       command("a")};  // same partition as the first "a": after it
  test::write_records(brokers_, input);

  std::atomic<int> cleanups{0};
  WorkerOptions o = options();
  o.cleanup = [&] { ++cleanups; };
  o.cleanup_interval = 100ms;
  RunningWorker running(o, processor_, observer_);
  ASSERT_TRUE(eventually([&] { return observer_.published().size() == input.size(); }));
  EXPECT_TRUE(eventually([&] { return running.worker().ready(); }));
  EXPECT_TRUE(eventually([&] { return cleanups >= 2; }));
  EXPECT_TRUE(eventually([&] { return !observer_.lag().empty(); }));
  EXPECT_EQ(running.stop(), 0);
  EXPECT_FALSE(running.worker().ready());

  const auto results = read_topic(brokers_, "commands.results", input.size());
  ASSERT_EQ(results.size(), input.size());
  std::multiset<std::string> statuses;
  for (const auto& record : results) {
    const auto doc = nlohmann::json::parse(*record.value);
    statuses.insert(doc.at("status").get<std::string>());
    if (doc.at("status") == "rejected") {
      EXPECT_FALSE(record.key.has_value());
    } else {
      EXPECT_EQ(*record.key, "org/" + doc.at("idempotency_key").get<std::string>());
    }
  }
  EXPECT_EQ(statuses, (std::multiset<std::string>{"created", "created", "created", "created",
                                                  "duplicate", "rejected"}));

  const auto dead = read_topic(brokers_, "commands.dlq", 1);
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].key, "junk");
  EXPECT_EQ(dead[0].value, "not json");
  EXPECT_EQ(dead[0].headers.front().name, "trace");
  ASSERT_NE(dead[0].find_header("dedup-error-code"), nullptr);
  EXPECT_EQ(dead[0].find_header("dedup-error-code")->value, "invalid_json");

  EXPECT_EQ(total_committed(), static_cast<std::int64_t>(input.size()));
  for (const double e2e : observer_.end_to_end()) EXPECT_GE(e2e, 0.0);
}

// Regression (issue 8, defect 3): a compressible 1.2 MB record was rejected as too large, but its
// dead letter exceeded the producer's message.max.bytes: retried forever, offset never committed,
// a new `rejected` result each time. And an entity too large for a result blocked the partition.
TEST_F(WorkerTest, RecordsTooLargeForKafkaAreWrittenCutDownAndCommitted) {
  const std::string huge_title(1'200'000, 'x');  // compresses to almost nothing
  const std::string big_title(600'000, 'y');
  {
    Observer quiet;
    kafka::Producer big_writer({brokers_, {{"message.max.bytes", "3000000"}}}, quiet);
    const std::vector<OutboundRecord> input = {
        command("huge", R"({"title":")" + huge_title + R"("})"),
        command("big", R"({"title":")" + big_title + R"("})"), command("small")};
    ASSERT_TRUE(big_writer.send_batch(input).ok());
  }
  WorkerOptions o = options();
  o.kafka_settings["message.max.bytes"] = "500000";  // the results' entity will not fit
  RunningWorker running(o, processor_, observer_);
  ASSERT_TRUE(eventually([&] { return observer_.published().size() == 3; }, 30s));
  EXPECT_TRUE(eventually([&] { return total_committed() == 3; }));
  EXPECT_EQ(running.stop(), 0);

  std::map<std::string, nlohmann::json> by_key;
  for (const auto& record : read_topic(brokers_, "commands.results", 3)) {
    ASSERT_LE(record.value->size(), 500'000u);
    const auto doc = nlohmann::json::parse(*record.value);
    // Rejected before it was parsed: the too-large record's result names no key.
    by_key[doc.at("idempotency_key").is_null() ? "huge" : doc.at("idempotency_key").get<std::string>()] = doc;
  }
  EXPECT_EQ(by_key.at("huge").at("status"), "rejected");
  EXPECT_EQ(by_key.at("huge").at("error").at("code"), "too_large");
  EXPECT_EQ(by_key.at("big").at("status"), "created");
  EXPECT_TRUE(by_key.at("big").at("entity").is_null());
  EXPECT_GT(by_key.at("big").at("entity_omitted").at("bytes").get<std::size_t>(), 600'000u);
  EXPECT_EQ(by_key.at("small").at("entity").at("title"), "t");

  const auto dead = read_topic(brokers_, "commands.dlq", 1);
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].value->size(), kDlqValuePrefixBytes);
  ASSERT_NE(dead[0].find_header("dedup-truncated"), nullptr);
  EXPECT_EQ(dead[0].find_header("dedup-truncated")->value, "value");
  EXPECT_EQ(dead[0].find_header("dedup-original-size")->value,
            std::to_string(test::command_json("huge", "org", "todo.create",
                                              R"({"title":")" + huge_title + R"("})")
                               .size()));
}

// Kafka charges every header its framing (two varints): counted, or a rejected record with 100,000
// empty headers "weighed" nothing, its dead letter and the cut-down form were both refused, and
// the batch was retried forever (found reviewing issue 8's fixes).
TEST_F(WorkerTest, ARecordWithManyEmptyHeadersIsDeadLetteredAndCommitted) {
  {
    Observer quiet;
    kafka::Producer big_writer({brokers_, {{"message.max.bytes", "100000000"}}}, quiet);
    const std::vector<OutboundRecord> input = {
        {"commands", "junk", "not json", std::vector<RecordHeader>(100'000, {"", std::nullopt})},
        command("after")};
    ASSERT_TRUE(big_writer.send_batch(input).ok());
  }
  WorkerOptions o = options();
  o.kafka_settings["message.max.bytes"] = "150000";
  RunningWorker running(o, processor_, observer_);
  EXPECT_TRUE(eventually([&] { return observer_.published().size() == 2; }, 30s))
      << "published " << observer_.published().size() << " of 2 results";
  EXPECT_TRUE(eventually([&] { return total_committed() == 2; }, 5s));
}

// A cut-down dead letter needs up to ~24 KiB: a producer limit below 64 KiB could never carry
// one, and its batch would be retried forever. Refused at start-up, naming the setting.
TEST_F(WorkerTest, AMessageMaxBytesTooSmallForADeadLetterIsAConfigError) {
  WorkerOptions o = options();
  o.kafka_settings["message.max.bytes"] = "2000";
  try {
    Worker worker(o, processor_, observer_);
    FAIL() << "a worker that can write no dead letter started";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), "-X message.max.bytes");
  }
}

TEST_F(WorkerTest, TransientDatabaseErrorRetriesTheBatchAndPublishesOnlyAfterSuccess) {
  store_.fail_transiently(3);
  std::vector<OutboundRecord> input = {command("a"), command("b"), command("c")};
  test::write_records(brokers_, input);

  RunningWorker running(options(), processor_, observer_);
  ASSERT_TRUE(eventually([&] { return store_.calls() >= 2; }));
  EXPECT_FALSE(running.worker().ready());  // not ready while the database fails
  EXPECT_TRUE(observer_.published().empty());
  ASSERT_TRUE(eventually([&] { return observer_.published().size() == input.size(); }));
  EXPECT_TRUE(eventually([&] { return running.worker().ready(); }));
  EXPECT_GE(store_.calls(), 4);

  // More records after recovery flow normally (partitions were resumed).
  test::write_records(brokers_, std::vector<OutboundRecord>{command("e")});
  ASSERT_TRUE(eventually([&] { return observer_.published().size() == input.size() + 1; }));
  EXPECT_EQ(running.stop(), 0);

  EXPECT_EQ(read_topic(brokers_, "commands.results", 4).size(), 4u);
  EXPECT_EQ(total_committed(), 4);
}

// The last batch's offset commit is refused and no batch follows: the idle loop collects the
// refusal and commits the kept offsets, while the worker runs (not only at shutdown). With the
// commit sent and not waited for, the refusal is known only once the loop asks for it.
TEST_F(WorkerTest, ARefusedCommitOfTheLastBatchIsCommittedWhileIdle) {
  const std::vector<OutboundRecord> input = {command("a"), command("b")};
  test::write_records(brokers_, input);
  cluster_.push_request_errors(kafka::ApiKey::offset_commit,
                               {RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS});
  RunningWorker running(options(), processor_, observer_);
  ASSERT_TRUE(eventually([&] { return observer_.published().size() == input.size(); }));
  EXPECT_TRUE(eventually([&] { return total_committed() == 2; }))
      << "the refused offsets were not committed while the worker idled";
  EXPECT_GT(observer_.kafka_errors(), 0u) << "the injected refusal never reached a commit";
  EXPECT_EQ(running.stop(), 0);
  EXPECT_EQ(store_.calls(), 1) << "committing again is not processing again";
}

// --commit-interval: within the interval a batch's offsets are owed, not sent; they are committed
// as soon as no batch comes (here: while the worker runs, an hour before the interval ends), and
// never past a result that is not acknowledged.
TEST_F(WorkerTest, DeferredOffsetsAreCommittedAsSoonAsNoBatchComes) {
  std::vector<OutboundRecord> input;
  for (int i = 0; i < 12; ++i) input.push_back(command("k" + std::to_string(i)));
  test::write_records(brokers_, input);
  WorkerOptions o = options();
  o.commit_interval = std::chrono::hours(1);
  o.max_batch_records = 1;  // a batch per record: all but the first batch's offsets are deferred
  RunningWorker running(o, processor_, observer_);
  ASSERT_TRUE(eventually([&] { return observer_.published().size() == input.size(); }));
  EXPECT_TRUE(eventually([&] { return total_committed() == 12; }))
      << "the deferred offsets were not committed while the worker idled";
  EXPECT_EQ(running.stop(), 0);
  EXPECT_EQ(store_.calls(), 12);
}

TEST_F(WorkerTest, PermanentDatabaseErrorStopsWithStatusOneAndCommitsNothing) {
  store_.fail_permanently();
  test::write_records(brokers_, std::vector<OutboundRecord>{command("a")});
  RunningWorker running(options(), processor_, observer_);
  EXPECT_EQ(running.wait(), 1);
  EXPECT_TRUE(observer_.published().empty());
  EXPECT_EQ(total_committed(), 0);
}

TEST_F(WorkerTest, FailedPublishingIsRetriedAndReplaysTheSameResults) {
  // The next produce requests fail with a non-retriable error: librdkafka reports the records
  // failed, the worker must not commit, and must publish the batch's results again (the ones
  // built: the store would replay the same results for the same source positions).
  std::vector<OutboundRecord> input = {command("a"), command("b")};
  test::write_records(brokers_, input);
  cluster_.push_request_errors(kafka::ApiKey::produce, {RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
                                                        RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
                                                        RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE});
  RunningWorker running(options(), processor_, observer_);
  ASSERT_TRUE(eventually([&] { return observer_.published().size() == input.size(); }));
  EXPECT_EQ(running.stop(), 0);
  EXPECT_GT(observer_.kafka_errors(), 0u);
  EXPECT_EQ(store_.calls(), 1);  // sent again, not processed again

  // Every record has a result, and every result is `created` (the replay for the same source
  // position), never `duplicate`.
  const auto results =
      read_topic(brokers_, "commands.results", test::topic_size(brokers_, "commands.results"));
  ASSERT_GE(results.size(), input.size());
  std::set<std::pair<int, std::int64_t>> sources;
  for (const auto& record : results) {
    const auto doc = nlohmann::json::parse(*record.value);
    EXPECT_EQ(doc.at("status"), "created");
    EXPECT_EQ(doc.at("replayed"), false);
    sources.insert({doc.at("source").at("partition").get<int>(),
                    doc.at("source").at("offset").get<std::int64_t>()});
  }
  EXPECT_EQ(sources.size(), input.size());
  EXPECT_EQ(total_committed(), 2);
}

TEST_F(WorkerTest, StopDuringDatabaseOutageAbandonsTheBatchWithinTheDrainTimeout) {
  store_.fail_transiently(1'000'000);
  test::write_records(brokers_, std::vector<OutboundRecord>{command("a"), command("b")});
  WorkerOptions o = options();
  o.drain_timeout = 1s;
  RunningWorker running(o, processor_, observer_);
  ASSERT_TRUE(eventually([&] { return store_.calls() >= 1; }));
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(running.stop(), 0);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 8s);  // drain 1 s + leaving the group
  EXPECT_TRUE(observer_.published().empty());
  EXPECT_EQ(total_committed(), 0);  // the records will be read again
}

TEST_F(WorkerTest, RevokedPartitionsAreDroppedFromAStuckBatchAndServedByTheirNewOwner) {
  // Worker A holds both partitions and is stuck on its database. Worker B joins: the rebalance,
  // served by A during its backoff, moves a partition to B, which publishes its records while A
  // drops them from its in-flight batch.
  store_.fail_transiently(1'000'000);
  std::vector<OutboundRecord> input;
  for (int i = 0; i < 10; ++i) input.push_back(command("k" + std::to_string(i)));
  test::write_records(brokers_, input);

  RunningWorker a(options(), processor_, observer_);
  ASSERT_TRUE(eventually([&] { return store_.calls() >= 1; }));

  test::FakeKeyStore healthy_store;
  test::RecordingObserver b_observer;
  Processor b_processor(test::test_catalog(), healthy_store, clock_, b_observer, ParseOptions{});
  RunningWorker b(options(), b_processor, b_observer);
  ASSERT_TRUE(eventually([&] { return !b_observer.published().empty(); }, 30s));
  EXPECT_TRUE(observer_.published().empty());
  // B got exactly one partition and published all of that partition's records.
  EXPECT_TRUE(eventually([&] {
    const auto offsets = test::committed_offsets(brokers_, group_, "commands", 2);
    return (offsets[0] >= 0) != (offsets[1] >= 0);
  }));
  EXPECT_EQ(b.stop(), 0);
  EXPECT_EQ(a.stop(), 0);
}

// Lanes take whole partitions, so a poll of N batches must span partitions. librdkafka queues a
// fetched partition's records in runs (a real broker sends up to 1 MiB of each): taken in fetch
// order, this backlog's polls of 2 × 100 held 200 records of one partition each, and one lane did
// all the work. With more than one transaction per batch, a batch takes at most --max-batch from
// each partition before it takes more from any.
TEST_F(WorkerTest, WithLanesABacklogBatchTakesAtMostOneBatchFromEachPartition) {
  // Counts each batch's records per partition, then processes it as one lane would.
  class TwoLanes final : public BatchProcessor {
   public:
    explicit TwoLanes(BatchProcessor& inner) : inner_(inner) {}
    std::vector<CommandResult> process(std::span<const InboundRecord> records) override {
      std::map<std::int32_t, std::size_t> per_partition;
      for (const InboundRecord& r : records) ++per_partition[r.source.partition];
      bool first = false;
      {
        std::lock_guard lock(mutex_);
        first = batches_.empty();
        batches_.push_back(per_partition);
      }
      // The first poll may see one partition's records only; while it is "processed", librdkafka
      // fetches the rest of the backlog of both.
      if (first) std::this_thread::sleep_for(1s);
      return inner_.process(records);
    }
    std::size_t transactions_per_batch() const noexcept override { return 2; }
    std::vector<std::map<std::int32_t, std::size_t>> batches() {
      std::lock_guard lock(mutex_);
      return batches_;
    }

   private:
    BatchProcessor& inner_;
    std::mutex mutex_;
    std::vector<std::map<std::int32_t, std::size_t>> batches_;
  } lanes(processor_);

  std::vector<OutboundRecord> input;
  for (int partition = 0; partition < 2; ++partition) {
    for (int i = 0; i < 600; ++i) {
      input.push_back(command("p" + std::to_string(partition) + "-" + std::to_string(i)));
      input.back().partition = partition;
    }
  }
  test::write_records(brokers_, input);  // all of it before the worker's first fetch

  WorkerOptions o = options();
  o.max_batch_records = 100;
  RunningWorker running(o, lanes, observer_);
  ASSERT_TRUE(eventually([&] { return observer_.published().size() == input.size(); }));
  EXPECT_EQ(running.stop(), 0);

  const auto batches = lanes.batches();
  ASSERT_FALSE(batches.empty());
  // After the first poll (which may have had one partition's records only), batches take 100 of
  // each until one partition runs out: at least 4 of the 6 polls of this backlog (at least 400
  // records of each partition remain after the first poll).
  std::size_t even = 0;
  std::string seen;
  for (const auto& batch : batches) {
    std::size_t records = 0;
    seen += " {";
    for (const auto& [partition, count] : batch) {
      records += count;
      seen += " " + std::to_string(partition) + ":" + std::to_string(count);
    }
    seen += " }";
    EXPECT_LE(records, 200u);
    if (batch == std::map<std::int32_t, std::size_t>{{0, 100}, {1, 100}}) ++even;
  }
  EXPECT_GE(even, 4u) << "batches (partition:records):" << seen;
  EXPECT_EQ(total_committed(), static_cast<std::int64_t>(input.size()));
}

// The loop finishes batch N (acknowledgements, the results reported, the offset commit sent) while
// batch N+1 is in its transaction, not after it: the second batch's transaction waits, inside
// process(), until the first batch is reported and its offsets are committed. Run one after the
// other, the loop would never get there while the transaction waits: it gives up after 10 s.
TEST_F(WorkerTest, ThePreviousBatchIsFinishedWhileTheNextIsInItsTransaction) {
  class Finished final : public Observer {
   public:
    void on_results_published() override { ++batches; }
    std::atomic<int> batches{0};
  } finished;
  FanOutObserver observer({&observer_, &finished});

  class WaitsForThePreviousBatch final : public BatchProcessor {
   public:
    WaitsForThePreviousBatch(BatchProcessor& inner, std::function<std::int64_t()> committed,
                             Finished& finished)
        : inner_(inner), committed_(std::move(committed)), finished_(finished) {}
    std::vector<CommandResult> process(std::span<const InboundRecord> records) override {
      if (++calls_ == 1) {
        first_batch_ = static_cast<std::int64_t>(records.size());
        // Meanwhile librdkafka fetches the rest, so the next poll (which does not wait while a
        // batch is on its way) finds a second batch: without one, the loop would finish the first
        // batch on its own and the check below would pass on a loop that never overlaps.
        std::this_thread::sleep_for(1s);
      } else if (calls_ == 2) {
        overlapped = eventually([&] {
          return finished_.batches.load() >= 1 && committed_() >= first_batch_;
        }, 10s);
      }
      return inner_.process(records);
    }
    std::atomic<bool> overlapped{false};

   private:
    BatchProcessor& inner_;
    std::function<std::int64_t()> committed_;
    Finished& finished_;
    int calls_ = 0;  // the transactions run one at a time
    std::int64_t first_batch_ = 0;
  } waiting(processor_, [this] { return total_committed(); }, finished);

  std::vector<OutboundRecord> input;
  input.reserve(200);
  for (int i = 0; i < 200; ++i) input.push_back(command("k" + std::to_string(i)));
  test::write_records(brokers_, input);
  WorkerOptions o = options();
  o.max_batch_records = 100;
  RunningWorker running(o, waiting, observer);
  ASSERT_TRUE(eventually([&] { return observer_.published().size() == input.size(); }));
  EXPECT_EQ(running.stop(), 0);
  EXPECT_TRUE(waiting.overlapped) << "the first batch was not finished during the second's transaction";
  EXPECT_EQ(total_committed(), static_cast<std::int64_t>(input.size()));
}

TEST_F(WorkerTest, RefusesAConfigurationThatWouldLoopOrLoseGuarantees) {
  WorkerOptions o = options();
  o.results_topic = "commands";
  EXPECT_THROW(Worker(o, processor_, observer_), ConfigError);
  o = options();
  o.brokers.clear();
  EXPECT_THROW(Worker(o, processor_, observer_), ConfigError);
  o = options();
  o.kafka_settings["enable.auto.commit"] = "true";
  EXPECT_THROW(Worker(o, processor_, observer_), ConfigError);

  o = options();
  o.max_batch_records = 0;
  EXPECT_THROW(Worker(o, processor_, observer_), ConfigError);
  o = options();
  o.cleanup_interval = std::chrono::milliseconds::zero();
  EXPECT_THROW(Worker(o, processor_, observer_), ConfigError);
  o = options();
  o.commit_interval = std::chrono::milliseconds(-1);
  EXPECT_THROW(Worker(o, processor_, observer_), ConfigError);

  ::setenv(kFailpointEnv, "no_such_point", 1);
  EXPECT_THROW(failpoint_from_environment(), ConfigError);
  ::setenv(kFailpointEnv, "after_db_commit:0", 1);
  EXPECT_THROW(failpoint_from_environment(), ConfigError);
  ::setenv(kFailpointEnv, "after_db_commit:3", 1);
  const Failpoint armed = failpoint_from_environment();
  EXPECT_EQ(armed.name, "after_db_commit");
  EXPECT_EQ(armed.hit, 3);
  ::unsetenv(kFailpointEnv);
  EXPECT_TRUE(failpoint_from_environment().name.empty());
}

}  // namespace
}  // namespace dedup
