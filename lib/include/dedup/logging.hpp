// Logs: JSON lines (default, for log pipelines) or text (for humans), on stderr, through spdlog's
// default logger, so every spdlog call in the process comes out in the chosen format.
#pragma once

#include <chrono>
#include <cstddef>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "dedup/observer.hpp"

namespace dedup {

enum class LogLevel { trace, debug, info, warn, error, critical };

// When a line reaches stderr. `immediately`: before the call that logs it returns, with every line
// held before it (so lines keep their order). `held`: by the next flush_logs() or immediate line,
// or once 64 KiB are held; for the hot path's per-record lines (the audit line of each created
// entity), which the worker has written out before it commits the records' offsets
// (Observer::on_results_published): one write(2) per batch instead of one per line.
enum class LogFlush { immediately, held };

// Sets up the default logger: synchronous (each line formatted on the caller's thread, within the
// call that logs it) and written as LogFlush says. `level`: trace|debug|info|warn|error; `format`:
// json|text.
// Throws ConfigError("--log-level" / "--log-format", ...) for other values.
void configure_logging(std::string_view level, std::string_view format);

// One log line: a message and structured fields (scope, key, type, status, partition, offset,
// entity_id, ...). In JSON: {"ts", "level", "msg", ...fields}, in that order (a field named ts,
// level or msg comes out as field_ts, field_level, field_msg); in text: "msg field=value ...".
void log_event(LogLevel level, std::string_view message,
               const nlohmann::json& fields = nlohmann::json::object(),
               LogFlush flush = LogFlush::immediately);

// Writes out the held lines (LogFlush::held).
void flush_logs();

// Whether a line of `level` would be written: for callers whose fields cost more to build than
// this check.
bool log_enabled(LogLevel level);

// At most `per_second` events pass, as a token bucket with that burst; the rest are counted so the
// next line that passes can say how many were held back. Thread-safe.
class RateLimiter {
 public:
  explicit RateLimiter(double per_second);
  // True if this event may be logged; `suppressed` receives how many were held back before it.
  bool allow(std::size_t& suppressed);

 private:
  std::mutex mutex_;
  double per_second_;
  double tokens_;
  std::chrono::steady_clock::time_point last_;
  std::size_t held_back_ = 0;
};

// Logs what happens to commands: an audit line for every created entity (info, never rate
// limited: it is the record of an effect), duplicates, conflicts and key reuse (info, rate
// limited so a retry storm cannot flood the log), rejections (warn, rate limited), cross-scope
// reuse (warn), database and Kafka errors with their classification. A batch's per-record lines
// are held (LogFlush::held) and written out when its results are all published (earlier when an
// immediate line or the 64 KiB bound comes first).
class LoggingObserver final : public Observer {
 public:
  explicit LoggingObserver(double repeated_lines_per_second = 20);

  void on_db_error(DbErrorKind kind) override;
  void on_keys_expired(std::size_t count) override;
  void on_result_published(const CommandResult& result, double end_to_end_seconds) override;
  void on_results_published() override;
  void on_kafka_error(std::string_view what) override;

 private:
  RateLimiter replays_;
  RateLimiter mismatches_;
  RateLimiter rejections_;
  RateLimiter db_errors_;
};

// Forwards every hook to each observer in turn (e.g. metrics and logs).
class FanOutObserver final : public Observer {
 public:
  explicit FanOutObserver(std::vector<Observer*> observers) : observers_(std::move(observers)) {}

  void on_batch(std::size_t records) override;
  void on_store_transaction(double seconds) override;
  void on_db_error(DbErrorKind kind) override;
  void on_keys_expired(std::size_t count) override;
  void on_result_published(const CommandResult& result, double end_to_end_seconds) override;
  void on_results_published() override;
  void on_kafka_error(std::string_view what) override;
  void on_consumer_lag(std::int32_t partition, std::int64_t lag) override;
  void on_partition_revoked(std::int32_t partition) override;

 private:
  std::vector<Observer*> observers_;
};

}  // namespace dedup
