// Worker benchmark: the real worker loop (Kafka in, one Postgres transaction per batch, results
// out, offsets committed after acknowledgement) against librdkafka's mock cluster in process, or
// a real Kafka broker (--brokers), and a real Postgres; beside the core-only rate of the same
// records and the raw Postgres limit (bench_support.hpp's raw_statements, at the worker's batch
// size), measured in the same run. Prints one `name: value` line per figure. Usage:
//   dedup_bench_worker --db CONNINFO [--commands 50000] [--partitions 1] [--latency-seconds 8]
//                      [--db-connections 1] [--brokers HOST:PORT --topic NAME --broker-name TEXT]
//                      [--commit-interval 100ms] [-X librdkafka.key=value ...]
// --db-connections N wires the worker as `dedup-worker run --db-connections N` does (worker/
// main.cpp): N lanes, each a Processor over its own PostgresKeyStore, behind dedup::Lanes. With
// N > 1 the raw limit is also measured with N clients at once (each its own connection and share
// of the same statements, timed from the start to the last client's end), printed as
// `raw unique rows/s (N clients)` with ratios `... ratio to raw N-client`. The "mean batch"
// figures count the worker's batches (before the lanes split them); "share in transaction" sums
// the lanes' transaction time, so with N lanes it can reach N.
// With --brokers, the topics NAME (--partitions partitions), NAME.results and NAME.dlq must exist
// (bench/run creates them with scripts/kafka topic); without, the mock gets "commands" with
// --partitions partitions and one-partition results and dead-letter topics.
#include <fmt/format.h>
#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <fstream>
#include <memory>
#include <optional>
#include <span>
#include <tuple>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <pqxx/pqxx>
#include <thread>
#include <vector>

#include "dedup/kafka/handles.hpp"
#include "dedup/kafka/mock_cluster.hpp"
#include "dedup/database_lanes.hpp"
#include "dedup/duration.hpp"
#include "dedup/logging.hpp"
#include "dedup/metrics.hpp"
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
  double latency_rate = 0;  // commands/s of the latency phase; 0: half the rates measured before
  std::size_t max_batch = 500;
  std::size_t db_connections = 1;  // the worker's lanes, as `run --db-connections`
  std::string commit_interval = "100ms";  // as `run --commit-interval`
  std::string brokers;  // empty: librdkafka's mock cluster, in process
  std::string topic = "commands";
  std::string broker_name;
  std::vector<std::string> kafka_settings;  // -X key=value, for the worker's clients
};

void add_flags(CLI::App& app, Options& options) {
  dedup::bench::add_db_flag(app, options.db);
  app.add_option("--commands", options.commands, "records per phase")->capture_default_str();
  app.add_option("--partitions", options.partitions, "partitions of the commands topic")
      ->capture_default_str();
  app.add_option("--latency-seconds", options.latency_seconds, "length of the latency phase")
      ->capture_default_str();
  app.add_option("--latency-rate", options.latency_rate,
                 "commands/s of the latency phase, new keys and duplicates alike (default: half "
                 "the burst and duplicate rates measured before it); a fixed rate compares runs "
                 "whose maximum differs")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--db-connections", options.db_connections,
                 "the worker's database lanes (as run --db-connections); with N > 1, the raw limit "
                 "with N clients too")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--commit-interval", options.commit_interval,
                 "as run --commit-interval: offsets committed at most this often while batches "
                 "keep coming (0ms: after every batch)")
      ->capture_default_str();
  app.add_option("--brokers", options.brokers,
                 "a real Kafka broker (HOST:PORT); without it, librdkafka's mock in process");
  app.add_option("--topic", options.topic, "commands topic on --brokers")->capture_default_str();
  app.add_option("--broker-name", options.broker_name, "how the broker is named in the output");
  app.add_option("-X", options.kafka_settings,
                 "a librdkafka setting for the worker's consumer and producer (key=value), as "
                 "dedup-worker run -X; repeatable, applied last");
}

