// Worker benchmark: the real worker loop (Kafka in, one Postgres transaction per batch, results
// out, offsets committed after acknowledgement) against librdkafka's mock cluster and a real
// Postgres, beside the core-only rate of the same records measured in the same run. Prints one
// `name: value` line per figure. Usage:
//   dedup_bench_worker --db CONNINFO [--commands 50000] [--partitions 1] [--latency-seconds 8]
#include <fmt/format.h>
#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <atomic>
#include <tuple>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <pqxx/pqxx>
#include <thread>
#include <vector>

#include "dedup/kafka/handles.hpp"
#include "dedup/kafka/mock_cluster.hpp"
#include "dedup/logging.hpp"
#include "dedup/postgres.hpp"
#include "dedup/processor.hpp"
#include "dedup/worker.hpp"
#include "bench_support.hpp"

namespace {

using json = nlohmann::json;
using SteadyClock = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct Options {
  std::string db;
  int commands = 50'000;
  // One partition by default: the worker is one thread whatever the partition count, and the
  // mock's missing TCP_NODELAY (see main) would stall a producer that spans several partitions by
  // 40 ms per flush — the load generator's as well as the worker's. --partitions 4 shows it.
  int partitions = 1;
  double latency_seconds = 8;
  std::size_t max_batch = 500;
};

Options parse_args(int argc, char** argv) {
  Options options;
  options.db = dedup::bench::parse_flags(argc, argv, [&](const std::string& flag, const std::string& value) {
    if (flag == "--commands") options.commands = std::stoi(value);
    else if (flag == "--partitions") options.partitions = std::stoi(value);
    else if (flag == "--latency-seconds") options.latency_seconds = std::stod(value);
    else return false;
    return true;
  });
  return options;
}

// Counts published results and keeps their end-to-end latencies.
class Recorder final : public dedup::Observer {
 public:
  void on_batch(std::size_t records) override {
    std::lock_guard lock(mutex_);
    ++batches_;
    batched_records_ += records;
  }
  void on_store_transaction(double seconds) override {
    std::lock_guard lock(mutex_);
    store_seconds_ += seconds;
  }
  // (batches, records, seconds in the store) since the last call.
  std::tuple<std::size_t, std::size_t, double> take_batch_stats() {
    std::lock_guard lock(mutex_);
    return {std::exchange(batches_, 0), std::exchange(batched_records_, 0), std::exchange(store_seconds_, 0.0)};
  }
  void on_result_published(const dedup::CommandResult& result, double seconds) override {
    std::lock_guard lock(mutex_);
    ++published_;
    ++by_status_[static_cast<int>(result.status)];
    if (seconds >= 0) latencies_.push_back(seconds);
  }
  std::size_t published() {
    std::lock_guard lock(mutex_);
    return published_;
  }
  std::size_t count(dedup::Status status) {
    std::lock_guard lock(mutex_);
    return by_status_[static_cast<int>(status)];
  }
  std::vector<double> take_latencies() {
    std::lock_guard lock(mutex_);
    return std::exchange(latencies_, {});
  }

 private:
  std::mutex mutex_;
  std::size_t published_ = 0;
  std::size_t by_status_[5] = {};
  std::vector<double> latencies_;
  std::size_t batches_ = 0;
  std::size_t batched_records_ = 0;
  double store_seconds_ = 0;
};

using dedup::bench::reset_schema;

std::string command_value(int i) { return dedup::bench::command_body(i).dump(); }

// A plain librdkafka producer for the load: what a client application would run.
class LoadProducer {
 public:
  explicit LoadProducer(const std::string& brokers)
      : handle_(dedup::kafka::make_handle(
            RD_KAFKA_PRODUCER, dedup::kafka::make_conf({{"bootstrap.servers", brokers},
                                                        {"linger.ms", "2"},
                                                        {"compression.type", "lz4"},
                                                        {"enable.idempotence", "true"}}))) {}

