#include "dedup/metrics.hpp"

#include <cstddef>
#include <string>
#include <utility>

namespace dedup {
namespace {

constexpr std::array kStatuses = {Status::created, Status::duplicate, Status::key_reused,
                                  Status::conflict, Status::rejected};

// Every reject code, so that each dead-letter reason exists (at zero) from the start. A code added
// to RejectCode but not here still gets its series, created on first use.
constexpr std::array kRejectCodes = {
    RejectCode::too_large,     RejectCode::invalid_json,  RejectCode::not_an_object,
    RejectCode::missing_key,   RejectCode::invalid_key,   RejectCode::key_mismatch,
    RejectCode::missing_scope, RejectCode::invalid_scope, RejectCode::scope_mismatch,
    RejectCode::missing_type,  RejectCode::unknown_type,  RejectCode::invalid_payload, RejectCode::invalid_event,
};

// The reason label of a dead letter whose result carries no rejection (a broken invariant upstream;
// counted rather than dropped, so that the sum over reasons still equals the rejected results).
constexpr std::string_view kUnknownReason = "unknown";

std::size_t status_index(Status status) noexcept { return static_cast<std::size_t>(status); }

prometheus::Family<prometheus::Counter>& counter_family(prometheus::Registry& registry,
                                                        const std::string& name,
                                                        const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry);
}

prometheus::Histogram& histogram(prometheus::Registry& registry, const std::string& name,
                                 const std::string& help, const std::vector<double>& buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add({}, buckets);
}

}  // namespace

// Records per Processor::process call: from single records on a quiet topic up to the consumer's
// largest fetch. Powers of ~2-2.5 keep the quantiles readable across that range.
const std::vector<double>& Metrics::batch_size_buckets() {
  static const std::vector<double> buckets = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000};
  return buckets;
}

// One KeyStore::apply, including its internal serialization/deadlock retries: a healthy batch
// commits in milliseconds, a retried one in hundreds; 30 s is beyond any sane statement timeout.
const std::vector<double>& Metrics::db_transaction_seconds_buckets() {
  static const std::vector<double> buckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                              0.25,  0.5,    1,     2.5,  5,     10,   30};
  return buckets;
}

// Record timestamp -> result acknowledged. Includes time spent waiting in the topic, so beyond the
// millisecond range of a live stream it must also resolve minutes of backlog (up to an hour).
const std::vector<double>& Metrics::end_to_end_seconds_buckets() {
  static const std::vector<double> buckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                              2.5,   5,    10,    30,   60,  300,  900, 3600};
  return buckets;
}

Metrics::Metrics(const std::vector<std::string>& command_types, std::string_view version)
    : registry_(std::make_shared<prometheus::Registry>()),
      commands_(counter_family(*registry_, "dedup_commands_total",
                               "Results published, by command type and status "
                               "(created, duplicate, key_reused, conflict, rejected).")),
      idempotent_hits_(counter_family(*registry_, "dedup_idempotent_hits_total",
                                      "Commands answered from a stored result (replayed: "
                                      "duplicates and replayed conflicts), by command type.")),
      key_reuse_mismatch_(
          counter_family(*registry_, "dedup_key_reuse_mismatch_total",
                         "Commands whose idempotency key was already used with a "
                         "different payload (status key_reused), by command type.")),
      missing_key_(counter_family(*registry_, "dedup_missing_key_total",
                                  "Commands that arrived without a client idempotency key (natural "
                                  "key derived, or rejected), by command type.")),
      dead_letters_(counter_family(*registry_, "dedup_dead_letters_total",
                                   "Records sent to the dead-letter topic, by rejection reason.")),
      db_errors_(counter_family(*registry_, "dedup_db_errors_total",
                                "Failed database attempts, by kind (transient ones are retried).")),
      consumer_lag_(prometheus::BuildGauge()
                        .Name("dedup_consumer_lag")
                        .Help("Records not yet processed on each assigned partition (high "
                              "watermark minus position).")
                        .Register(*registry_)),
      cross_scope_key_reuse_(
          counter_family(*registry_, "dedup_cross_scope_key_reuse_total",
                         "New (scope, key) pairs whose key already exists under another scope: a "
                         "possible key leak between tenants.")
              .Add({})),
      kafka_errors_(counter_family(*registry_, "dedup_kafka_errors_total",
                                   "Kafka errors: client callbacks, failed deliveries and failed "
                                   "offset commits.")
                        .Add({})),
      keys_expired_(counter_family(*registry_, "dedup_keys_expired_total",
                                   "Expired idempotency keys deleted by cleanup.")
                        .Add({})),
      db_errors_transient_(db_errors_.Add({{"kind", "transient"}})),
      db_errors_permanent_(db_errors_.Add({{"kind", "permanent"}})),
      batch_size_(histogram(*registry_, "dedup_batch_size",
                            "Records per batch handed to the processor.", batch_size_buckets())),
      db_transaction_seconds_(histogram(*registry_, "dedup_db_transaction_seconds",
                                        "Duration of one key-store transaction per batch, "
                                        "including its internal retries.",
                                        db_transaction_seconds_buckets())),
      end_to_end_seconds_(histogram(*registry_, "dedup_end_to_end_seconds",
                                    "Time from the record's timestamp to the acknowledgement of "
                                    "its result.",
                                    end_to_end_seconds_buckets())) {
  prometheus::BuildGauge()
      .Name("dedup_build_info")
      .Help("Always 1; the version label identifies the running build.")
      .Register(*registry_)
      .Add({{"version", std::string(version)}})
      .Set(1);

  const auto make_series = [this](const std::string& label) {
    TypeSeries series;
    for (const Status status : kStatuses) {
      series.commands[status_index(status)] =
          &commands_.Add({{"type", label}, {"status", std::string(to_string(status))}});
    }
    series.idempotent_hits = &idempotent_hits_.Add({{"type", label}});
    series.key_reuse_mismatch = &key_reuse_mismatch_.Add({{"type", label}});
    series.missing_key = &missing_key_.Add({{"type", label}});
    return series;
  };
  for (const auto& type : command_types) {
    if (type != kUnknownTypeLabel) types_.emplace(type, make_series(type));
  }
  unknown_type_ = make_series(std::string(kUnknownTypeLabel));

  for (const RejectCode code : kRejectCodes) {
    dead_letters_.Add({{"reason", std::string(to_string(code))}});
  }
}

