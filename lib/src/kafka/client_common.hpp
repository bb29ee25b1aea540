// Private helpers shared by the consumer and the producer.
#pragma once

#include <string>
#include <string_view>

#include "dedup/kafka/handles.hpp"
#include "dedup/observer.hpp"

namespace dedup::kafka::detail {

// Routes librdkafka's log lines (emitted from its own threads) to spdlog, at the matching level.
void install_log_callback(rd_kafka_conf_t* conf);

// The current value of `key` in librdkafka's own spelling (e.g. acks=all reads back as "-1"), or
// "" when it cannot be read (a topic-level property before any topic property was set).
std::string read_conf(const rd_kafka_conf_t* conf, const char* key);

// A new conf: `defaults`, then the user's `settings`, then the `forced` ones, which carry the
// delivery guarantees. Throws ConfigError("-X <key>", ...) for a bad setting or a user setting
// that changes a forced property (under any alias) to another value.
struct Forced {
  const char* key;
  const char* value;
  const char* why;
};
ConfPtr build_conf(const KafkaSettings& defaults, const KafkaSettings& settings,
                   std::initializer_list<Forced> forced);

// Authentication, TLS and authorization errors (a wrong password, an untrusted CA, a missing ACL):
// librdkafka retries them forever, but retrying does not cure them.
bool is_access_error(rd_kafka_resp_err_t code) noexcept;

// Logs and reports an error raised by librdkafka's error callback; returns is_access_error().
// Fatal errors are only logged here; the worker loop sees them through throw_if_fatal and stops.
bool report_client_error(rd_kafka_t* rk, Observer& observer, int err, const char* reason) noexcept;

}  // namespace dedup::kafka::detail
