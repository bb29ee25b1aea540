#include "dedup/logging.hpp"
#include "dedup/json_text.hpp"

#include <fmt/format.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <functional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "dedup/errors.hpp"
#include "stderr_sink.hpp"

namespace dedup {
namespace {

using json = nlohmann::json;

// The fields of the line log_event() is writing on this thread, as one dumped JSON object. They
// travel beside the message rather than inside it, so no text that a plain spdlog call logs can
// pass for fields; plain spdlog calls elsewhere in the process still format, without fields. This
// needs the logger to format on the caller's thread, within log_event's call: it is synchronous
// (configure_logging), and the audit line of a created entity must be out before its offset is
// committed anyway (held lines are written by flush_logs(), before the commit).
thread_local const std::string* t_fields = nullptr;

Timestamp timestamp_of(spdlog::log_clock::time_point time) {
  return std::chrono::time_point_cast<std::chrono::microseconds>(time);
}

// What the text format reads back: fields written by write_json from values no deeper than they
// were parsed (rows Postgres returns: up to 512 levels), plus the fields object's own.
constexpr JsonParseLimits kFieldsLimits{.max_depth = 1024};

class StructuredFormatter final : public spdlog::formatter {
 public:
  explicit StructuredFormatter(bool as_json) : as_json_(as_json) {}

  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const std::string_view message(msg.payload.data(), msg.payload.size());
    const std::string_view fields = t_fields != nullptr ? *t_fields : std::string_view();
    const auto level = spdlog::level::to_string_view(msg.level);
    const std::string_view level_name(level.data(), level.size());
    std::string line;
    if (as_json_) {
      // Written out rather than built as a json object: this runs for every created entity, on the
      // worker loop's thread. log_event's fields (one dumped object) are spliced in after "msg".
      line = R"({"ts":")";
      append_timestamp(line, timestamp_of(msg.time));
      line += R"(","level":")";
      line += level_name;
      line += R"(","msg":)";
      write_json_string(line, message);
      if (fields.size() > 2) {
        line += ',';
        line += fields.substr(1);
      } else {
        line += '}';
      }
    } else {
      line = fmt::format("{} {:<5} {}", format_timestamp(timestamp_of(msg.time)), level_name,
                         message);
      // Read back with the project's parser, which keeps every number as written (nlohmann's
      // would refuse one past a double's range inside an id). No fields: a plain spdlog call.
      const auto parsed = fields.empty() ? json::object() : parse_json(fields, kFieldsLimits);
      if (const auto* object = std::get_if<json>(&parsed); object && object->is_object()) {
        for (const auto& [key, value] : object->items()) {
          line += fmt::format(" {}={}", key,
                              value.is_string() ? value.get<std::string>() : to_json_text(value));
        }
      }
    }
    line += '\n';
    dest.append(line.data(), line.data() + line.size());
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<StructuredFormatter>(as_json_);
  }

 private:
  bool as_json_;
};

// The logger of LogFlush::held lines (configure_logging); none until it is called, when every line
// goes to the default logger.
std::shared_ptr<spdlog::logger>& held_logger() {
  static std::shared_ptr<spdlog::logger> logger;
  return logger;
}

spdlog::level::level_enum to_spdlog(LogLevel level) {
  switch (level) {
    case LogLevel::trace: return spdlog::level::trace;
    case LogLevel::debug: return spdlog::level::debug;
    case LogLevel::info: return spdlog::level::info;
    case LogLevel::warn: return spdlog::level::warn;
    case LogLevel::error: return spdlog::level::err;
    case LogLevel::critical: return spdlog::level::critical;
  }
  return spdlog::level::info;
}

// A line's fields written as JSON text without building a json object first: the fields of a
// result's line are written for every created entity, on the worker loop's thread. Names are kept
// in bytewise order, as a dumped json object has them (names are literals).
class LineFields {
 public:
  LineFields() { fields_.reserve(10); }  // a result's seven, and those a line adds
  LineFields& text(std::string_view name, std::string_view value) {
    std::string written;
    write_json_string(written, value);
    return add(name, std::move(written));
  }
  LineFields& integer(std::string_view name, std::int64_t value) {
    return add(name, std::to_string(value));
  }
  LineFields& value(std::string_view name, const json& any) { return add(name, to_json_text(any)); }

