#include "dedup/kafka/producer.hpp"

#include <spdlog/spdlog.h>

#include <string>
#include <thread>

#include "kafka/client_common.hpp"

namespace dedup::kafka {
namespace {

// librdkafka's message timeout bounds how long send_batch can block when brokers are gone. It is
// kept well below max.poll.interval.ms (300 s by default) so that a batch stuck on an outage fails
// and is retried (serving the consumer group meanwhile) instead of getting the worker evicted.
constexpr const char* kDefaultMessageTimeoutMs = "60000";
// A dead letter carries the original record (up to --max-message-bytes, 1 MiB) plus our headers,
// and a result carries the payload as the entity; librdkafka's default limit (1,000,000 bytes)
// would refuse them. The topics' max.message.bytes must allow this much as well.
constexpr const char* kDefaultMessageMaxBytes = "1114112";  // 1 MiB + 64 KiB
// Between the end of produce() and the wait for reports nothing else is coming; flushing ignores
// linger anyway, this only bounds the cost of a batch that the wait loop does not flush.
constexpr const char* kDefaultLingerMs = "5";
// Results are JSON and compress several-fold: less network and broker disk per result. It also
// matters for the dev broker: librdkafka's mock cluster handles an uncompressed message set
// message by message (45 ms for 500 results, against 3.5 ms compressed, measured).
constexpr const char* kDefaultCompression = "lz4";
constexpr auto kPollSlice = std::chrono::milliseconds(100);
// After a purge every report arrives at once; this only guards against a librdkafka bug.
constexpr auto kPurgeGrace = std::chrono::seconds(30);

void add_header(rd_kafka_headers_t* headers, std::string_view name,
                const std::optional<std::string>& value) {
  // A null header value stays null: the pointer is what tells librdkafka, not the size.
  rd_kafka_header_add(headers, name.data(), static_cast<ssize_t>(name.size()),
                      value ? value->data() : nullptr,
                      value ? static_cast<ssize_t>(value->size()) : 0);
}

}  // namespace

// The reports of one send(). Heap-allocated so that in the impossible case where reports
// never arrive it can be leaked rather than left dangling under librdkafka's feet.
struct Producer::Delivery {
  // Each message's opaque points at its slot, which knows its batch and its index.
  struct Slot {
    Delivery* delivery;
    std::size_t index;
  };
  std::vector<Slot> slots;
  std::size_t total = 0;
  std::size_t pending = 0;
  std::size_t delivered = 0;
  std::size_t failed = 0;
  std::string first_error;
  std::vector<std::size_t> too_large;
  std::chrono::system_clock::time_point last_report{};

  void fail(std::size_t index, rd_kafka_resp_err_t err, std::string_view topic) {
    ++failed;
    if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) too_large.push_back(index);
    if (first_error.empty()) {
      first_error = std::string(rd_kafka_err2name(err)) + ": " + rd_kafka_err2str(err) +
                    " (topic " + std::string(topic) + ")";
    }
  }
};

Producer::Producer(const ProducerOptions& options, Observer& observer) : observer_(observer) {
  const KafkaSettings defaults{
      {config_key::kBootstrapServers, options.brokers},
      {config_key::kClientId, options.client_id},
      {config_key::kMessageTimeoutMs, kDefaultMessageTimeoutMs},
      {config_key::kMessageMaxBytes, kDefaultMessageMaxBytes},
      {config_key::kLingerMs, kDefaultLingerMs},
      {config_key::kCompressionType, kDefaultCompression},
  };
  ConfPtr conf = detail::build_conf(
      defaults, options.settings,
      {{config_key::kEnableIdempotence, "true",
        "without it a retried produce can reorder or duplicate results within a partition"},
       {config_key::kAcks, "all",
        "a result must survive the loss of a broker before offsets move"}});
  rd_kafka_conf_set_opaque(conf.get(), this);
  rd_kafka_conf_set_dr_msg_cb(conf.get(), &Producer::on_delivery);
  rd_kafka_conf_set_error_cb(
      conf.get(), [](rd_kafka_t* rk, int err, const char* reason, void* self) {
        auto* client = static_cast<Producer*>(self);
        if (detail::report_client_error(rk, client->observer_, err, reason)) {
          client->access_error_.note(err, reason);
        }
      });
  handle_ = make_handle(RD_KAFKA_PRODUCER, std::move(conf));
}

Producer::~Producer() {
  if (!flush(std::chrono::seconds(5))) {
    spdlog::warn("kafka producer closed with {} undelivered messages",
                 rd_kafka_outq_len(handle_.get()));
  }
}

void Producer::on_delivery(rd_kafka_t* /*rk*/, const rd_kafka_message_t* message, void* self) {
  const auto* slot = static_cast<const Delivery::Slot*>(message->_private);
  if (slot == nullptr) return;
  Delivery* delivery = slot->delivery;
  --delivery->pending;
  delivery->last_report = std::chrono::system_clock::now();
  if (message->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    ++delivery->delivered;
    return;
  }
  // Not rd_kafka_message_errstr: on a delivery report the payload is the record, not a reason.
  delivery->fail(slot->index, message->err, rd_kafka_topic_name(message->rkt));
  static_cast<Producer*>(self)->observer_.on_kafka_error(rd_kafka_err2name(message->err));
}

Producer::InFlight::InFlight() = default;
Producer::InFlight::InFlight(InFlight&&) noexcept = default;
Producer::InFlight& Producer::InFlight::operator=(InFlight&& other) noexcept {
  if (this != &other) {
    InFlight discarded(std::move(*this));  // waits for its reports, if any
    producer_ = other.producer_;
    delivery_ = std::move(other.delivery_);
  }
  return *this;
}