  void send(const std::string& topic, const std::string& value) {
    for (;;) {
      const auto err = rd_kafka_producev(handle_.get(), RD_KAFKA_V_TOPIC(topic.c_str()),
                                         RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
                                         RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
      if (err == RD_KAFKA_RESP_ERR_NO_ERROR) break;
      if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) throw std::runtime_error(rd_kafka_err2str(err));
      rd_kafka_poll(handle_.get(), 10);
    }
    rd_kafka_poll(handle_.get(), 0);
  }
  void flush() {
    if (rd_kafka_flush(handle_.get(), 60'000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
      throw std::runtime_error("load producer flush timed out");
    }
  }

 private:
  dedup::kafka::HandlePtr handle_;
};

// Sum of the group's committed offsets on `topic` (each offset is one record in the mock).
class CommittedOffsets {
 public:
  CommittedOffsets(const std::string& brokers, const std::string& group, std::string topic, int partitions)
      : topic_(std::move(topic)), partitions_(partitions),
        handle_(dedup::kafka::make_handle(
            RD_KAFKA_CONSUMER, dedup::kafka::make_conf({{"bootstrap.servers", brokers}, {"group.id", group}}))) {}

  std::int64_t total() {
    auto list = dedup::kafka::make_partition_list(partitions_);
    for (int p = 0; p < partitions_; ++p) rd_kafka_topic_partition_list_add(list.get(), topic_.c_str(), p);
    if (rd_kafka_committed(handle_.get(), list.get(), 5000) != RD_KAFKA_RESP_ERR_NO_ERROR) return -1;
    std::int64_t sum = 0;
    for (int i = 0; i < list->cnt; ++i) sum += std::max<std::int64_t>(0, list->elems[i].offset);
    return sum;
  }