// One result's end-to-end latency and when the worker reported it.
struct Latency {
  SteadyClock::time_point at;
  double seconds;
};

// Where a record's latency goes before its result is sent: from its timestamp until the worker
// hands it to the processor (producer, broker, fetch, the loop), and processing its batch (parsing,
// the transaction, building results).
struct Stages {
  std::vector<Latency> until_read;
  std::vector<Latency> processing;
};

// Counts published results and keeps their end-to-end latencies. Batches are counted by
// CountedBatches, as the worker hands them over: each lane's Processor reports only its share.
class Recorder final : public dedup::Observer {
 public:
  // A batch the worker handed over at `read_at` (wall clock, to compare with record timestamps;
  // steady, for the phases), processed in `processing_seconds`: counted, and its records' stages
  // kept — each one's wait until it was read, and the processing they shared.
  void on_worker_batch(std::span<const dedup::InboundRecord> records, SteadyClock::time_point read_at,
                       std::chrono::system_clock::time_point read_at_wall, double processing_seconds) {
    const auto now = SteadyClock::now();
    const auto read_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(read_at_wall.time_since_epoch()).count();
    std::lock_guard lock(mutex_);
    if (!first_batch_) first_batch_ = read_at;
    ++batches_;
    batched_records_ += records.size();
    for (const dedup::InboundRecord& record : records) {
      if (!record.timestamp_ms) continue;
      stages_.until_read.push_back({now, static_cast<double>(read_ms - *record.timestamp_ms) / 1000.0});
      stages_.processing.push_back({now, processing_seconds});
    }
  }
  Stages take_stages() {
    std::lock_guard lock(mutex_);
    return std::exchange(stages_, {});
  }
  // When the first batch was handed to the processor (nullopt: none yet).
  std::optional<SteadyClock::time_point> first_batch() {
    std::lock_guard lock(mutex_);
    return first_batch_;
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
    if (seconds >= 0) latencies_.push_back({SteadyClock::now(), seconds});
  }
  std::size_t published() {
    std::lock_guard lock(mutex_);
    return published_;
  }
  std::size_t count(dedup::Status status) {
    std::lock_guard lock(mutex_);
    return by_status_[static_cast<int>(status)];
  }
  std::vector<Latency> take_latencies() {
    std::lock_guard lock(mutex_);
    return std::exchange(latencies_, {});
  }

 private:
  std::mutex mutex_;
  std::size_t published_ = 0;
  std::size_t by_status_[5] = {};
  std::vector<Latency> latencies_;
  std::size_t batches_ = 0;
  std::size_t batched_records_ = 0;
  double store_seconds_ = 0;
  std::optional<SteadyClock::time_point> first_batch_;
  Stages stages_;
};

// The worker's processor (the lanes), counting the batches the worker hands it.
class CountedBatches final : public dedup::BatchProcessor {
 public:
  CountedBatches(dedup::BatchProcessor& inner, Recorder& recorder) : inner_(inner), recorder_(recorder) {}
  std::vector<dedup::CommandResult> process(std::span<const dedup::InboundRecord> records) override {
    const auto read_at_wall = std::chrono::system_clock::now();
    const auto read_at = SteadyClock::now();
    auto results = inner_.process(records);
    recorder_.on_worker_batch(records, read_at, read_at_wall,
                              std::chrono::duration<double>(SteadyClock::now() - read_at).count());
    return results;
  }
  // The worker reads this many batches' worth at once (one per lane): without it, 4 lanes shared
  // one lane's batch, and each transaction got a quarter of --max-batch.
  std::size_t transactions_per_batch() const noexcept override { return inner_.transactions_per_batch(); }

 private:
  dedup::BatchProcessor& inner_;
  Recorder& recorder_;
};

using dedup::bench::reset_schema;

std::string command_value(int i) { return dedup::bench::command_body(i).dump(); }

