// Records whose dead letter could never fit Kafka (found reviewing issue 8's fixes): the worker
// retried the batch forever and never committed. Same fixture as WorkerTest (mock cluster,
// FakeKeyStore).
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "dedup/kafka/mock_cluster.hpp"
#include "dedup/kafka/producer.hpp"
#include "dedup/processor.hpp"
#include "dedup/worker.hpp"
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

class RunningWorker {
 public:
  RunningWorker(WorkerOptions options, Processor& processor, Observer& observer)
      : worker_(std::move(options), processor, observer),
        thread_([this] { status_ = worker_.run(); }) {}
  ~RunningWorker() {
    worker_.request_stop();
    if (thread_.joinable()) thread_.join();
  }

 private:
  Worker worker_;
  std::atomic<int> status_{-1};
  std::thread thread_;
};

class WorkerLimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cluster_.create_topic("commands", 1);
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
    return o;
  }
  OutboundRecord command(std::string_view key) {
    return {"commands", "org/" + std::string(key), test::command_json(key, "org", "todo.create"), {}};
  }
  std::int64_t committed() {
    const auto offsets = test::committed_offsets(brokers_, group_, "commands", 1);
    return offsets.empty() ? -1 : offsets[0];
  }
  void write(const std::vector<OutboundRecord>& input) {
    Observer quiet;
    kafka::Producer writer({brokers_, {{"message.max.bytes", "100000000"}}}, quiet);
    ASSERT_TRUE(writer.send_batch(input).ok());
  }

  kafka::MockCluster cluster_;
  std::string brokers_ = cluster_.bootstraps();
  std::string group_ = test::unique_name("review");
  test::FakeKeyStore store_;
  SystemClock clock_;
  test::RecordingObserver observer_;
  Processor processor_{test::test_catalog(), store_, clock_, observer_, ParseOptions{}};
};

// Headers are measured by their name and value bytes only (outbound.cpp, header_bytes), but each
// costs at least 2 bytes on the wire (two varints). A rejected record with 100,000 empty headers
// counts 0 header bytes: its dead letter "fits" the limit, librdkafka refuses it
// (MSG_SIZE_TOO_LARGE: ~200 KB of serialized headers > message.max.bytes), the cut-down form keeps
// the headers ("at most 16 KiB" of 0 bytes) and is refused again: the batch is retried forever.
// Same with a real broker and default limits when the commands topic accepts more than the DLQ
// topic (e.g. 500k empty headers under 1 MiB on both): the cut-down form never gets smaller.
TEST_F(WorkerLimitsTest, ARecordWithManyEmptyHeadersIsDeadLetteredAndCommitted) {
  std::vector<RecordHeader> headers(100'000, RecordHeader{"", std::nullopt});
  write({{"commands", "junk", "not json", headers}, command("after")});
  WorkerOptions o = options();
  o.kafka_settings["message.max.bytes"] = "150000";
  RunningWorker running(o, processor_, observer_);
  EXPECT_TRUE(eventually([&] { return observer_.published().size() == 2; }, 30s))
      << "published " << observer_.published().size() << " of 2 results";
  EXPECT_TRUE(eventually([&] { return committed() == 2; }, 5s)) << "committed " << committed();
}

// -X message.max.bytes is accepted down to librdkafka's minimum (1000), but a cut-down dead letter
// keeps 4 KiB of the value (and up to 1 KiB of key, 16 KiB of headers, 1 KiB of message): it can
// never fit, and the batch is retried forever. Either refuse such a setting at start-up (exit 2,
// naming -X message.max.bytes) or cut down to what the limit allows.
TEST_F(WorkerLimitsTest, ASmallMessageMaxBytesStillDeadLettersEveryRecord) {
  write({{"commands", "junk", std::string(6000, '!'), {}}, command("after")});
  WorkerOptions o = options();
  o.kafka_settings["message.max.bytes"] = "2000";
  try {
    RunningWorker running(o, processor_, observer_);
    EXPECT_TRUE(eventually([&] { return observer_.published().size() == 2; }, 30s))
        << "published " << observer_.published().size() << " of 2 results";
    EXPECT_TRUE(eventually([&] { return committed() == 2; }, 5s)) << "committed " << committed();
  } catch (const ConfigError& e) {
    SUCCEED() << "refused at start-up: " << e.what();
  }
}

}  // namespace
}  // namespace dedup
