// A worker process for the crash tests: a real Worker (real Processor, real librdkafka) over an
// in-memory key store. The test arms DEDUP_FAILPOINT so that this process SIGKILLs itself at the
// chosen point, then checks what a successor worker finds.
//   kafka_worker_child <brokers> <group> <commands-topic> <max-batch-records> <commit-interval-ms>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <iostream>

#include "dedup/processor.hpp"
#include "dedup/worker.hpp"
#include "support/kafka_test_util.hpp"

int main(int argc, char** argv) {
  if (argc != 6) {
    std::cerr << "usage: kafka_worker_child <brokers> <group> <commands-topic> <max-batch> "
                 "<commit-interval-ms>\n";
    return 2;
  }
  try {
    dedup::test::FakeKeyStore store;
    dedup::SystemClock clock;
    dedup::Observer observer;
    dedup::Processor processor(dedup::test::test_catalog(), store, clock, observer, {});
    dedup::WorkerOptions options;
    options.brokers = argv[1];
    options.group = argv[2];
    options.commands_topic = argv[3];
    options.max_batch_records = static_cast<std::size_t>(std::atoi(argv[4]));
    options.commit_interval = std::chrono::milliseconds(std::atoi(argv[5]));
    options.kafka_settings = dedup::test::fast_group_settings();
    options.failpoint = dedup::failpoint_from_environment();
    // This process is going to die without leaving the group: the shorter its session, the
    // sooner the successor gets the partition.
    options.kafka_settings["session.timeout.ms"] = "3000";
    options.kafka_settings["heartbeat.interval.ms"] = "300";
    dedup::Worker worker(options, processor, observer);
    dedup::StopSignals signals(worker);
    return worker.run();
  } catch (const std::exception& e) {
    std::cerr << "kafka_worker_child: " << e.what() << "\n";
    return 2;
  }
}
