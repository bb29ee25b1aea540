// Crash tests: a worker process SIGKILLs itself at a failpoint (DEDUP_FAILPOINT), and a successor
// worker in the same group must find every record not yet committed and publish its result.
// The stores of the two processes are separate (in memory), so this checks the Kafka side of the
// contract: offsets are committed only after results are acknowledged. The Postgres side (the
// replayed result is the original one) is covered by the end-to-end suites with a real database.
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>

#include <map>
#include <thread>

#include "dedup/kafka/mock_cluster.hpp"
#include "dedup/processor.hpp"
#include "dedup/worker.hpp"
#include "support/kafka_test_util.hpp"

extern char** environ;

namespace dedup {
namespace {

using namespace std::chrono_literals;

// Runs the child worker with `failpoint` armed; returns its wait status. A commit after every
// batch unless `commit_interval` says otherwise: the failpoints name states of one batch's commit.
int run_child(const std::string& brokers, const std::string& group, const std::string& failpoint,
              int max_batch, std::chrono::milliseconds commit_interval = std::chrono::milliseconds(0)) {
  std::vector<std::string> env_storage;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string_view(*e).starts_with(std::string(kFailpointEnv) + "=")) continue;
    env_storage.emplace_back(*e);
  }
  env_storage.push_back(std::string(kFailpointEnv) + "=" + failpoint);
  std::vector<char*> envp;
  for (auto& e : env_storage) envp.push_back(e.data());
  envp.push_back(nullptr);

  std::string program = DEDUP_KAFKA_WORKER_CHILD;
  std::string topic = "commands";
  std::string batch = std::to_string(max_batch);
  std::string interval = std::to_string(commit_interval.count());
  std::vector<char*> argv = {program.data(),
                             const_cast<char*>(brokers.c_str()),
                             const_cast<char*>(group.c_str()),
                             topic.data(),
                             batch.data(),
                             interval.data(),
                             nullptr};
  pid_t pid = 0;
  EXPECT_EQ(posix_spawn(&pid, program.c_str(), nullptr, nullptr, argv.data(), envp.data()), 0);
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

class WorkerCrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cluster_.create_topic("commands", 1);
    cluster_.create_topic("commands.results", 1);
    cluster_.create_topic("commands.dlq", 1);
    std::vector<kafka::OutboundRecord> input;
    for (int i = 0; i < kRecords; ++i) {
      const std::string key = "k" + std::to_string(i);
      input.push_back(
          {"commands", "org/" + key, test::command_json(key, "org", "todo.create"), {}});
    }
    test::write_records(brokers_, input);
  }

  // Results on the results topic, counted per source offset.
  std::map<std::int64_t, int> results_per_offset() {
    std::map<std::int64_t, int> out;
    const std::size_t size = test::topic_size(brokers_, "commands.results");
    for (const auto& r : test::read_topic(brokers_, "commands.results", size)) {
      ++out[nlohmann::json::parse(*r.value).at("source").at("offset").get<std::int64_t>()];
    }
    return out;
  }

  // A successor worker in the same group runs until every record has a result.
  void run_successor(std::size_t expected_results) {
    test::FakeKeyStore store;
    SystemClock clock;
    test::RecordingObserver observer;
    Processor processor(test::test_catalog(), store, clock, observer, ParseOptions{});
    WorkerOptions options;
    options.brokers = brokers_;
    options.group = group_;
    options.kafka_settings = test::fast_group_settings();
    options.max_batch_wait = 100ms;
    Worker worker(options, processor, observer);
    std::thread thread([&] { EXPECT_EQ(worker.run(), 0); });
    // The killed member holds the partition until its 6 s session times out.
    const auto deadline = std::chrono::steady_clock::now() + 40s;
    while (observer.published().size() < expected_results &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(50ms);
    }
    worker.request_stop();
    thread.join();
    EXPECT_EQ(observer.published().size(), expected_results);
  }

  static constexpr int kRecords = 8;
  kafka::MockCluster cluster_;
  std::string brokers_ = cluster_.bootstraps();
  std::string group_ = test::unique_name("crash");
};

bool killed(int status) { return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL; }

TEST_F(WorkerCrashTest, CrashAfterDatabaseCommitPublishesNothingAndSuccessorProcessesAll) {
  ASSERT_TRUE(killed(run_child(brokers_, group_, "after_db_commit", 3)));
  EXPECT_TRUE(results_per_offset().empty());
  EXPECT_EQ(test::committed_offsets(brokers_, group_, "commands", 1)[0], RD_KAFKA_OFFSET_INVALID);
  run_successor(kRecords);
  const auto results = results_per_offset();
  ASSERT_EQ(results.size(), static_cast<std::size_t>(kRecords));
  for (const auto& [offset, count] : results) EXPECT_EQ(count, 1) << offset;
}

TEST_F(WorkerCrashTest, CrashAfterResultsAckedLeavesOffsetsUncommittedSoResultsAreRepublished) {
  ASSERT_TRUE(killed(run_child(brokers_, group_, "after_results_acked", 3)));
  const auto before = results_per_offset();
  ASSERT_FALSE(before.empty());  // the first batch's results were out before the crash
  EXPECT_EQ(test::committed_offsets(brokers_, group_, "commands", 1)[0], RD_KAFKA_OFFSET_INVALID);
  run_successor(kRecords);  // everything is read again: nothing was committed
  const auto after = results_per_offset();
  ASSERT_EQ(after.size(), static_cast<std::size_t>(kRecords));
  for (const auto& [offset, count] : after) EXPECT_EQ(count, before.contains(offset) ? 2 : 1);
}

