#include "dedup/kafka/mock_cluster.hpp"

#include <unistd.h>

#include <charconv>
#include <fstream>
#include <iostream>
#include <thread>

#include "dedup/stop_signals.hpp"
#include "kafka/client_common.hpp"

namespace dedup::kafka {
namespace {

void check(rd_kafka_resp_err_t err, const std::string& what) {
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) throw KafkaError(what, err);
}

// Write to a temporary file beside the target, then rename: rename(2) within one directory is
// atomic, so a reader polling for the file sees either nothing or the whole address.
void write_atomically(const std::filesystem::path& path, const std::string& content) {
  const std::filesystem::path temp =
      path.parent_path() / (path.filename().string() + ".tmp." + std::to_string(::getpid()));
  {
    std::ofstream file(temp, std::ios::trunc);
    file << content;
    file.flush();
    if (!file) throw ConfigError("--bootstrap-file", "cannot write " + temp.string());
  }
  std::error_code ec;
  std::filesystem::rename(temp, path, ec);
  if (ec) {
    std::filesystem::remove(temp, ec);
    throw ConfigError("--bootstrap-file", "cannot create " + path.string() + ": " + ec.message());
  }
}

}  // namespace

TopicSpec parse_topic_spec(std::string_view text, std::string_view flag) {
  TopicSpec spec;
  const auto colon = text.rfind(':');
  spec.name = std::string(text.substr(0, colon));
  if (spec.name.empty())
    throw ConfigError(std::string(flag), "empty topic name in '" + std::string(text) + "'");
  if (colon != std::string_view::npos) {
    const std::string_view count = text.substr(colon + 1);
    const auto [end, ec] =
        std::from_chars(count.data(), count.data() + count.size(), spec.partitions);
    if (ec != std::errc() || end != count.data() + count.size() || spec.partitions < 1) {
      throw ConfigError(std::string(flag), "partition count of '" + std::string(text) +
                                               "' must be a positive integer");
    }
  }
  return spec;
}

MockCluster::MockCluster(int brokers) {
  // This handle only keeps the mock's books and never connects: without bootstrap.servers it
  // would warn about that, so only errors are logged.
  ConfPtr conf = make_conf({{"log_level", "3"}});
  detail::install_log_callback(conf.get());
  handle_ = make_handle(RD_KAFKA_PRODUCER, std::move(conf));
  cluster_.reset(rd_kafka_mock_cluster_new(handle_.get(), brokers));
  if (!cluster_) throw KafkaError("cannot create the mock cluster", RD_KAFKA_RESP_ERR__FAIL);
}

std::string MockCluster::bootstraps() const {
  return rd_kafka_mock_cluster_bootstraps(cluster_.get());
}

void MockCluster::create_topic(const std::string& name, int partitions, int replication_factor) {
  check(rd_kafka_mock_topic_create(cluster_.get(), name.c_str(), partitions, replication_factor),
        "cannot create mock topic " + name);
}

void MockCluster::set_broker_down(std::int32_t broker_id) {
  check(rd_kafka_mock_broker_set_down(cluster_.get(), broker_id), "mock broker down");
}

void MockCluster::set_broker_up(std::int32_t broker_id) {
  check(rd_kafka_mock_broker_set_up(cluster_.get(), broker_id), "mock broker up");
}

void MockCluster::set_rtt(std::int32_t broker_id, int rtt_ms) {
  check(rd_kafka_mock_broker_set_rtt(cluster_.get(), broker_id, rtt_ms), "mock broker rtt");
}

void MockCluster::push_request_errors(ApiKey api, const std::vector<rd_kafka_resp_err_t>& errors) {
  rd_kafka_mock_push_request_errors_array(cluster_.get(), static_cast<std::int16_t>(api),
                                          errors.size(), errors.data());
}

void MockCluster::clear_request_errors(ApiKey api) {
  rd_kafka_mock_clear_request_errors(cluster_.get(), static_cast<std::int16_t>(api));
}

void serve_dev_broker(const DevBrokerOptions& options, std::ostream& out,
                      const std::atomic<bool>& stop) {
  MockCluster cluster(options.brokers);
  for (const TopicSpec& topic : options.topics) cluster.create_topic(topic.name, topic.partitions);
  const std::string address = cluster.bootstraps();
  if (!options.bootstrap_file.empty()) write_atomically(options.bootstrap_file, address + "\n");
  out << address << std::endl;  // flushed: a parent process reads it through a pipe
  while (!stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  if (!options.bootstrap_file.empty()) {
    std::error_code ignored;  // a stale file would point the next reader at a dead port
    std::filesystem::remove(options.bootstrap_file, ignored);
  }
}

int run_dev_broker(const DevBrokerOptions& options) {
  StopFlag stop;
  const StopSignals signals(stop);
  serve_dev_broker(options, std::cout, stop.flag());
  return 0;
}

}  // namespace dedup::kafka
