#include "dedup/kafka/handles.hpp"

#include <array>
#include <new>

namespace dedup::kafka {

void set_conf(rd_kafka_conf_t* conf, std::string_view key, std::string_view value) {
  std::array<char, 512> errstr{};
  const std::string key_text(key);
  const std::string value_text(value);
  if (rd_kafka_conf_set(conf, key_text.c_str(), value_text.c_str(), errstr.data(), errstr.size()) !=
      RD_KAFKA_CONF_OK) {
    throw ConfigError("-X " + key_text, errstr.data());
  }
}

ConfPtr make_conf(const KafkaSettings& settings) {
  ConfPtr conf(rd_kafka_conf_new());
  if (!conf) throw std::bad_alloc();
  for (const auto& [key, value] : settings) set_conf(conf.get(), key, value);
  return conf;
}

HandlePtr make_handle(rd_kafka_type_t type, ConfPtr conf) {
  std::array<char, 512> errstr{};
  HandlePtr handle(rd_kafka_new(type, conf.get(), errstr.data(), errstr.size()));
  if (!handle) throw ConfigError("-X", errstr.data());  // conf is still ours: ConfPtr frees it
  (void)conf.release();                                 // now owned by the handle
  return handle;
}

TopicPartitionListPtr make_partition_list(int size) {
  TopicPartitionListPtr list(rd_kafka_topic_partition_list_new(size));
  if (!list) throw std::bad_alloc();
  return list;
}

std::optional<std::vector<std::string>> list_topics(rd_kafka_t* rk,
                                                    std::chrono::milliseconds timeout) {
  const rd_kafka_metadata_t* raw = nullptr;
  if (rd_kafka_metadata(rk, /*all_topics=*/1, nullptr, &raw, static_cast<int>(timeout.count())) !=
      RD_KAFKA_RESP_ERR_NO_ERROR) {
    return std::nullopt;
  }
  MetadataPtr metadata(raw);
  std::vector<std::string> names;
  for (int i = 0; i < metadata->topic_cnt; ++i) {
    if (metadata->topics[i].err == RD_KAFKA_RESP_ERR_NO_ERROR)
      names.emplace_back(metadata->topics[i].topic);
  }
  return names;
}

void throw_if_fatal(rd_kafka_t* rk) {
  std::array<char, 512> errstr{};
  const rd_kafka_resp_err_t err = rd_kafka_fatal_error(rk, errstr.data(), errstr.size());
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    throw KafkaError(std::string("fatal error on ") + rd_kafka_name(rk) + ": " + errstr.data(), err,
                     /*fatal=*/true);
  }
}

void AccessError::note(int err, const char* reason) {
  if (!message_.empty()) return;  // the first one says what is wrong
  message_ = std::string(rd_kafka_err2name(static_cast<rd_kafka_resp_err_t>(err))) + ": " +
             (reason ? reason : "");
}

}  // namespace dedup::kafka
