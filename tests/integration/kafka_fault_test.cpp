// The producer under broker faults: a batch is either fully acknowledged or reported as failed,
// never silently short; the idempotent producer does not duplicate on retries.
#include <gtest/gtest.h>

#include <iostream>
#include <thread>

#include "dedup/kafka/mock_cluster.hpp"
#include "dedup/kafka/producer.hpp"
#include "support/kafka_test_util.hpp"

namespace dedup::kafka {
namespace {

using namespace std::chrono_literals;

std::vector<OutboundRecord> numbered(const std::string& topic, int n) {
  std::vector<OutboundRecord> records;
  for (int i = 0; i < n; ++i)
    records.push_back({topic, "k" + std::to_string(i), std::to_string(i), {}});
  return records;
}

TEST(KafkaFaults, BrokerDownForTwoSecondsThenBatchFullyDelivered) {
  MockCluster cluster;
  cluster.create_topic("outage", 2);
  Observer observer;
  Producer producer({cluster.bootstraps(), {}}, observer);
  ASSERT_TRUE(producer.send_batch(numbered("outage", 1)).ok());  // connected, producer id known

  cluster.set_broker_down(-1);
  std::thread heal([&] {
    std::this_thread::sleep_for(2s);
    cluster.set_broker_up(-1);
  });
  const auto records = numbered("outage", 40);
  const auto start = std::chrono::steady_clock::now();
  const BatchDelivery delivery = producer.send_batch(records);
  heal.join();
  EXPECT_GE(std::chrono::steady_clock::now() - start, 1500ms);  // it waited for the broker
  EXPECT_TRUE(delivery.ok()) << delivery.first_error;
  EXPECT_EQ(delivery.delivered, records.size());
  // Exactly once each (idempotence: retries after the outage did not duplicate).
  EXPECT_EQ(test::read_topic(cluster.bootstraps(), "outage", 41, 10s).size(), 41u);
}

TEST(KafkaFaults, BrokerDownPastMessageTimeoutReportsEveryRecordFailed) {
  MockCluster cluster;
  cluster.create_topic("timeout", 1);
  Observer observer;
  // Through the alias: a user's -X must win over our message.timeout.ms default.
  Producer producer({cluster.bootstraps(), {{"delivery.timeout.ms", "1500"}}}, observer);
  ASSERT_TRUE(producer.send_batch(numbered("timeout", 1)).ok());

  cluster.set_broker_down(-1);
  const auto records = numbered("timeout", 20);
  const auto start = std::chrono::steady_clock::now();
  const BatchDelivery delivery = producer.send_batch(records);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  EXPECT_FALSE(delivery.ok());
  EXPECT_EQ(delivery.delivered + delivery.failed, records.size());  // nothing unaccounted for
  EXPECT_EQ(delivery.failed, records.size());
  EXPECT_FALSE(delivery.first_error.empty());

  cluster.set_broker_up(-1);
  // As the worker does: retry the batch until it is acknowledged. The first retries may time out
  // again while the client reconnects (backoff) and re-establishes its idempotent producer id.
  BatchDelivery retry = producer.send_batch(records);
  for (int attempt = 1; attempt < 10 && !retry.ok(); ++attempt) {
    std::cerr << "retry " << attempt << ": " << retry.first_error << "\n";
    retry = producer.send_batch(records);
  }
  EXPECT_TRUE(retry.ok()) << retry.first_error;
  EXPECT_EQ(retry.delivered, records.size());
}

TEST(KafkaFaults, DeadlinePurgesAndReportsFailure) {
  MockCluster cluster;
  cluster.create_topic("deadline", 1);
  Observer observer;
  Producer producer({cluster.bootstraps(), {}}, observer);
  ASSERT_TRUE(producer.send_batch(numbered("deadline", 1)).ok());
  cluster.set_broker_down(-1);
  const auto records = numbered("deadline", 10);
  const auto start = std::chrono::steady_clock::now();
  const BatchDelivery delivery =
      producer.send_batch(records, std::chrono::steady_clock::now() + 500ms);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_EQ(delivery.failed, records.size());
  cluster.set_broker_up(-1);
}

TEST(KafkaFaults, RetriableProduceErrorsAreRetriedWithoutDuplicates) {
  MockCluster cluster;
  cluster.create_topic("flaky", 1);
  Observer observer;
  Producer producer({cluster.bootstraps(), {}}, observer);
  ASSERT_TRUE(producer.send_batch(numbered("flaky", 1)).ok());
  cluster.push_request_errors(
      ApiKey::produce,
      {RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
       RD_KAFKA_RESP_ERR__TRANSPORT, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND});
  const auto records = numbered("flaky", 30);
  const BatchDelivery delivery = producer.send_batch(records);
  EXPECT_TRUE(delivery.ok()) << delivery.first_error;
  const auto read = test::read_topic(cluster.bootstraps(), "flaky", 31, 10s);
  ASSERT_EQ(read.size(), 31u);
  for (std::size_t i = 1; i < read.size(); ++i) EXPECT_EQ(*read[i].value, std::to_string(i - 1));
}

}  // namespace
}  // namespace dedup::kafka