// One record of the load, keyed by its idempotency key, as a producer that wants a key's
// redeliveries on one partition sends it. Unkeyed, librdkafka's sticky partitioner put a backlog
// produced in one go mostly into one partition (embedded broker, 16 partitions, 100,000 records:
// all but the backlog's first two batches held a single partition), and 4 lanes measured one lane.
struct Load {
  std::string key;
  std::string value;
};

Load command_load(int i) { return {dedup::bench::key_of(i), command_value(i)}; }

// A plain librdkafka producer for the load: what a client application would run.
class LoadProducer {
 public:
  explicit LoadProducer(const std::string& brokers)
      : handle_(dedup::kafka::make_handle(
            RD_KAFKA_PRODUCER, dedup::kafka::make_conf({{"bootstrap.servers", brokers},
                                                        {"linger.ms", "2"},
                                                        {"compression.type", "lz4"},
                                                        {"enable.idempotence", "true"}}))) {}

  void send(const std::string& topic, const Load& load) {
    for (;;) {
      const auto err = rd_kafka_producev(handle_.get(), RD_KAFKA_V_TOPIC(topic.c_str()),
                                         RD_KAFKA_V_KEY(load.key.data(), load.key.size()),
                                         RD_KAFKA_V_VALUE(const_cast<char*>(load.value.data()),
                                                          load.value.size()),
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

// Sum of the group's committed offsets on `topic` (each offset is one record: the load producer
// is idempotent, not transactional, so there are no control records, in the mock or in Kafka).
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

// The p-th percentile of the latencies reported from `from` on.
double percentile(const std::vector<Latency>& latencies, double p,
                  SteadyClock::time_point from = SteadyClock::time_point::min()) {
  std::vector<double> values;
  values.reserve(latencies.size());
  for (const Latency& latency : latencies) {
    if (latency.at >= from) values.push_back(latency.seconds);
  }
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const auto index = static_cast<std::size_t>(p * static_cast<double>(values.size() - 1));
  return values[index];
}

// Waits until `target` results are published and the group's committed offsets reach `target`
// (one result and one offset per record); throws `what` after 600 s from `start`. The broker is
// asked for the committed offsets only once every result is out: asking every 5 ms all along (an
// OffsetFetch each time) would compete for the cores the worker and the broker share with us.
void wait_until_committed(Recorder& recorder, CommittedOffsets& committed, std::int64_t target,
                          SteadyClock::time_point start, const char* what) {
  const auto check_time = [&] {
    if (SteadyClock::now() - start > 600s) throw std::runtime_error(what);
    std::this_thread::sleep_for(5ms);
  };
  while (static_cast<std::int64_t>(recorder.published()) < target) check_time();
  while (committed.total() < target) check_time();
}

// Produces values [from, to) of `value_of`, all at once; returns seconds until `target` results
// are published and committed.
template <typename ValueOf>
double burst(LoadProducer& producer, Recorder& recorder, CommittedOffsets& committed, const std::string& topic,
             int from, int to, std::int64_t target, ValueOf value_of) {
  const auto start = SteadyClock::now();
  for (int i = from; i < to; ++i) producer.send(topic, value_of(i));
  producer.flush();
  wait_until_committed(recorder, committed, target, start, "the worker did not keep up");
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

// The machine's CPU time, all cores, from /proc/stat (ticks): busy (neither idle nor waiting for
// I/O), stolen by the hypervisor, and in all.
struct CpuTicks {
  unsigned long long busy = 0;
  unsigned long long steal = 0;
  unsigned long long total = 0;
};

CpuTicks cpu_ticks() {
  std::ifstream stat("/proc/stat");
  std::string cpu;  // the first line, "cpu": all cores summed
  unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0,
                     steal = 0;
  stat >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  if (!stat || cpu != "cpu") return {};
  const auto busy = user + nice + system + irq + softirq;
  return {busy, steal, busy + steal + idle + iowait};
}

// How busy the machine was between two readings: the share of its cores' time (0 when unknown).
struct BusyShare {
  double busy = 0;
  double steal = 0;
};

BusyShare busy_share(const CpuTicks& from, const CpuTicks& to) {
  if (to.total <= from.total) return {};
  const auto total = static_cast<double>(to.total - from.total);
  return {static_cast<double>(to.busy - from.busy) / total, static_cast<double>(to.steal - from.steal) / total};
}

// What a paced phase measured: the latencies the worker reported, where they went, when the
// phase began, and how busy the machine was meanwhile.
struct PacedPhase {
  std::vector<Latency> latencies;
  Stages stages;
  SteadyClock::time_point start;
  // Worker, broker, Postgres and this load generator share the machine: a phase run close to its
  // cores' limit has a tail that says more about them than about the worker.
  BusyShare machine;
};

// Produces at `rate` per second for `seconds`; returns the latencies the worker reported.
template <typename ValueOf>
PacedPhase paced(LoadProducer& producer, Recorder& recorder, const std::string& topic, double rate,
                          double seconds, int first, ValueOf value_of) {
  recorder.take_latencies();
  recorder.take_stages();
  const std::size_t before = recorder.published();
  const int total = static_cast<int>(rate * seconds);
  const auto start = SteadyClock::now();
  const CpuTicks cpu_at_start = cpu_ticks();
  // Ticks of 1 ms, each sending what the schedule owes: a sleep per record would make the load
  // generator burn a core of this 2-core machine and measure itself.
  int sent = 0;
  for (auto tick = start; sent < total; tick += 1ms) {
    std::this_thread::sleep_until(tick);
    const double due = rate * std::chrono::duration<double>(SteadyClock::now() - start).count();
    for (; sent < total && sent < static_cast<int>(due); ++sent) producer.send(topic, value_of(first + sent));
  }
  producer.flush();
  const auto deadline = SteadyClock::now() + 60s;
  while (recorder.published() < before + static_cast<std::size_t>(total) && SteadyClock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
  }
  return {recorder.take_latencies(), recorder.take_stages(), start, busy_share(cpu_at_start, cpu_ticks())};
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

// Seconds for the clients to run all the statements at once, each client (its own connection, on
// its own thread) a contiguous share of them, one transaction each: from the start to the last
// client's end. One client: on this thread, as before there were several.
double time_raw_clients(const std::vector<std::unique_ptr<pqxx::connection>>& clients,
                        const std::vector<std::string>& statements) {
  const std::size_t n = clients.size();
  if (n == 1) return dedup::bench::time_raw(*clients[0], statements, 0, statements.size());
  std::vector<std::exception_ptr> errors(n);
  const auto start = SteadyClock::now();
  {
    std::vector<std::jthread> threads;
    for (std::size_t c = 0; c < n; ++c) {
      threads.emplace_back([&, c] {
        try {
          dedup::bench::time_raw(*clients[c], statements, statements.size() * c / n,
                                 statements.size() * (c + 1) / n);
        } catch (...) {
          errors[c] = std::current_exception();
        }
      });
    }
  }  // joined
  const double seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
  for (const auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
  return seconds;
}

// The raw Postgres limit for the same rows at the worker's batch size, with `clients` connections
// at once (connected before the clock starts): inserted (unique), then inserted again (duplicate:
// ON CONFLICT DO NOTHING), one transaction per batch.
std::pair<double, double> raw_limit(const Options& options, const std::string& schema, std::size_t clients) {
  reset_schema(options.db, schema);
  std::vector<std::unique_ptr<pqxx::connection>> connections;
  for (std::size_t c = 0; c < clients; ++c) connections.push_back(std::make_unique<pqxx::connection>(options.db));
  const auto statements = dedup::bench::raw_statements(schema, options.commands,
                                                       static_cast<int>(options.max_batch), *connections[0]);
  const double unique = options.commands / time_raw_clients(connections, statements);
  const double duplicate = options.commands / time_raw_clients(connections, statements);
  return {unique, duplicate};
}

void expect(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error(what);
}

}  // namespace

int main(int argc, char** argv) try {
  Options options;
  CLI::App app{"dedup_bench_worker: the worker end to end through Kafka, beside raw Postgres"};
  add_flags(app, options);
  if (const auto done = dedup::bench::parse_command_line(app, argc, argv)) return *done;
  // As `dedup-worker run` logs by default: JSON at info, an audit line per created entity (bench/run
  // sends stderr to a file).
  dedup::configure_logging("info", "json");
  const std::string schema = "bench_worker";
  const std::string core_schema = "bench_worker_core";
  const std::string raw_schema = "bench_worker_raw";
  const auto catalog = dedup::CommandCatalog::from_yaml(dedup::bench::todo_catalog_yaml(schema));
  const auto core_catalog = dedup::CommandCatalog::from_yaml(dedup::bench::todo_catalog_yaml(core_schema));
  const std::string& topic = options.topic;

  // Core only, same records, same batch size as the worker's; then raw Postgres.
  const double core_unique = core_only(options, core_catalog, core_schema, 0, dedup::Status::created, true);
  const double core_duplicate =
      core_only(options, core_catalog, core_schema, options.commands, dedup::Status::duplicate, false);
  const auto [raw_unique, raw_duplicate] = raw_limit(options, raw_schema, 1);
  const std::size_t lanes_count = options.db_connections;
  const auto [raw_unique_n, raw_duplicate_n] =
      lanes_count > 1 ? raw_limit(options, raw_schema, lanes_count) : std::pair{raw_unique, raw_duplicate};

  // The worker.
  reset_schema(options.db, schema);
  std::optional<dedup::kafka::MockCluster> cluster;
  int results_partitions = options.partitions;
  std::string brokers = options.brokers;
  if (brokers.empty()) {
    cluster.emplace(1);
    cluster->create_topic(topic, options.partitions);
    // One partition for results: librdkafka's mock answers each partition's ProduceRequest in its
    // own TCP segment without TCP_NODELAY, so a flush that spans several partitions waits 40 ms
    // for the client's delayed ACK (measured: 0.6 ms for 500 results on one partition, 43 ms on
    // four). Real brokers set TCP_NODELAY; the bench measures the worker, not this artifact.
    results_partitions = 1;
    cluster->create_topic(topic + ".results", results_partitions);
    cluster->create_topic(topic + ".dlq", 1);
    brokers = cluster->bootstraps();
  }

  Recorder recorder;
  // The observers `dedup-worker run` has (metrics, logs) beside the bench's own: their cost per
  // record is the worker's.
  dedup::Metrics metrics(catalog.type_names(), "bench");
  dedup::LoggingObserver logs;
  dedup::FanOutObserver observers({&recorder, &metrics, &logs});
  dedup::SystemClock clock;
  // As worker/main.cpp's run_worker: N lanes, each a processor over its own key store.
  dedup::DatabaseLanes lanes(lanes_count, dedup::PostgresOptions{.conninfo = options.db, .schema = schema},
                             catalog, clock, observers, dedup::ParseOptions{}, options.max_batch,
                             dedup::WorkerOptions{}.max_batch_bytes);
  CountedBatches processor(lanes, recorder);
  dedup::WorkerOptions worker_options;
  worker_options.brokers = brokers;
  worker_options.group = topic + "-bench-worker";
  worker_options.commands_topic = topic;
  worker_options.max_batch_records = options.max_batch;
  worker_options.commit_interval = dedup::parse_duration(options.commit_interval, "--commit-interval");
  worker_options.kafka_settings = {{"session.timeout.ms", "6000"}, {"heartbeat.interval.ms", "500"}};
  for (const std::string& setting : options.kafka_settings) {
    const auto equals = setting.find('=');
    if (equals == std::string::npos || equals == 0) throw std::runtime_error("-X " + setting + ": want key=value");
    worker_options.kafka_settings[setting.substr(0, equals)] = setting.substr(equals + 1);
  }

  LoadProducer producer(brokers);
  CommittedOffsets committed(brokers, worker_options.group, topic, options.partitions);
  const int n = options.commands;

  // Every value of the backlog and the bursts, built before any clock runs: the load generator
  // shares this machine's cores with the worker, and a client's cost is not the worker's.
  std::vector<Load> values(static_cast<std::size_t>(2 * n));
  for (int i = 0; i < 2 * n; ++i) values[i] = command_load(i);
  auto value_of = [&](int i) -> const Load& { return values[i]; };

  // A backlog: n new commands waiting before the worker starts. Drained from the first batch to
  // the last committed offset, so the group join is not counted as throughput (it is printed).
  for (int i = 0; i < n; ++i) producer.send(topic, value_of(i));
  producer.flush();
  dedup::Worker worker(worker_options, processor, observers);
  const auto worker_start = SteadyClock::now();
  std::thread loop([&] { worker.run(); });
  struct StopOnExit {  // also when a check below throws: never destroy a joinable thread
    dedup::Worker& worker;
    std::thread& loop;
    ~StopOnExit() {
      if (loop.joinable()) {
        worker.request_stop();
        loop.join();
      }
    }
  } stop_on_exit{worker, loop};
  std::int64_t target = n;
  wait_until_committed(recorder, committed, target, worker_start, "the worker did not drain the backlog");
  const auto drained = SteadyClock::now();
  const auto first_batch = recorder.first_batch().value_or(worker_start);
  const double join_seconds = std::chrono::duration<double>(first_batch - worker_start).count();
  const double backlog_seconds = std::chrono::duration<double>(drained - first_batch).count();
  const auto [backlog_batches, backlog_records, backlog_store] = recorder.take_batch_stats();
  expect(recorder.published() == static_cast<std::size_t>(n) && recorder.count(dedup::Status::created) ==
                                                                    static_cast<std::size_t>(n),
         fmt::format("backlog: {} results ({} created) for {} commands", recorder.published(),
                     recorder.count(dedup::Status::created), n));

  // Bursts produced while the worker runs (the clock includes producing): n more new commands,
  // then the backlog's n keys again from other records (duplicates).
  target += n;
  const double unique_seconds = burst(producer, recorder, committed, topic, n, 2 * n, target, value_of);
  const auto [unique_batches, unique_records, unique_store] = recorder.take_batch_stats();
  target += n;
  const double duplicate_seconds = burst(producer, recorder, committed, topic, 0, n, target, value_of);
  const auto [dup_batches, dup_records, dup_store] = recorder.take_batch_stats();
  const double worker_backlog = n / backlog_seconds;
  const double worker_unique = n / unique_seconds;
  const double worker_duplicate = n / duplicate_seconds;
  expect(recorder.count(dedup::Status::created) == static_cast<std::size_t>(2 * n) &&
             recorder.count(dedup::Status::duplicate) == static_cast<std::size_t>(n),
         fmt::format("bursts: {} created, {} duplicate; expected {} and {}", recorder.count(dedup::Status::created),
                     recorder.count(dedup::Status::duplicate), 2 * n, n));

  // Latency at half the maximum rate (or --latency-rate): new keys, then a duplicate-heavy stream
  // (keys seen before).
  const double unique_rate = options.latency_rate > 0 ? options.latency_rate : worker_unique / 2;
  const double duplicate_rate = options.latency_rate > 0 ? options.latency_rate : worker_duplicate / 2;
  // Values are built before the clock runs: the load generator shares this machine's 2 cores.
  const int paced_total = static_cast<int>(std::max(unique_rate, duplicate_rate) * options.latency_seconds) + 1;
  std::vector<Load> fresh_values(paced_total);
  std::vector<Load> seen_values(paced_total);
  for (int i = 0; i < paced_total; ++i) {
    fresh_values[i] = command_load(10 * n + i);
    seen_values[i] = command_load(i % n);
  }
  auto fresh = [&](int i) -> const Load& { return fresh_values[i]; };
  auto seen = [&](int i) -> const Load& { return seen_values[i]; };
  recorder.take_batch_stats();
  const auto unique_latency = paced(producer, recorder, topic, unique_rate, options.latency_seconds, 0, fresh);
  const auto [unique_paced_batches, unique_paced_records, unique_paced_store] = recorder.take_batch_stats();
  const auto duplicate_latency =
      paced(producer, recorder, topic, duplicate_rate, options.latency_seconds, 0, seen);
  const auto [dup_paced_batches, dup_paced_records, dup_paced_store] = recorder.take_batch_stats();

  worker.request_stop();
  loop.join();

  std::cout << fmt::format("worker commands: {}\n", n);
  std::cout << fmt::format("worker partitions: {} (results topic: {})\n", options.partitions, results_partitions);
  if (cluster) {
    std::cout << "worker broker: librdkafka mock cluster, in process\n";
  } else {
    std::cout << fmt::format("worker broker: {} at {}\n",
                             options.broker_name.empty() ? "Kafka" : options.broker_name, brokers);
  }
  std::cout << fmt::format("worker max batch: {}\n", options.max_batch);
  std::cout << fmt::format("db connections: {}\n", lanes_count);
  std::cout << fmt::format("worker commit interval: {}\n", options.commit_interval);
  std::cout << fmt::format("raw unique rows/s: {:.0f}\n", raw_unique);
  std::cout << fmt::format("raw duplicate rows/s: {:.0f}\n", raw_duplicate);
  // The N-client figures (N > 1 only), named with their N: `raw unique rows/s (4 clients)`,
  // `worker backlog ratio to raw 4-client`.
  const bool clients = lanes_count > 1;
  const std::string n_clients = fmt::format("({} clients)", lanes_count);
  const std::string to_raw_n = fmt::format("ratio to raw {}-client", lanes_count);
  if (clients) {
    std::cout << fmt::format("raw unique rows/s {}: {:.0f}\n", n_clients, raw_unique_n);
    std::cout << fmt::format("raw duplicate rows/s {}: {:.0f}\n", n_clients, raw_duplicate_n);
  }
  std::cout << fmt::format("worker group join seconds: {:.2f}\n", join_seconds);
  std::cout << fmt::format("worker backlog unique commands/s: {:.0f}\n", worker_backlog);
  std::cout << fmt::format("worker backlog ratio to raw: {:.2f}\n", worker_backlog / raw_unique);
  if (clients) std::cout << fmt::format("worker backlog {}: {:.2f}\n", to_raw_n, worker_backlog / raw_unique_n);
  std::cout << fmt::format("worker backlog mean batch: {:.0f}\n", double(backlog_records) / backlog_batches);
  std::cout << fmt::format("worker backlog share in transaction: {:.2f}\n", backlog_store / backlog_seconds);
  std::cout << fmt::format("core-only unique commands/s: {:.0f}\n", core_unique);
  std::cout << fmt::format("worker unique commands/s: {:.0f}\n", worker_unique);
  std::cout << fmt::format("worker unique ratio: {:.2f}\n", worker_unique / core_unique);
  std::cout << fmt::format("worker unique ratio to raw: {:.2f}\n", worker_unique / raw_unique);
  if (clients) std::cout << fmt::format("worker unique {}: {:.2f}\n", to_raw_n, worker_unique / raw_unique_n);
  std::cout << fmt::format("worker unique mean batch: {:.0f}\n", double(unique_records) / unique_batches);
  std::cout << fmt::format("worker unique share in transaction: {:.2f}\n", unique_store / unique_seconds);
  std::cout << fmt::format("core-only duplicate commands/s: {:.0f}\n", core_duplicate);
  std::cout << fmt::format("worker duplicate commands/s: {:.0f}\n", worker_duplicate);
  std::cout << fmt::format("worker duplicate ratio: {:.2f}\n", worker_duplicate / core_duplicate);
  std::cout << fmt::format("worker duplicate ratio to raw: {:.2f}\n", worker_duplicate / raw_duplicate);
  if (clients) {
    std::cout << fmt::format("worker duplicate {}: {:.2f}\n", to_raw_n, worker_duplicate / raw_duplicate_n);
  }
  std::cout << fmt::format("worker duplicate mean batch: {:.0f}\n", double(dup_records) / dup_batches);
  std::cout << fmt::format("worker duplicate share in transaction: {:.2f}\n", dup_store / duplicate_seconds);
  std::cout << fmt::format("latency unique rate: {:.0f}\n", unique_rate);
  // The whole phase is the figure; the same after its first second shows how much of the tail is
  // the worker settling at the new rate (the phase starts after seconds of idleness).
  const auto steady = [](const PacedPhase& phase) { return phase.start + 1s; };
  std::cout << fmt::format("latency unique p50 ms: {:.1f}\n", 1000 * percentile(unique_latency.latencies, 0.50));
  std::cout << fmt::format("latency unique p99 ms: {:.1f}\n", 1000 * percentile(unique_latency.latencies, 0.99));
  std::cout << fmt::format("latency unique p99 ms after the first second: {:.1f}\n",
                           1000 * percentile(unique_latency.latencies, 0.99, steady(unique_latency)));
  std::cout << fmt::format("latency duplicate rate: {:.0f}\n", duplicate_rate);
  std::cout << fmt::format("latency duplicate p50 ms: {:.1f}\n", 1000 * percentile(duplicate_latency.latencies, 0.50));
  std::cout << fmt::format("latency duplicate p99 ms: {:.1f}\n", 1000 * percentile(duplicate_latency.latencies, 0.99));
  std::cout << fmt::format("latency duplicate p99 ms after the first second: {:.1f}\n",
                           1000 * percentile(duplicate_latency.latencies, 0.99, steady(duplicate_latency)));
  // Where the tail goes (after the first second): until the worker read the record, and processing
  // its batch; the rest of the end-to-end figure is publishing the result and waiting for the
  // batch before it.
  for (const auto& [name, phase] : {std::pair{"unique", &unique_latency}, std::pair{"duplicate", &duplicate_latency}}) {
    std::cout << fmt::format("latency {} p50/p99 ms until read: {:.1f} / {:.1f}\n", name,
                             1000 * percentile(phase->stages.until_read, 0.50, steady(*phase)),
                             1000 * percentile(phase->stages.until_read, 0.99, steady(*phase)));
    std::cout << fmt::format("latency {} p50/p99 ms processing: {:.1f} / {:.1f}\n", name,
                             1000 * percentile(phase->stages.processing, 0.50, steady(*phase)),
                             1000 * percentile(phase->stages.processing, 0.99, steady(*phase)));
    std::cout << fmt::format("latency {} machine busy share: {:.2f} (stolen {:.2f})\n", name,
                             phase->machine.busy, phase->machine.steal);
  }
  std::cout << fmt::format("latency unique mean batch: {:.0f}\n", double(unique_paced_records) / unique_paced_batches);
  std::cout << fmt::format("latency duplicate mean batch: {:.0f}\n", double(dup_paced_records) / dup_paced_batches);
  std::cout << fmt::format("latency samples: {} {}\n", unique_latency.latencies.size(),
                           duplicate_latency.latencies.size());
  dedup::bench::exec(options.db, "DROP SCHEMA IF EXISTS " + schema + " CASCADE; DROP SCHEMA IF EXISTS " +
                                     core_schema + " CASCADE; DROP SCHEMA IF EXISTS " + raw_schema + " CASCADE");
  return 0;
} catch (const std::exception& e) {
  std::cerr << "dedup_bench_worker: " << e.what() << "\n";
  return 1;
}