Metrics::~Metrics() = default;

std::string_view Metrics::type_label(const std::optional<std::string>& type) const noexcept {
  if (type) {
    if (const auto found = types_.find(*type); found != types_.end()) return found->first;
  }
  return kUnknownTypeLabel;
}

const Metrics::TypeSeries& Metrics::series_for(
    const std::optional<std::string>& type) const noexcept {
  if (type) {
    if (const auto found = types_.find(*type); found != types_.end()) return found->second;
  }
  return unknown_type_;
}

prometheus::Counter& Metrics::dead_letter_counter(const std::optional<Rejection>& rejection) {
  const std::string reason(rejection ? to_string(rejection->code) : kUnknownReason);
  // Family::Add returns the existing series for known labels; it locks internally.
  return dead_letters_.Add({{"reason", reason}});
}

void Metrics::on_batch(std::size_t records) { batch_size_.Observe(static_cast<double>(records)); }

void Metrics::on_store_transaction(double seconds) { db_transaction_seconds_.Observe(seconds); }

void Metrics::on_db_error(DbErrorKind kind) {
  (kind == DbErrorKind::transient ? db_errors_transient_ : db_errors_permanent_).Increment();
}

void Metrics::on_keys_expired(std::size_t count) {
  keys_expired_.Increment(static_cast<double>(count));
}

void Metrics::on_result_published(const CommandResult& result, double end_to_end_seconds) {
  const TypeSeries& series = series_for(result.type);
  const std::size_t status = status_index(result.status);
  if (status < kStatusCount) series.commands[status]->Increment();

  if (result.replayed) series.idempotent_hits->Increment();
  if (result.status == Status::key_reused) series.key_reuse_mismatch->Increment();
  if (result.missing_key) series.missing_key->Increment();
  if (result.cross_scope_key_reuse) cross_scope_key_reuse_.Increment();
  if (result.status == Status::rejected) dead_letter_counter(result.rejection).Increment();
  if (end_to_end_seconds >= 0) end_to_end_seconds_.Observe(end_to_end_seconds);
}

void Metrics::on_kafka_error(std::string_view /*what*/) {
  // The message is for the logs: as a label it would be unbounded.
  kafka_errors_.Increment();
}

void Metrics::on_consumer_lag(std::int32_t partition, std::int64_t lag) {
  const std::lock_guard lock(lag_mutex_);
  auto found = lag_by_partition_.find(partition);
  if (found == lag_by_partition_.end()) {
    auto& gauge = consumer_lag_.Add({{"partition", std::to_string(partition)}});
    found = lag_by_partition_.emplace(partition, &gauge).first;
  }
  found->second->Set(static_cast<double>(lag));
}

void Metrics::on_partition_revoked(std::int32_t partition) {
  // A revoked partition's lag is another worker's business now: removing the series (rather than
  // leaving its last value) keeps sum(dedup_consumer_lag) across workers honest.
  const std::lock_guard lock(lag_mutex_);
  if (const auto found = lag_by_partition_.find(partition); found != lag_by_partition_.end()) {
    consumer_lag_.Remove(found->second);
    lag_by_partition_.erase(found);
  }
}

}  // namespace dedup
