#include "kafka/client_common.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

namespace dedup::kafka::detail {
namespace {

// librdkafka uses syslog levels (0 emerg .. 7 debug).
spdlog::level::level_enum to_spdlog(int syslog_level) {
  if (syslog_level <= 3) return spdlog::level::err;
  if (syslog_level == 4) return spdlog::level::warn;
  if (syslog_level <= 6) return spdlog::level::info;
  return spdlog::level::debug;
}

void log_line(const rd_kafka_t* rk, int level, const char* facility, const char* message) {
  // -X settings go to both clients, so "consumer property ignored by this producer" (and the
  // reverse) is expected, not worth a warning.
  if (std::strcmp(facility, "CONFWARN") == 0 &&
      std::strstr(message, "will be ignored by") != nullptr) {
    level = 7;
  }
  spdlog::log(to_spdlog(level), "librdkafka {} [{}]: {}", rk ? rd_kafka_name(rk) : "-", facility,
              message);
}

}  // namespace

void install_log_callback(rd_kafka_conf_t* conf) { rd_kafka_conf_set_log_cb(conf, &log_line); }

std::string read_conf(const rd_kafka_conf_t* conf, const char* key) {
  std::size_t size = 0;  // asked first: a value has no length limit
  if (rd_kafka_conf_get(conf, key, nullptr, &size) != RD_KAFKA_CONF_OK || size == 0) return {};
  std::string value(size, '\0');
  if (rd_kafka_conf_get(conf, key, value.data(), &size) != RD_KAFKA_CONF_OK) return {};
  value.resize(std::min(size, value.size()) - 1);  // the size counts the terminating NUL
  return value;
}

ConfPtr build_conf(const KafkaSettings& defaults, const KafkaSettings& settings,
                   std::initializer_list<Forced> forced) {
  // Order matters: our defaults, then the user's -X (so that a user setting wins even when it is
  // spelled through an alias, e.g. delivery.timeout.ms for message.timeout.ms), then the forced
  // guarantees. A forced property changed by the user, under any alias, to another value is an
  // error rather than silently overridden.
  ConfPtr conf = make_conf(defaults);
  std::vector<std::string> before;
  for (const Forced& f : forced) before.push_back(read_conf(conf.get(), f.key));
  for (const auto& [key, value] : settings) set_conf(conf.get(), key, value);
  std::size_t i = 0;
  for (const Forced& f : forced) {
    const std::string after_user = read_conf(conf.get(), f.key);
    set_conf(conf.get(), f.key, f.value);
    const std::string canonical = read_conf(conf.get(), f.key);
    const bool touched = find_setting(settings, f.key) != nullptr || after_user != before[i++];
    if (touched && after_user != canonical) {
      throw ConfigError(std::string("-X ") + f.key,
                        std::string("must be ") + f.value + ": " + f.why);
    }
  }
  install_log_callback(conf.get());
  return conf;
}

bool is_access_error(rd_kafka_resp_err_t code) noexcept {
  switch (code) {
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR__SSL:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
      return true;
    default:
      return false;
  }
}

bool report_client_error(rd_kafka_t* rk, Observer& observer, int err, const char* reason) noexcept {
  try {
    const auto code = static_cast<rd_kafka_resp_err_t>(err);
    // Transport errors (broker restarted, idle connection closed) are routine and librdkafka
    // reconnects by itself; they are counted but logged quietly.
    const bool routine =
        code == RD_KAFKA_RESP_ERR__TRANSPORT || code == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN;
    // librdkafka logs the same event through the log callback; routine ones are only counted.
    spdlog::log(routine ? spdlog::level::debug : spdlog::level::warn, "kafka {}: {}: {}",
                rd_kafka_name(rk), rd_kafka_err2name(code), reason);
    observer.on_kafka_error(rd_kafka_err2name(code));
    return is_access_error(code);
  } catch (...) {
    // Called from librdkafka; nothing may escape.
  }
  return false;
}

}  // namespace dedup::kafka::detail