  std::string object() && {
    std::stable_sort(fields_.begin(), fields_.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    std::string out = "{";
    for (const auto& [name, written] : fields_) {
      if (out.size() > 1) out += ',';
      write_json_string(out, name);
      out += ':';
      out += written;
    }
    out += '}';
    return out;
  }

 private:
  LineFields& add(std::string_view name, std::string written) {
    fields_.emplace_back(name, std::move(written));
    return *this;
  }
  std::vector<std::pair<std::string_view, std::string>> fields_;
};

LineFields result_fields(const CommandResult& result) {
  LineFields fields;
  fields.text("status", to_string(result.status))
      .integer("partition", result.source.partition)
      .integer("offset", result.source.offset);
  if (result.scope) fields.text("scope", *result.scope);
  if (result.idempotency_key) fields.text("key", *result.idempotency_key);
  if (result.type) fields.text("type", *result.type);
  if (result.entity.is_object() && result.entity.contains("id")) {
    const auto& id = result.entity["id"];
    // An id that is not a 64-bit integer (numeric, text) is logged as its exact text.
    if (is_exact_number(id)) {
      fields.text("entity_id", exact_number_text(id));
    } else {
      fields.value("entity_id", id);
    }
  }
  return fields;
}

// Writes one line with its fields (a JSON object's text, or empty for none).
void write_line(LogLevel level, std::string_view message, const std::string& fields,
                LogFlush flush) {
  struct FieldsBeside {
    explicit FieldsBeside(const std::string& text) : outer(std::exchange(t_fields, &text)) {}
    ~FieldsBeside() { t_fields = outer; }
    const std::string* outer;
    FieldsBeside(const FieldsBeside&) = delete;
    FieldsBeside& operator=(const FieldsBeside&) = delete;
  } beside(fields);
  spdlog::logger* logger = spdlog::default_logger_raw();
  if (flush == LogFlush::held && held_logger()) logger = held_logger().get();
  logger->log(to_spdlog(level), "{}", message);
}

// A line about a result, with its fields and `more` (checked first: building the fields costs more
// than the check, for every created entity).
void log_result(LogLevel level, std::string_view message, const CommandResult& result,
                const std::function<void(LineFields&)>& more = {}) {
  if (!log_enabled(level)) return;
  LineFields fields = result_fields(result);
  if (more) more(fields);
  write_line(level, message, std::move(fields).object(), LogFlush::held);
}

}  // namespace

void configure_logging(std::string_view level, std::string_view format) {
  if (format != "json" && format != "text") {
    throw ConfigError("--log-format", fmt::format("'{}' is not json or text", format));
  }
  const auto parsed = spdlog::level::from_str(std::string(level));
  if (spdlog::level::to_string_view(parsed) != level && !(level == "warn" && parsed == spdlog::level::warn)) {
    throw ConfigError("--log-level", fmt::format("'{}' is not trace, debug, info, warn or error", level));
  }
  // Two loggers, one sink: the default one writes every line at once (with the held lines before
  // it, in order); the held one leaves its lines in the sink for flush_logs().
  const auto sink = std::make_shared<StderrSink>();
  auto logger = std::make_shared<spdlog::logger>("dedup", sink);
  logger->set_formatter(std::make_unique<StructuredFormatter>(format == "json"));
  logger->set_level(parsed);
  logger->flush_on(spdlog::level::trace);
  auto held = std::make_shared<spdlog::logger>("dedup.held", sink);
  held->set_level(parsed);
  held->flush_on(spdlog::level::off);
  spdlog::set_default_logger(std::move(logger));
  held_logger() = std::move(held);
}

void flush_logs() {
  if (const auto& held = held_logger()) held->flush();
}

bool log_enabled(LogLevel level) {
  return spdlog::default_logger_raw()->should_log(to_spdlog(level));
}

void log_event(LogLevel level, std::string_view message, const json& fields, LogFlush flush) {
  if (!log_enabled(level)) return;
  std::string dumped;
  if (fields.is_object() && !fields.empty()) {
    if (!fields.contains("ts") && !fields.contains("level") && !fields.contains("msg")) {
      dumped = to_json_text(fields);
    } else {
      // The line's own keys stay its own; a renamed field takes a name no other field has.
      json renamed = fields;
      for (const char* key : {"ts", "level", "msg"}) {
        if (const auto found = renamed.find(key); found != renamed.end()) {
          std::string name = std::string("field_") + key;
          while (renamed.contains(name)) name.insert(0, "field_");
          json value = std::move(*found);
          renamed.erase(key);
          renamed[name] = std::move(value);
        }
      }
      dumped = to_json_text(renamed);
    }
  }
  write_line(level, message, dumped, flush);
}

