#include "support/kafka_test_util.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <nlohmann/json.hpp>
#include <thread>

#include "dedup/kafka/consumer.hpp"

namespace dedup::test {

std::string unique_name(std::string_view prefix) {
  static std::atomic<int> counter{0};
  return std::string(prefix) + "-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

std::string live_setting(rd_kafka_t* handle, const char* key) {
  char value[512];
  std::size_t size = sizeof value;
  if (rd_kafka_conf_get(rd_kafka_conf(handle), key, value, &size) != RD_KAFKA_CONF_OK) return "<unset>";
  return value;
}

kafka::KafkaSettings fast_group_settings() {
  return {{kafka::config_key::kSessionTimeoutMs, "6000"},
          {kafka::config_key::kHeartbeatIntervalMs, "500"},
          {kafka::config_key::kLogConnectionClose, "false"}};
}

void write_records(const std::string& brokers, std::span<const kafka::OutboundRecord> records) {
  Observer observer;
  kafka::Producer producer({brokers, {}}, observer);
  const kafka::BatchDelivery delivery = producer.send_batch(records);
  ASSERT_TRUE(delivery.ok()) << delivery.first_error;
  ASSERT_EQ(delivery.delivered, records.size());
}

std::vector<InboundRecord> read_topic(const std::string& brokers, const std::string& topic,
                                      std::size_t count, std::chrono::milliseconds timeout) {
  // Assigned, not subscribed: a group join costs ~3 s on the mock (its initial rebalance delay),
  // and a reader needs no group.
  kafka::HandlePtr rk = kafka::make_handle(
      RD_KAFKA_CONSUMER, kafka::make_conf({{kafka::config_key::kBootstrapServers, brokers},
                                           {kafka::config_key::kGroupId, unique_name("reader")},
                                           {kafka::config_key::kEnableAutoCommit, "false"}}));
  kafka::TopicPtr handle(rd_kafka_topic_new(rk.get(), topic.c_str(), nullptr));
  const rd_kafka_metadata_t* raw = nullptr;
  const rd_kafka_resp_err_t err = rd_kafka_metadata(rk.get(), 0, handle.get(), &raw, 10'000);
  EXPECT_EQ(err, RD_KAFKA_RESP_ERR_NO_ERROR) << rd_kafka_err2name(err);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) return {};
  kafka::MetadataPtr metadata(raw);
  EXPECT_EQ(metadata->topic_cnt, 1);
  const int partitions = metadata->topics[0].partition_cnt;
  kafka::TopicPartitionListPtr list = kafka::make_partition_list(partitions);
  for (int p = 0; p < partitions; ++p) {
    rd_kafka_topic_partition_list_add(list.get(), topic.c_str(), p)->offset =
        RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_assign(rk.get(), list.get());

  std::vector<InboundRecord> out;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (out.size() < count && std::chrono::steady_clock::now() < deadline) {
    kafka::MessagePtr message(rd_kafka_consumer_poll(rk.get(), 100));
    if (message && message->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      out.push_back(kafka::to_inbound_record(message.get()));
    }
  }
  handle.reset();
  rd_kafka_consumer_close(rk.get());
  std::stable_sort(out.begin(), out.end(), [](const InboundRecord& a, const InboundRecord& b) {
    return std::pair(a.source.partition, a.source.offset) <
           std::pair(b.source.partition, b.source.offset);
  });
  return out;
}

std::size_t topic_size(const std::string& brokers, const std::string& topic) {
  kafka::HandlePtr rk = kafka::make_handle(
      RD_KAFKA_PRODUCER, kafka::make_conf({{kafka::config_key::kBootstrapServers, brokers}}));
  kafka::TopicPtr handle(rd_kafka_topic_new(rk.get(), topic.c_str(), nullptr));
  const rd_kafka_metadata_t* raw = nullptr;
  const rd_kafka_resp_err_t err = rd_kafka_metadata(rk.get(), 0, handle.get(), &raw, 10'000);
  EXPECT_EQ(err, RD_KAFKA_RESP_ERR_NO_ERROR) << rd_kafka_err2name(err);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) return 0;
  kafka::MetadataPtr metadata(raw);
  std::size_t total = 0;
  for (int p = 0; p < metadata->topics[0].partition_cnt; ++p) {
    std::int64_t low = 0;
    std::int64_t high = 0;
    EXPECT_EQ(rd_kafka_query_watermark_offsets(rk.get(), topic.c_str(), p, &low, &high, 10'000),
              RD_KAFKA_RESP_ERR_NO_ERROR);
    total += static_cast<std::size_t>(high);
  }
  return total;
}

std::vector<std::int64_t> committed_offsets(const std::string& brokers, const std::string& group,
                                            const std::string& topic, int partitions) {
  kafka::ConfPtr conf = kafka::make_conf(
      {{kafka::config_key::kBootstrapServers, brokers}, {kafka::config_key::kGroupId, group}});
  kafka::HandlePtr rk = kafka::make_handle(RD_KAFKA_CONSUMER, std::move(conf));
  kafka::TopicPartitionListPtr list = kafka::make_partition_list(partitions);
  for (int p = 0; p < partitions; ++p)
    rd_kafka_topic_partition_list_add(list.get(), topic.c_str(), p);
  const rd_kafka_resp_err_t err = rd_kafka_committed(rk.get(), list.get(), 10'000);
  EXPECT_EQ(err, RD_KAFKA_RESP_ERR_NO_ERROR) << rd_kafka_err2name(err);
  std::vector<std::int64_t> out;
  for (int p = 0; p < partitions; ++p) out.push_back(list->elems[p].offset);
  rd_kafka_consumer_close(rk.get());
  return out;
}

std::string command_json(std::string_view key, std::string_view scope, std::string_view type,
                         std::string_view payload_json) {
  nlohmann::json command{{"idempotency_key", key},
                         {"scope", scope},
                         {"type", type},
                         {"payload", nlohmann::json::parse(payload_json)}};
  return command.dump();
}

const CommandCatalog& test_catalog() {
  static const CommandCatalog catalog = CommandCatalog::from_yaml(
      "commands:\n"
      "  todo.create:\n"
      "    table: public.todos\n");
  return catalog;
}

// --- RecordingObserver --------------------------------------------------------------------------

void RecordingObserver::on_result_published(const CommandResult& result, double e2e) {
  std::lock_guard lock(mutex_);
  published_.push_back(result);
  end_to_end_.push_back(e2e);
}

void RecordingObserver::on_kafka_error(std::string_view) {
  std::lock_guard lock(mutex_);
  ++kafka_errors_;
}

void RecordingObserver::on_consumer_lag(std::int32_t partition, std::int64_t lag) {
  std::lock_guard lock(mutex_);
  lag_[partition] = lag;
}

std::vector<CommandResult> RecordingObserver::published() const {
  std::lock_guard lock(mutex_);
  return published_;
}

std::vector<double> RecordingObserver::end_to_end() const {
  std::lock_guard lock(mutex_);
  return end_to_end_;
}

std::size_t RecordingObserver::kafka_errors() const {
  std::lock_guard lock(mutex_);
  return kafka_errors_;
}

std::map<std::int32_t, std::int64_t> RecordingObserver::lag() const {
  std::lock_guard lock(mutex_);
  return lag_;
}

// --- FakeKeyStore -------------------------------------------------------------------------------

std::vector<CommandResult> FakeKeyStore::apply(std::span<const Command> commands, Timestamp now) {
  std::lock_guard lock(mutex_);
  ++calls_;
  if (permanent_) throw PermanentDatabaseError("fake: relation does not exist", "42P01");
  if (transient_failures_ > 0) {
    --transient_failures_;
    throw TransientDatabaseError("fake: connection lost", "");
  }
  std::vector<CommandResult> results;
  for (const Command& command : commands) {
    const auto key = std::pair(command.scope, command.idempotency_key);
    if (const auto it = rows_.find(key); it != rows_.end()) {
      results.push_back(resolve_stored(command, it->second, now));
      continue;
    }
    StoredKey row;
    row.command_type = command.type->name;
    row.fingerprint = command.fingerprint;
    row.status = Status::created;
    row.entity = command.payload;
    row.entity["id"] = next_id_++;
    row.error = nullptr;
    row.first_processed_at = now;
    row.source = command.source;
    rows_.emplace(key, row);
    // The claimant's own result is what resolve_stored replays for it.
    results.push_back(resolve_stored(command, row, now));
  }
  return results;
}

void FakeKeyStore::fail_transiently(int n) {
  std::lock_guard lock(mutex_);
  transient_failures_ = n;
}

void FakeKeyStore::fail_permanently() {
  std::lock_guard lock(mutex_);
  permanent_ = true;
}

int FakeKeyStore::calls() const {
  std::lock_guard lock(mutex_);
  return calls_;
}

std::size_t FakeKeyStore::keys() const {
  std::lock_guard lock(mutex_);
  return rows_.size();
}

}  // namespace dedup::test