Producer::InFlight::~InFlight() {
  if (delivery_ != nullptr && producer_ != nullptr) {
    try {
      (void)producer_->wait(*this, std::chrono::steady_clock::now());  // purge, collect reports
    } catch (...) {  // NOLINT(bugprone-empty-catch): a fatal producer error is reported by the loop
    }
  }
}

Producer::InFlight Producer::send(std::span<const OutboundRecord> records) {
  throw_if_fatal();
  InFlight in_flight;
  in_flight.producer_ = this;
  in_flight.delivery_ = std::make_unique<Delivery>();
  Delivery* delivery = in_flight.delivery_.get();
  delivery->total = records.size();
  delivery->slots.reserve(records.size());  // never reallocated: messages point into it
  for (std::size_t i = 0; i < records.size(); ++i) delivery->slots.push_back({delivery, i});
  rd_kafka_t* rk = handle_.get();

  for (std::size_t index = 0; index < records.size(); ++index) {
    const OutboundRecord& record = records[index];
    HeadersPtr headers;
    if (!record.headers.empty()) {
      headers.reset(rd_kafka_headers_new(record.headers.size()));
      for (const RecordHeader& h : record.headers) add_header(headers.get(), h.name, h.value);
    }
    for (;;) {
      // Null key/value: pass no pointer at all; an empty string is a non-null pointer of size 0
      // and stays an empty (not null) key/value on the wire.
      const void* key = record.key ? record.key->data() : nullptr;
      const std::size_t key_size = record.key ? record.key->size() : 0;
      void* value = record.value ? const_cast<char*>(record.value->data()) : nullptr;  // F_COPY
      const std::size_t value_size = record.value ? record.value->size() : 0;
      const rd_kafka_resp_err_t err = rd_kafka_producev(
          rk, RD_KAFKA_V_TOPIC(record.topic.c_str()),
          RD_KAFKA_V_PARTITION(record.partition < 0 ? RD_KAFKA_PARTITION_UA : record.partition),
          RD_KAFKA_V_KEY(key, key_size),
          RD_KAFKA_V_VALUE(value, value_size), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
          RD_KAFKA_V_HEADERS(headers.get()), RD_KAFKA_V_OPAQUE(&delivery->slots[index]), RD_KAFKA_V_END);
      if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        (void)headers.release();  // owned by the message now
        ++delivery->pending;
        break;
      }
      if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        rd_kafka_poll(rk, static_cast<int>(kPollSlice.count()));  // let reports drain the queue
        continue;
      }
      // Refused before queueing (too large, unknown topic, fatal): no report will come.
      delivery->fail(index, err, record.topic);
      observer_.on_kafka_error(rd_kafka_err2name(err));
      break;
    }
  }
  // Serve reports that are due; the records go out after linger.ms (5 ms), while the next batch
  // is in its transaction, or at once when wait() flushes.
  rd_kafka_poll(rk, 0);
  return in_flight;
}

BatchDelivery Producer::wait(InFlight& in_flight, std::chrono::steady_clock::time_point deadline) {
  if (in_flight.delivery_ == nullptr) return {};
  std::unique_ptr<Delivery> delivery = std::move(in_flight.delivery_);
  rd_kafka_t* rk = handle_.get();
  bool purged = false;
  std::chrono::steady_clock::time_point give_up = std::chrono::steady_clock::time_point::max();
  while (delivery->pending > 0) {
    const auto now = std::chrono::steady_clock::now();
    if (!purged && now >= deadline) {
      // Purged messages get a failed report (__PURGE_QUEUE / __PURGE_INFLIGHT) right away.
      rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
      purged = true;
      give_up = now + kPurgeGrace;
    }
    if (now >= give_up) {
      spdlog::critical("kafka producer: {} delivery reports missing after purge",
                       delivery->pending);
      const std::size_t total = delivery->total;
      (void)delivery.release();  // a late report must find live memory
      return {0, total, "delivery reports missing after purge", {}};
    }
    // flush (not poll) so that linger.ms is skipped: the batch is complete, send it now.
    rd_kafka_flush(rk, static_cast<int>(kPollSlice.count()));
  }

  throw_if_fatal();  // a fatal error fails every message; say why, not "N failed"
  return {delivery->delivered, delivery->failed, delivery->first_error,
          std::move(delivery->too_large), delivery->last_report};
}

BatchDelivery Producer::send_batch(std::span<const OutboundRecord> records,
                                   std::chrono::steady_clock::time_point deadline) {
  InFlight in_flight = send(records);
  return wait(in_flight, deadline);
}

std::size_t Producer::max_message_bytes() const {
  char value[32];
  std::size_t size = sizeof value;
  if (rd_kafka_conf_get(rd_kafka_conf(handle_.get()), config_key::kMessageMaxBytes, value, &size) !=
      RD_KAFKA_CONF_OK) {
    throw KafkaError("cannot read message.max.bytes", RD_KAFKA_RESP_ERR__INVALID_ARG);
  }
  return std::stoul(value);
}

void Producer::poll() noexcept { rd_kafka_poll(handle_.get(), 0); }

bool Producer::flush(std::chrono::milliseconds timeout) noexcept {
  return rd_kafka_flush(handle_.get(), static_cast<int>(timeout.count())) ==
         RD_KAFKA_RESP_ERR_NO_ERROR;
}

void Producer::throw_if_fatal() const { kafka::throw_if_fatal(handle_.get()); }

}  // namespace dedup::kafka
