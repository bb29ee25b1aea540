// RAII for every librdkafka handle we use, the configuration keys we set, and the Kafka exception
// type: the one place where librdkafka's C resource rules are encoded (as modern-cpp-kafka's
// RdKafkaHelper.h does). Everything else holds these smart pointers and never calls a destroy
// function itself.
#pragma once

#include <librdkafka/rdkafka.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dedup/errors.hpp"
#include "dedup/kafka/settings.hpp"

namespace dedup::kafka {

// One deleter per handle type, one line each. Destroying a consumer handle does not close the
// consumer: Consumer::close() does that first (through rd_kafka_consumer_close_queue, with a
// deadline), because closing can block and must happen at a point the worker chooses.
struct HandleDeleter {
  void operator()(rd_kafka_t* p) const noexcept { rd_kafka_destroy(p); }
};
struct ConfDeleter {
  void operator()(rd_kafka_conf_t* p) const noexcept { rd_kafka_conf_destroy(p); }
};
struct TopicPartitionListDeleter {
  void operator()(rd_kafka_topic_partition_list_t* p) const noexcept {
    rd_kafka_topic_partition_list_destroy(p);
  }
};
struct MessageDeleter {
  void operator()(rd_kafka_message_t* p) const noexcept { rd_kafka_message_destroy(p); }
};
struct HeadersDeleter {
  void operator()(rd_kafka_headers_t* p) const noexcept { rd_kafka_headers_destroy(p); }
};
struct ErrorDeleter {
  void operator()(rd_kafka_error_t* p) const noexcept { rd_kafka_error_destroy(p); }
};
struct TopicDeleter {
  void operator()(rd_kafka_topic_t* p) const noexcept { rd_kafka_topic_destroy(p); }
};
struct MetadataDeleter {
  void operator()(const rd_kafka_metadata_t* p) const noexcept { rd_kafka_metadata_destroy(p); }
};
struct QueueDeleter {
  void operator()(rd_kafka_queue_t* p) const noexcept { rd_kafka_queue_destroy(p); }
};
struct EventDeleter {
  void operator()(rd_kafka_event_t* p) const noexcept { rd_kafka_event_destroy(p); }
};

using HandlePtr = std::unique_ptr<rd_kafka_t, HandleDeleter>;
using ConfPtr = std::unique_ptr<rd_kafka_conf_t, ConfDeleter>;
using TopicPartitionListPtr =
    std::unique_ptr<rd_kafka_topic_partition_list_t, TopicPartitionListDeleter>;
using MessagePtr = std::unique_ptr<rd_kafka_message_t, MessageDeleter>;
using HeadersPtr = std::unique_ptr<rd_kafka_headers_t, HeadersDeleter>;
using ErrorPtr = std::unique_ptr<rd_kafka_error_t, ErrorDeleter>;
using TopicPtr = std::unique_ptr<rd_kafka_topic_t, TopicDeleter>;
using MetadataPtr = std::unique_ptr<const rd_kafka_metadata_t, MetadataDeleter>;
using QueuePtr = std::unique_ptr<rd_kafka_queue_t, QueueDeleter>;
using EventPtr = std::unique_ptr<rd_kafka_event_t, EventDeleter>;

// A Kafka failure the caller cannot treat as business as usual: a handle that cannot be created,
// a fatal error raised by librdkafka (producer fenced, idempotence guarantee broken), a subscribe
// that is refused. Per-message delivery failures and failed commits are values, not this.
// The first access error (authentication, TLS, authorization) a client reported, for the worker
// to stop on when it never got going (kafka::Consumer::access_error).
class AccessError {
 public:
  void note(int err, const char* reason);
  const std::string& message() const noexcept { return message_; }

 private:
  std::string message_;
};

class KafkaError : public Error {
 public:
  KafkaError(const std::string& what, rd_kafka_resp_err_t code, bool fatal = false)
      : Error(what + " (" + rd_kafka_err2name(code) + ")"), code_(code), fatal_(fatal) {}
  rd_kafka_resp_err_t code() const noexcept { return code_; }
  // True for rd_kafka_fatal_error(): the handle is unusable and the worker must stop.
  bool fatal() const noexcept { return fatal_; }

 private:
  rd_kafka_resp_err_t code_;
  bool fatal_;
};

// A new configuration object with `settings` applied in order. Throws ConfigError("-X <key>",
// librdkafka's message) for an unknown key or a bad value.
ConfPtr make_conf(const KafkaSettings& settings);

// Sets one property. Throws ConfigError("-X <key>", ...) when librdkafka refuses it.
void set_conf(rd_kafka_conf_t* conf, std::string_view key, std::string_view value);

// Creates a client handle; takes ownership of `conf` only on success (librdkafka's rule, hidden
// here). Throws ConfigError("-X", ...) when librdkafka rejects the configuration as a whole
// (e.g. an inconsistent security setup).
HandlePtr make_handle(rd_kafka_type_t type, ConfPtr conf);

// A partition list with capacity for `size` entries (never null; throws std::bad_alloc).
TopicPartitionListPtr make_partition_list(int size);

// The names of the cluster's topics, or nullopt when the brokers did not answer within `timeout`.
// Asks for all topics (never for one by name, which can auto-create it on some brokers).
// Throws only std::bad_alloc.
std::optional<std::vector<std::string>> list_topics(rd_kafka_t* rk,
                                                    std::chrono::milliseconds timeout);

// Throws KafkaError(fatal = true) if librdkafka raised a fatal error on `rk`.
void throw_if_fatal(rd_kafka_t* rk);

}  // namespace dedup::kafka