RateLimiter::RateLimiter(double per_second)
    : per_second_(per_second), tokens_(per_second), last_(std::chrono::steady_clock::now()) {}

bool RateLimiter::allow(std::size_t& suppressed) {
  std::lock_guard lock(mutex_);
  const auto now = std::chrono::steady_clock::now();
  tokens_ = std::min(per_second_,
                     tokens_ + per_second_ * std::chrono::duration<double>(now - last_).count());
  last_ = now;
  if (tokens_ < 1.0) {
    ++held_back_;
    return false;
  }
  tokens_ -= 1.0;
  suppressed = std::exchange(held_back_, 0);
  return true;
}

LoggingObserver::LoggingObserver(double per_second)
    : replays_(per_second), mismatches_(per_second), rejections_(per_second), db_errors_(per_second) {}

void LoggingObserver::on_db_error(DbErrorKind kind) {
  std::size_t suppressed = 0;
  if (!db_errors_.allow(suppressed)) return;
  log_event(kind == DbErrorKind::transient ? LogLevel::warn : LogLevel::error,
            kind == DbErrorKind::transient ? "database attempt failed; the batch is retried"
                                           : "database failure that a retry cannot cure",
            {{"kind", kind == DbErrorKind::transient ? "transient" : "permanent"},
             {"suppressed", suppressed}});
}

void LoggingObserver::on_keys_expired(std::size_t count) {
  if (count > 0) log_event(LogLevel::info, "expired keys deleted", {{"count", count}});
}

void LoggingObserver::on_result_published(const CommandResult& result, double /*e2e*/) {
  std::size_t suppressed = 0;
  const auto counted = [&](LineFields& fields) {
    if (suppressed > 0) fields.integer("suppressed_before", static_cast<std::int64_t>(suppressed));
  };
  if (result.cross_scope_key_reuse) {
    // Security-relevant and rare: never rate limited.
    log_result(LogLevel::warn, "idempotency key already used under another scope", result);
  }
  switch (result.status) {
    case Status::created:
      log_result(LogLevel::info, "entity created", result);
      break;
    case Status::duplicate:
    case Status::conflict:
      if (result.status == Status::conflict && !result.replayed) {
        log_result(LogLevel::info, "command conflicts with existing data", result,
                   [&](LineFields& fields) {
                     fields.value("constraint", result.error.is_object()
                                                       ? result.error.value("constraint", json())
                                                       : json());
                   });
      } else if (replays_.allow(suppressed)) {
        log_result(LogLevel::info, "replayed stored result", result, counted);
      }
      break;
    case Status::key_reused:
      if (mismatches_.allow(suppressed)) {
        log_result(LogLevel::info, "idempotency key reused with a different payload", result,
                   counted);
      }
      break;
    case Status::rejected:
      if (rejections_.allow(suppressed)) {
        log_result(LogLevel::warn, "record rejected and dead-lettered", result,
                   [&](LineFields& fields) {
                     counted(fields);
                     if (result.rejection) {
                       fields.text("reason", to_string(result.rejection->code));
                       fields.text("error", result.rejection->message);
                     }
                   });
      }
      break;
  }
}

void LoggingObserver::on_results_published() { flush_logs(); }

void LoggingObserver::on_kafka_error(std::string_view what) {
  log_event(LogLevel::warn, "kafka error", {{"error", what}});
}

void FanOutObserver::on_batch(std::size_t records) {
  for (auto* o : observers_) o->on_batch(records);
}
void FanOutObserver::on_store_transaction(double seconds) {
  for (auto* o : observers_) o->on_store_transaction(seconds);
}
void FanOutObserver::on_db_error(DbErrorKind kind) {
  for (auto* o : observers_) o->on_db_error(kind);
}
void FanOutObserver::on_keys_expired(std::size_t count) {
  for (auto* o : observers_) o->on_keys_expired(count);
}
void FanOutObserver::on_result_published(const CommandResult& result, double seconds) {
  for (auto* o : observers_) o->on_result_published(result, seconds);
}
void FanOutObserver::on_results_published() {
  for (auto* o : observers_) o->on_results_published();
}
void FanOutObserver::on_kafka_error(std::string_view what) {
  for (auto* o : observers_) o->on_kafka_error(what);
}
void FanOutObserver::on_consumer_lag(std::int32_t partition, std::int64_t lag) {
  for (auto* o : observers_) o->on_consumer_lag(partition, lag);
}
void FanOutObserver::on_partition_revoked(std::int32_t partition) {
  for (auto* o : observers_) o->on_partition_revoked(partition);
}

}  // namespace dedup
