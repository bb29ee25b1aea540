// Helpers for the Kafka and worker suites: real librdkafka clients against a MockCluster, a
// recording observer, and an in-memory KeyStore. No fake of Kafka anywhere.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dedup/config.hpp"
#include "dedup/errors.hpp"
#include "dedup/kafka/handles.hpp"
#include "dedup/kafka/producer.hpp"
#include "dedup/key_store.hpp"
#include "dedup/observer.hpp"
#include "dedup/record.hpp"

namespace dedup::test {

using namespace std::chrono_literals;

// "<prefix>-<pid>-<n>": group ids and topics that no other test or process shares.
std::string unique_name(std::string_view prefix);

// Short group timeouts so that a dead or departed member costs seconds, not the 45 s default
// (the mock keeps a SIGKILLed member until its session times out).
kafka::KafkaSettings fast_group_settings();

// The value of librdkafka property `key` read back from the live client (not from our settings),
// or "<unset>".
std::string live_setting(rd_kafka_t* handle, const char* key);

// Writes `records` with the production Producer; fails the test unless all are acknowledged.
void write_records(const std::string& brokers, std::span<const kafka::OutboundRecord> records);

// Reads `topic` from the beginning with a fresh group until `count` records arrived or `timeout`
// passed; returns what it read, ordered by (partition, offset).
std::vector<InboundRecord> read_topic(const std::string& brokers, const std::string& topic,
                                      std::size_t count, std::chrono::milliseconds timeout = 20s);

// Records currently in `topic`: the sum of its partitions' high watermarks (the mock has no
// compaction or transaction markers, so every offset is a record).
std::size_t topic_size(const std::string& brokers, const std::string& topic);

// Committed offsets of `group` for partitions 0..partitions-1 of `topic` (-1001 when none).
std::vector<std::int64_t> committed_offsets(const std::string& brokers, const std::string& group,
                                            const std::string& topic, int partitions);

// A command value as SPEC §1 writes it.
std::string command_json(std::string_view key, std::string_view scope, std::string_view type,
                         std::string_view payload_json = R"({"title":"t"})");

// The catalog the worker suites use: todo.create -> public.todos (never touched by FakeKeyStore).
const CommandCatalog& test_catalog();

// Counts what the worker reports. Thread-safe: the worker runs on its own thread in tests.
class RecordingObserver final : public Observer {
 public:
  void on_result_published(const CommandResult& result, double end_to_end_seconds) override;
  void on_kafka_error(std::string_view what) override;
  void on_consumer_lag(std::int32_t partition, std::int64_t lag) override;

  std::vector<CommandResult> published() const;
  std::vector<double> end_to_end() const;
  std::size_t kafka_errors() const;
  std::map<std::int32_t, std::int64_t> lag() const;

 private:
  mutable std::mutex mutex_;
  std::vector<CommandResult> published_;
  std::vector<double> end_to_end_;
  std::size_t kafka_errors_ = 0;
  std::map<std::int32_t, std::int64_t> lag_;
};

// An in-memory key store with the SPEC §2 decision table (resolve_stored), and failure injection.
// Thread-safe.
class FakeKeyStore final : public KeyStore {
 public:
  std::vector<CommandResult> apply(std::span<const Command> commands, Timestamp now) override;

  // The next `n` apply() calls throw TransientDatabaseError (nothing applied).
  void fail_transiently(int n);
  // Every later apply() throws PermanentDatabaseError.
  void fail_permanently();

  int calls() const;
  std::size_t keys() const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, std::string>, StoredKey> rows_;
  int transient_failures_ = 0;
  bool permanent_ = false;
  int calls_ = 0;
  std::int64_t next_id_ = 1;
};

}  // namespace dedup::test
