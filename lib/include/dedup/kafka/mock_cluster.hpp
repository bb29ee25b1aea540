// An in-process Kafka cluster for tests and local use: librdkafka's mock cluster.
//
// What the mock of librdkafka 2.0.2 does NOT do, and how we design around it:
// - Listeners bind 127.0.0.1 on random ports only: the bootstrap address is read back
//   (bootstraps()) and handed to clients, never hard-coded; other hosts/containers cannot connect.
// - The CreateTopics admin API is not implemented (the request times out): topics are created
//   through the mock API (create_topic) before clients use them.
// - Transactions are only partly implemented: we use the idempotent producer, not transactions.
// - Each partition keeps about 5 MiB / 100k messages; older ones are dropped silently. Keep test
//   loads small.
// - A group member that dies without leaving (SIGKILL) holds its partitions until its
//   session.timeout.ms expires: tests use short ones (e.g. 6000 ms, heartbeat 500 ms).
// - Retention, compaction, ACLs, TLS and SASL are not implemented.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <iosfwd>
#include <string>
#include <string_view>
#include <vector>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>  // after rdkafka.h, which it requires

#include "dedup/kafka/handles.hpp"

namespace dedup::kafka {

// Kafka protocol request types, for fault injection (the numbers are the protocol's ApiKeys; the
// enum librdkafka has for them is not in its public headers).
enum class ApiKey : std::int16_t {
  produce = 0,
  fetch = 1,
  list_offsets = 2,
  metadata = 3,
  offset_commit = 8,
  offset_fetch = 9,
  find_coordinator = 10,
  join_group = 11,
  heartbeat = 12,
  leave_group = 13,
  sync_group = 14,
  init_producer_id = 22,
};

struct TopicSpec {
  std::string name;
  int partitions = 1;
};

// "name" or "name:partitions". Throws ConfigError(`flag`, ...) for an empty name or a partition
// count that is not a positive integer.
TopicSpec parse_topic_spec(std::string_view text, std::string_view flag = "--topic");

struct MockClusterDeleter {
  void operator()(rd_kafka_mock_cluster_t* p) const noexcept { rd_kafka_mock_cluster_destroy(p); }
};
using MockClusterPtr = std::unique_ptr<rd_kafka_mock_cluster_t, MockClusterDeleter>;

class MockCluster {
 public:
  // Starts `brokers` mock brokers (ids 1..brokers). Throws KafkaError when librdkafka cannot
  // create the cluster (it binds local sockets).
  explicit MockCluster(int brokers = 1);
  ~MockCluster() = default;  // cluster first, then its bookkeeping handle (member order)
  MockCluster(const MockCluster&) = delete;
  MockCluster& operator=(const MockCluster&) = delete;

  // "127.0.0.1:port,..." for bootstrap.servers. Never throws but std::bad_alloc.
  std::string bootstraps() const;

  // Creates a topic with `partitions` partitions. Throws KafkaError if the mock refuses (e.g. the
  // topic exists with another partition count).
  void create_topic(const std::string& name, int partitions, int replication_factor = 1);

  // Fault injection. broker_id -1 means every broker. Each throws KafkaError for an unknown
  // broker id.
  // set_broker_down: disconnects the broker's clients and refuses new connections (leadership
  // does not move, so produce/fetch for its partitions stall until set_broker_up).
  void set_broker_down(std::int32_t broker_id = -1);
  void set_broker_up(std::int32_t broker_id = -1);
  // Delays every response of the broker by `rtt_ms`.
  void set_rtt(std::int32_t broker_id, int rtt_ms);
  // The next errors.size() requests of type `api` (to any broker) fail with these codes, in order.
  // RD_KAFKA_RESP_ERR__TRANSPORT makes the broker drop the connection instead. Never throws.
  void push_request_errors(ApiKey api, const std::vector<rd_kafka_resp_err_t>& errors);
  void clear_request_errors(ApiKey api);

  // For anything the wrapper does not cover. The pointer stays owned by this object.
  rd_kafka_mock_cluster_t* get() const noexcept { return cluster_.get(); }

 private:
  HandlePtr handle_;  // librdkafka needs a client instance for the mock's bookkeeping
  MockClusterPtr cluster_;
};

struct DevBrokerOptions {
  int brokers = 1;
  std::vector<TopicSpec> topics;
  std::filesystem::path bootstrap_file;  // empty: stdout only
};

// The `dev-broker` subcommand: starts a MockCluster, creates the topics, writes the bootstrap
// address to `out` (one line) and to options.bootstrap_file (written to a temporary file in the
// same directory, then renamed, so a reader never sees a partial address), and serves until
// `stop` becomes true (polled every 100 ms). Removes the bootstrap file on the way out.
// Throws KafkaError (cluster or topic creation) and ConfigError("--bootstrap-file", ...) when the
// file cannot be written.
void serve_dev_broker(const DevBrokerOptions& options, std::ostream& out,
                      const std::atomic<bool>& stop);

// serve_dev_broker until SIGTERM or SIGINT, with handlers installed for the duration and the
// previous ones restored afterwards. Returns 0. Throws what serve_dev_broker throws.
int run_dev_broker(const DevBrokerOptions& options);

}  // namespace dedup::kafka
