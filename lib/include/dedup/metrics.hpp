// Prometheus metrics (SPEC §7) and the HTTP endpoint that serves them with the health probes.
//
// Metrics is the Observer the worker installs: every hook turns into counter increments or
// histogram observations on its own prometheus::Registry. MetricsServer serves that registry on
// /metrics, together with /healthz and /readyz, on --metrics-addr.
//
// Label discipline: no label ever carries a key, a scope or any other value a client controls. The
// `type` label is one of the command types given to the constructor, or "unknown"; `status` and
// `reason` come from enums; `partition` is bounded by the topic's partition count.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dedup/command.hpp"
#include "dedup/observer.hpp"
#include "dedup/result.hpp"

namespace dedup {

// The `type` label of a command whose type is not one of the configured command types (missing,
// misspelled, or a rejected record that never had one).
inline constexpr std::string_view kUnknownTypeLabel = "unknown";

class Metrics final : public Observer {
 public:
  // Bucket boundaries, exposed for documentation and tests.
  static const std::vector<double>& batch_size_buckets();
  static const std::vector<double>& db_transaction_seconds_buckets();
  static const std::vector<double>& end_to_end_seconds_buckets();

  // `command_types`: the configured command type names (CommandCatalog::types()); every other type
  // is counted as "unknown". Series for every type × status, every dead-letter reason and both DB
  // error kinds are created up front, so dashboards and rate() see zeros rather than gaps.
  // `version` becomes dedup_build_info{version}. Throws std::bad_alloc only.
  Metrics(const std::vector<std::string>& command_types, std::string_view version);
  ~Metrics() override;

  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;
  Metrics(Metrics&&) = delete;
  Metrics& operator=(Metrics&&) = delete;

  // The registry holding every dedup_* metric: what MetricsServer serves and tests read back.
  std::shared_ptr<prometheus::Registry> registry() const noexcept { return registry_; }

  // The `type` label for a command type: the name itself when configured, else "unknown".
  std::string_view type_label(const std::optional<std::string>& type) const noexcept;

  // Observer hooks. All are thread-safe and noexcept in practice (they throw std::bad_alloc only,
  // and only for a partition or reject code seen for the first time).
  void on_batch(std::size_t records) override;
  void on_store_transaction(double seconds) override;
  void on_db_error(DbErrorKind kind) override;
  void on_keys_expired(std::size_t count) override;
  void on_result_published(const CommandResult& result, double end_to_end_seconds) override;
  void on_kafka_error(std::string_view what) override;
  void on_consumer_lag(std::int32_t partition, std::int64_t lag) override;
  void on_partition_revoked(std::int32_t partition) override;

 private:
  static constexpr std::size_t kStatusCount = 5;  // Status::created .. Status::rejected

  // The pre-created per-type series. The map is filled in the constructor and never changes, so
  // lookups need no lock; the counters themselves are atomic.
  struct TypeSeries {
    std::array<prometheus::Counter*, kStatusCount> commands{};
    prometheus::Counter* idempotent_hits = nullptr;
    prometheus::Counter* key_reuse_mismatch = nullptr;
    prometheus::Counter* missing_key = nullptr;
  };

  const TypeSeries& series_for(const std::optional<std::string>& type) const noexcept;
  prometheus::Counter& dead_letter_counter(const std::optional<Rejection>& rejection);

  std::shared_ptr<prometheus::Registry> registry_;

  prometheus::Family<prometheus::Counter>& commands_;
  prometheus::Family<prometheus::Counter>& idempotent_hits_;
  prometheus::Family<prometheus::Counter>& key_reuse_mismatch_;
  prometheus::Family<prometheus::Counter>& missing_key_;
  prometheus::Family<prometheus::Counter>& dead_letters_;
  prometheus::Family<prometheus::Counter>& db_errors_;
  prometheus::Family<prometheus::Gauge>& consumer_lag_;

  prometheus::Counter& cross_scope_key_reuse_;
  prometheus::Counter& kafka_errors_;
  prometheus::Counter& keys_expired_;
  prometheus::Counter& db_errors_transient_;
  prometheus::Counter& db_errors_permanent_;
  prometheus::Histogram& batch_size_;
  prometheus::Histogram& db_transaction_seconds_;
  prometheus::Histogram& end_to_end_seconds_;

  std::map<std::string, TypeSeries, std::less<>> types_;
  TypeSeries unknown_type_;

  // Family::Add is itself locked, but a lag gauge may be removed (revocation) while another thread
  // sets it, so the lag series are only touched under this mutex. (Dead-letter series are never
  // removed, so Family::Add's own lock is enough for them.)
  std::mutex lag_mutex_;
  std::map<std::int32_t, prometheus::Gauge*> lag_by_partition_;
};

// The HTTP endpoint of --metrics-addr:
//   GET /metrics  the registry in the Prometheus text format (0.0.4)
//   GET /healthz  200 "ok" while the process runs (liveness)
//   GET /readyz   200 "ready" when the readiness check returns true, else 503 "not ready"
// Anything else is 404; a method other than GET/HEAD is 405.
//
// Why CivetServer rather than prometheus::Exposer: the Exposer only answers 200 with a serialized
// registry, and its handler interface (CivetHandler) is not part of prometheus-cpp's public API, so
// /readyz could not answer 503. prometheus-cpp-pull runs on civetweb anyway, so civetweb's own C++
// API (CivetServer, one CivetHandler per endpoint; libcivetweb-cpp, same package) adds no
// dependency, and prometheus::TextSerializer produces exactly what the Exposer would have served.
// civetweb stays private to server.cpp: this header names none of its types. What civetweb 1.15's
// C++ API cannot do, server.cpp does through its C API: writing a response (a CivetHandler is
// handed the mg_connection), refusing the methods no CivetHandler is ever offered (CONNECT,
// PROPFIND, REPORT, ...) in a begin_request callback, and holding the library initialised.
class MetricsServer {
 public:
  // Called on civetweb's request threads, concurrently with the worker: it must be thread-safe and
  // quick (an atomic flag, typically). An exception from it is answered as 503.
  using ReadinessCheck = std::function<bool()>;

  // Listens on `address`: "host:port", where host is an IPv4 literal, "localhost", a bracketed
  // IPv6 literal ("[::1]:9464") or empty (all IPv4 interfaces: ":9464"); port 0 picks a free port
  // (read it back with port()). Serves until destroyed.
  // Throws ConfigError("--metrics-addr", ...) when the address is malformed, and dedup::Error when
  // it is well-formed but cannot be listened on (port in use, address not local).
  MetricsServer(std::string_view address, std::shared_ptr<prometheus::Registry> registry,
                ReadinessCheck ready);
  // Stops listening and waits for in-flight requests. Never throws.
  ~MetricsServer();

  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  MetricsServer(MetricsServer&&) = delete;
  MetricsServer& operator=(MetricsServer&&) = delete;

  // The port actually listened on (the chosen one when the address asked for port 0).
  std::uint16_t port() const noexcept { return port_; }

 private:
  class Listener;  // the CivetServer and its handlers (server.cpp)
  std::unique_ptr<Listener> listener_;
  std::uint16_t port_ = 0;
};

// Parses --metrics-addr into civetweb's listening_ports syntax ("127.0.0.1:9464", "[::1]:0").
// Exposed for tests. Throws ConfigError("--metrics-addr", ...) naming what is wrong.
std::string to_listening_port(std::string_view address);

}  // namespace dedup
