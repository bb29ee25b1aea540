// The librdkafka properties a worker is configured with, as plain strings: what the worker's
// options carry, without librdkafka's headers (dedup/kafka/handles.hpp applies them).
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>

namespace dedup::kafka {

// librdkafka configuration keys we set. Anything else reaches librdkafka only through the
// user's `-X key=value` passthrough (TLS, SASL, tuning).
namespace config_key {
inline constexpr const char* kBootstrapServers = "bootstrap.servers";
inline constexpr const char* kClientId = "client.id";
inline constexpr const char* kGroupId = "group.id";
inline constexpr const char* kEnableAutoCommit = "enable.auto.commit";
inline constexpr const char* kEnableAutoOffsetStore = "enable.auto.offset.store";
inline constexpr const char* kAutoOffsetReset = "auto.offset.reset";
inline constexpr const char* kFetchMinBytes = "fetch.min.bytes";
inline constexpr const char* kFetchWaitMaxMs = "fetch.wait.max.ms";
inline constexpr const char* kEnableIdempotence = "enable.idempotence";
inline constexpr const char* kAcks = "acks";
inline constexpr const char* kMessageTimeoutMs = "message.timeout.ms";
inline constexpr const char* kMessageMaxBytes = "message.max.bytes";
inline constexpr const char* kLingerMs = "linger.ms";
inline constexpr const char* kCompressionType = "compression.type";
inline constexpr const char* kSessionTimeoutMs = "session.timeout.ms";
inline constexpr const char* kHeartbeatIntervalMs = "heartbeat.interval.ms";
inline constexpr const char* kMaxPollIntervalMs = "max.poll.interval.ms";
inline constexpr const char* kPartitionAssignmentStrategy = "partition.assignment.strategy";
inline constexpr const char* kLogConnectionClose = "log.connection.close";
}  // namespace config_key

// librdkafka properties as `-X key=value` gives them. Ordered so that applying them is
// deterministic and error messages come in a stable order.
using KafkaSettings = std::map<std::string, std::string, std::less<>>;

// The value of `key` in `settings`, or nullptr.
const std::string* find_setting(const KafkaSettings& settings, std::string_view key);

// librdkafka properties from the environment, for secrets that must not appear in a process's
// arguments: DEDUP_KAFKA_SASL_PASSWORD=... is sasl.password=... (after the prefix: lower case,
// '_' -> '.'; librdkafka's property names contain no '_', so the mapping is exact). `environment`
// is a null-terminated array of "NAME=value" strings, as `environ`. Never throws but bad_alloc.
inline constexpr std::string_view kKafkaEnvPrefix = "DEDUP_KAFKA_";
KafkaSettings settings_from_environment(const char* const* environment);

}  // namespace dedup::kafka
