// Questions the worker asks Kafka's admin API at start-up.
#pragma once

#include <chrono>
#include <optional>
#include <stop_token>
#include <string>

#include "dedup/kafka/handles.hpp"

namespace dedup::kafka {

// The topic's retention.ms (nullopt: infinite, or the broker did not answer within `timeout`, as
// librdkafka's mock cluster never does). Never throws but std::bad_alloc.
struct Retention {
  bool known = false;                              // the broker answered
  std::optional<std::chrono::milliseconds> value;  // nullopt with known: retention.ms = -1
};
// Returns early (unknown) when `stop` is requested.
Retention topic_retention(const std::string& brokers, const KafkaSettings& settings,
                          const std::string& topic, std::chrono::milliseconds timeout,
                          const std::stop_token& stop = {});

// SPEC §4: keys must outlive every redelivery, so the key TTL must exceed the commands topic's
// retention. Logs a warning when it can tell otherwise, and says so when it cannot tell. Blocks
// up to `timeout` or until `stop` is requested; run it off the hot path. Never throws.
void warn_if_key_ttl_below_retention(const std::string& brokers, const KafkaSettings& settings,
                                     const std::string& topic, std::chrono::milliseconds key_ttl,
                                     std::chrono::milliseconds timeout, const std::stop_token& stop = {});

}  // namespace dedup::kafka