// Pipelining: the second batch is committed in the database while the first one's results are on
// their way (at the n-th hit the failpoint is reached before the loop finishes the first batch). A
// crash there leaves both batches uncommitted in Kafka; the successor reads all of them again, and
// only the first batch's records can have a result twice.
TEST_F(WorkerCrashTest, CrashWithTheNextBatchCommittedAndResultsInFlightCommitsNoOffset) {
  ASSERT_TRUE(killed(run_child(brokers_, group_, "after_db_commit_in_flight", 3)));
  EXPECT_EQ(test::committed_offsets(brokers_, group_, "commands", 1)[0], RD_KAFKA_OFFSET_INVALID);
  const auto before = results_per_offset();
  for (const auto& [offset, count] : before) {
    EXPECT_LT(offset, 3) << "only the first batch's results were sent before the crash";
  }
  run_successor(kRecords);
  const auto after = results_per_offset();
  ASSERT_EQ(after.size(), static_cast<std::size_t>(kRecords));
  for (const auto& [offset, count] : after) EXPECT_EQ(count, before.contains(offset) ? 2 : 1) << offset;
}

// Killed right before the third batch's commit: the first batch's commit was finished when the
// second one was sent (the second may or may not have reached the broker).
TEST_F(WorkerCrashTest, CrashBeforeThirdCommitResumesAfterTheCommittedBatches) {
  ASSERT_TRUE(killed(run_child(brokers_, group_, "before_offset_commit:3", 3)));
  const std::int64_t committed = test::committed_offsets(brokers_, group_, "commands", 1)[0];
  ASSERT_GT(committed, 0);  // at least the first batch was committed
  const auto before = results_per_offset();
  run_successor(static_cast<std::size_t>(kRecords - committed));
  const auto after = results_per_offset();
  ASSERT_EQ(after.size(), static_cast<std::size_t>(kRecords));
  for (const auto& [offset, count] : after) {
    // Committed records are never read again; the rest were published by both processes at most.
    if (offset < committed)
      EXPECT_EQ(count, 1) << offset;
    else
      EXPECT_EQ(count, before.contains(offset) ? 2 : 1) << offset;
  }
}

// The offset commit is sent and not waited for: the loop goes on with the next batch. A crash
// right after sending it leaves the first batch committed or not (the broker may not have got
// it); either way the successor reads from the committed offset, every record gets its result,
// and no record at or past the committed offset is skipped.
TEST_F(WorkerCrashTest, CrashWithTheOffsetCommitOnItsWayLosesNothing) {
  ASSERT_TRUE(killed(run_child(brokers_, group_, "after_offset_commit_sent", 3)));
  // A commit request the child wrote before it died is still applied by the mock broker: let it
  // land before the committed offset decides how many results the successor owes.
  std::this_thread::sleep_for(1s);
  std::int64_t committed = test::committed_offsets(brokers_, group_, "commands", 1)[0];
  if (committed == RD_KAFKA_OFFSET_INVALID) committed = 0;
  EXPECT_LE(committed, 3) << "only the first batch's offsets were sent";
  const auto before = results_per_offset();
  ASSERT_FALSE(before.empty()) << "the first batch's results were acknowledged before its commit";
  for (std::int64_t offset = 0; offset < committed; ++offset) {
    EXPECT_TRUE(before.contains(offset)) << "committed past a record without a result: " << offset;
  }
  run_successor(static_cast<std::size_t>(kRecords - committed));
  const auto after = results_per_offset();
  ASSERT_EQ(after.size(), static_cast<std::size_t>(kRecords));
  for (const auto& [offset, count] : after) {
    EXPECT_EQ(count, offset < committed ? 1 : (before.contains(offset) ? 2 : 1)) << offset;
  }
}

// --commit-interval: killed right after the second batch's offsets were deferred (its results
// acknowledged, its offsets owed, not sent). The first batch's commit was sent; the successor reads
// from whichever offset the broker holds and replays the second batch's records (identical
// results in production; here, counted): nothing is skipped, nothing committed past a result.
TEST_F(WorkerCrashTest, CrashWithOffsetsOwedReplaysThemAndLosesNothing) {
  ASSERT_TRUE(killed(run_child(brokers_, group_, "after_offset_commit_deferred", 3, std::chrono::hours(1))));
  std::this_thread::sleep_for(1s);  // a commit request written before the kill still lands
  std::int64_t committed = test::committed_offsets(brokers_, group_, "commands", 1)[0];
  if (committed == RD_KAFKA_OFFSET_INVALID) committed = 0;
  EXPECT_LE(committed, 3) << "only the first batch's offsets were sent; the second's were owed";
  const auto before = results_per_offset();
  for (std::int64_t offset = 0; offset < 6; ++offset) {
    EXPECT_TRUE(before.contains(offset)) << "the owed batch's results were acknowledged: " << offset;
  }
  run_successor(static_cast<std::size_t>(kRecords - committed));
  const auto after = results_per_offset();
  ASSERT_EQ(after.size(), static_cast<std::size_t>(kRecords));
  for (const auto& [offset, count] : after) {
    EXPECT_EQ(count, offset < committed ? 1 : (before.contains(offset) ? 2 : 1)) << offset;
  }
}

}  // namespace
}  // namespace dedup
