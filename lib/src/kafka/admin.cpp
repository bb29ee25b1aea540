#include "dedup/kafka/admin.hpp"

#include <librdkafka/rdkafka.h>

#include <memory>

#include "dedup/duration.hpp"
#include "dedup/logging.hpp"

namespace dedup::kafka {
namespace {

using ResourcePtr =
    std::unique_ptr<rd_kafka_ConfigResource_t, decltype(&rd_kafka_ConfigResource_destroy)>;
using AdminOptionsPtr =
    std::unique_ptr<rd_kafka_AdminOptions_t, decltype(&rd_kafka_AdminOptions_destroy)>;

}  // namespace

Retention topic_retention(const std::string& brokers, const KafkaSettings& settings,
                          const std::string& topic, std::chrono::milliseconds timeout,
                          const std::stop_token& stop) {
  try {
    KafkaSettings all = settings;
    all["bootstrap.servers"] = brokers;
    // A producer handle is the lightest client that can issue admin requests.
    HandlePtr handle = make_handle(RD_KAFKA_PRODUCER, make_conf(all));
    QueuePtr queue(rd_kafka_queue_new(handle.get()));
    ResourcePtr resource(rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic.c_str()),
                         &rd_kafka_ConfigResource_destroy);
    AdminOptionsPtr options(
        rd_kafka_AdminOptions_new(handle.get(), RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS),
        &rd_kafka_AdminOptions_destroy);
    char error[256];
    rd_kafka_AdminOptions_set_request_timeout(options.get(), static_cast<int>(timeout.count()),
                                              error, sizeof error);
    rd_kafka_ConfigResource_t* resources[] = {resource.get()};
    rd_kafka_DescribeConfigs(handle.get(), resources, 1, options.get(), queue.get());
    EventPtr event;
    const auto deadline = std::chrono::steady_clock::now() + timeout + std::chrono::seconds(1);
    while (!event && !stop.stop_requested() && std::chrono::steady_clock::now() < deadline) {
      event.reset(rd_kafka_queue_poll(queue.get(), 100));  // slices, so a stop is seen quickly
    }
    if (!event || rd_kafka_event_error(event.get())) return {};
    const auto* result = rd_kafka_event_DescribeConfigs_result(event.get());
    if (!result) return {};
    std::size_t resource_count = 0;
    const auto** described = rd_kafka_DescribeConfigs_result_resources(result, &resource_count);
    for (std::size_t r = 0; r < resource_count; ++r) {
      if (rd_kafka_ConfigResource_error(described[r])) return {};
      std::size_t entry_count = 0;
      const auto** entries = rd_kafka_ConfigResource_configs(described[r], &entry_count);
      for (std::size_t e = 0; e < entry_count; ++e) {
        if (std::string_view(rd_kafka_ConfigEntry_name(entries[e])) != "retention.ms") continue;
        const char* value = rd_kafka_ConfigEntry_value(entries[e]);
        if (!value) return {};
        const long long ms = std::stoll(value);
        if (ms < 0) return {.known = true, .value = std::nullopt};
        return {.known = true, .value = std::chrono::milliseconds(ms)};
      }
    }
  } catch (const std::exception&) {
    // An admin question we cannot ask is not a reason to fail: the caller says it cannot tell.
  }
  return {};
}

void warn_if_key_ttl_below_retention(const std::string& brokers, const KafkaSettings& settings,
                                     const std::string& topic, std::chrono::milliseconds key_ttl,
                                     std::chrono::milliseconds timeout, const std::stop_token& stop) {
  const auto retention = topic_retention(brokers, settings, topic, timeout, stop);
  if (stop.stop_requested()) return;
  if (!retention.known) {
    log_event(LogLevel::info,
              "could not read the commands topic's retention.ms: make sure --key-ttl exceeds it "
              "plus the longest redelivery delay",
              {{"topic", topic}, {"key_ttl", format_duration(key_ttl)}});
  } else if (!retention.value) {
    log_event(LogLevel::warn,
              "the commands topic keeps records forever (retention.ms=-1): a record replayed from "
              "further back than --key-ttl would be processed again",
              {{"topic", topic}, {"key_ttl", format_duration(key_ttl)}});
  } else if (*retention.value >= key_ttl) {
    log_event(LogLevel::warn,
              "--key-ttl does not exceed the commands topic's retention: a record redelivered "
              "after its key expired would be processed again",
              {{"topic", topic},
               {"key_ttl", format_duration(key_ttl)},
               {"retention", format_duration(*retention.value)}});
  } else {
    // Said once at start-up, so that an operator (and the real-Kafka test) can see the check ran.
    log_event(LogLevel::info, "--key-ttl exceeds the commands topic's retention",
              {{"topic", topic},
               {"key_ttl", format_duration(key_ttl)},
               {"retention", format_duration(*retention.value)}});
  }
}

}  // namespace dedup::kafka