 private:
  std::string topic_;
  int partitions_;
  dedup::kafka::HandlePtr handle_;
};

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const auto index = static_cast<std::size_t>(p * static_cast<double>(values.size() - 1));
  return values[index];
}

// Produces values [from, to) of `value_of`, all at once; returns seconds until the group's
// committed offsets reach `committed_target`.
template <typename ValueOf>
double burst(LoadProducer& producer, CommittedOffsets& committed, int from, int to,
             std::int64_t committed_target, ValueOf value_of) {
  const auto start = SteadyClock::now();
  for (int i = from; i < to; ++i) producer.send("commands", value_of(i));
  producer.flush();
  while (committed.total() < committed_target) {
    if (SteadyClock::now() - start > 600s) throw std::runtime_error("the worker did not keep up");
    std::this_thread::sleep_for(5ms);
  }
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

// Produces at `rate` per second for `seconds`; returns the latencies the worker reported.
template <typename ValueOf>
std::vector<double> paced(LoadProducer& producer, Recorder& recorder, double rate, double seconds,
                          int first, ValueOf value_of) {
  recorder.take_latencies();
  const std::size_t before = recorder.published();
  const int total = static_cast<int>(rate * seconds);
  const auto start = SteadyClock::now();
  // Ticks of 1 ms, each sending what the schedule owes: a sleep per record would make the load
  // generator burn a core of this 2-core machine and measure itself.
  int sent = 0;
  for (auto tick = start; sent < total; tick += 1ms) {
    std::this_thread::sleep_until(tick);
    const double due = rate * std::chrono::duration<double>(SteadyClock::now() - start).count();
    for (; sent < total && sent < static_cast<int>(due); ++sent) producer.send("commands", value_of(first + sent));
  }
  producer.flush();
  const auto deadline = SteadyClock::now() + 60s;
  while (recorder.published() < before + static_cast<std::size_t>(total) && SteadyClock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
  }
  return recorder.take_latencies();
}

double core_only(const Options& options, const dedup::CommandCatalog& catalog, const std::string& schema,
                 int round_offset, dedup::Status expected, bool fresh) {
  if (fresh) reset_schema(options.db, schema);
  dedup::SystemClock clock;
  dedup::Observer observer;
  dedup::PostgresKeyStore store({.conninfo = options.db, .schema = schema}, catalog);
  dedup::Processor processor(catalog, store, clock, observer, {});
  std::vector<dedup::InboundRecord> records(options.commands);
  for (int i = 0; i < options.commands; ++i) {
    records[i].source = {"commands", i % options.partitions, round_offset + i};
    records[i].value = command_value(i);
  }
  const auto start = SteadyClock::now();
  for (std::size_t offset = 0; offset < records.size(); offset += options.max_batch) {
    const auto size = std::min(options.max_batch, records.size() - offset);
    for (const auto& result : processor.process(std::span(records).subspan(offset, size))) {
      if (result.status != expected) throw std::runtime_error("core: " + result.to_json().dump());
    }
  }
  return options.commands / std::chrono::duration<double>(SteadyClock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) try {
  const auto options = parse_args(argc, argv);
  dedup::configure_logging("warn", "text");  // stderr, and only what matters
  const std::string schema = "bench_worker";
  const std::string core_schema = "bench_worker_core";
  const auto catalog = dedup::CommandCatalog::from_yaml(dedup::bench::todo_catalog_yaml(schema));
  const auto core_catalog = dedup::CommandCatalog::from_yaml(dedup::bench::todo_catalog_yaml(core_schema));

  // Core only, same records, same batch size as the worker's.
  const double core_unique = core_only(options, core_catalog, core_schema, 0, dedup::Status::created, true);
  const double core_duplicate =
      core_only(options, core_catalog, core_schema, options.commands, dedup::Status::duplicate, false);

  // The worker.
  reset_schema(options.db, schema);
  dedup::kafka::MockCluster cluster(1);
  cluster.create_topic("commands", options.partitions);
  // One partition for results: librdkafka's mock answers each partition's ProduceRequest in its
  // own TCP segment without TCP_NODELAY, so a flush that spans several partitions waits 40 ms for
  // the client's delayed ACK (measured: 0.6 ms for 500 results on one partition, 43 ms on four).
  // Real brokers set TCP_NODELAY; the bench measures the worker, not this artifact.
  cluster.create_topic("commands.results", 1);
  cluster.create_topic("commands.dlq", 1);
  const std::string brokers = cluster.bootstraps();

  Recorder recorder;
  dedup::SystemClock clock;
  dedup::PostgresKeyStore store({.conninfo = options.db, .schema = schema}, catalog);
  dedup::Processor processor(catalog, store, clock, recorder, {});
  dedup::WorkerOptions worker_options;
  worker_options.brokers = brokers;
  worker_options.group = "bench-worker";
  worker_options.commands_topic = "commands";
  worker_options.max_batch_records = options.max_batch;
  // The mock holds an empty fetch for the whole fetch.wait.max.ms instead of answering when data
  // arrives (real brokers long-poll): keep it short, as a worker on the dev broker should.
  worker_options.kafka_settings = {{"session.timeout.ms", "6000"},
                                   {"heartbeat.interval.ms", "500"},
                                   {"fetch.wait.max.ms", "5"}};
  dedup::Worker worker(worker_options, processor, recorder);
  std::thread loop([&] { worker.run(); });

  LoadProducer producer(brokers);
  CommittedOffsets committed(brokers, "bench-worker", "commands", options.partitions);
  // Warm-up: the group join (the mock delays the first rebalance) is not throughput.
  producer.send("commands", command_value(-1));
  producer.flush();
  while (committed.total() < 1) std::this_thread::sleep_for(10ms);
  std::int64_t target = 1;

  const int n = options.commands;
  target += n;
  recorder.take_batch_stats();
  const double unique_seconds = burst(producer, committed, 0, n, target, command_value);
  const auto [unique_batches, unique_records, unique_store] = recorder.take_batch_stats();
  target += n;
  const double duplicate_seconds = burst(producer, committed, 0, n, target, command_value);
  const auto [dup_batches, dup_records, dup_store] = recorder.take_batch_stats();
  const double worker_unique = n / unique_seconds;
  const double worker_duplicate = n / duplicate_seconds;

  // Latency at half the maximum rate: new keys, then a duplicate-heavy stream (keys seen before).
  const double half = worker_unique / 2;
  // Values are built before the clock runs: the load generator shares this machine's 2 cores.
  const int paced_total = static_cast<int>(std::max(half, worker_duplicate / 2) * options.latency_seconds) + 1;
  std::vector<std::string> fresh_values(paced_total);
  std::vector<std::string> seen_values(paced_total);
  for (int i = 0; i < paced_total; ++i) {
    fresh_values[i] = command_value(10 * n + i);
    seen_values[i] = command_value(i % n);
  }
  auto fresh = [&](int i) -> const std::string& { return fresh_values[i]; };
  auto seen = [&](int i) -> const std::string& { return seen_values[i]; };
  recorder.take_batch_stats();
  const auto unique_latency = paced(producer, recorder, half, options.latency_seconds, 0, fresh);
  const auto [unique_paced_batches, unique_paced_records, unique_paced_store] = recorder.take_batch_stats();
  const auto duplicate_latency =
      paced(producer, recorder, worker_duplicate / 2, options.latency_seconds, 0, seen);
  const auto [dup_paced_batches, dup_paced_records, dup_paced_store] = recorder.take_batch_stats();

  worker.request_stop();
  loop.join();

  std::cout << fmt::format("worker commands: {}\n", n);
  std::cout << fmt::format("worker partitions: {} (results topic: 1)\n", options.partitions);
  std::cout << "worker broker: librdkafka mock cluster, in process (fetch.wait.max.ms=5)\n";
  std::cout << fmt::format("worker max batch: {}\n", options.max_batch);
  std::cout << fmt::format("core-only unique commands/s: {:.0f}\n", core_unique);
  std::cout << fmt::format("worker unique commands/s: {:.0f}\n", worker_unique);
  std::cout << fmt::format("worker unique ratio: {:.2f}\n", worker_unique / core_unique);
  std::cout << fmt::format("worker unique mean batch: {:.0f}\n", double(unique_records) / unique_batches);
  std::cout << fmt::format("worker unique share in transaction: {:.2f}\n", unique_store / unique_seconds);
  std::cout << fmt::format("core-only duplicate commands/s: {:.0f}\n", core_duplicate);
  std::cout << fmt::format("worker duplicate commands/s: {:.0f}\n", worker_duplicate);
  std::cout << fmt::format("worker duplicate ratio: {:.2f}\n", worker_duplicate / core_duplicate);
  std::cout << fmt::format("worker duplicate mean batch: {:.0f}\n", double(dup_records) / dup_batches);
  std::cout << fmt::format("worker duplicate share in transaction: {:.2f}\n", dup_store / duplicate_seconds);
  std::cout << fmt::format("latency unique rate: {:.0f}\n", half);
  std::cout << fmt::format("latency unique p50 ms: {:.1f}\n", 1000 * percentile(unique_latency, 0.50));
  std::cout << fmt::format("latency unique p99 ms: {:.1f}\n", 1000 * percentile(unique_latency, 0.99));
  std::cout << fmt::format("latency duplicate rate: {:.0f}\n", worker_duplicate / 2);
  std::cout << fmt::format("latency duplicate p50 ms: {:.1f}\n", 1000 * percentile(duplicate_latency, 0.50));
  std::cout << fmt::format("latency duplicate p99 ms: {:.1f}\n", 1000 * percentile(duplicate_latency, 0.99));
  std::cout << fmt::format("latency unique mean batch: {:.0f}\n", double(unique_paced_records) / unique_paced_batches);
  std::cout << fmt::format("latency duplicate mean batch: {:.0f}\n", double(dup_paced_records) / dup_paced_batches);
  std::cout << fmt::format("latency samples: {} {}\n", unique_latency.size(), duplicate_latency.size());
  dedup::bench::exec(options.db, "DROP SCHEMA IF EXISTS " + schema + " CASCADE; DROP SCHEMA IF EXISTS " +
                                     core_schema + " CASCADE");
  return 0;
} catch (const std::exception& e) {
  std::cerr << "dedup_bench_worker: " << e.what() << "\n";
  return 1;
}
