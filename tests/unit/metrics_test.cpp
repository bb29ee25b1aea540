// dedup::Metrics: what the Observer hooks turn into, read back from its prometheus::Registry.
#include "dedup/metrics.hpp"

#include <gtest/gtest.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <array>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace dedup {
namespace {

const std::vector<std::string> kTypes = {"todo.create", "appointment.create"};
constexpr std::array kAllStatuses = {Status::created, Status::duplicate, Status::key_reused,
                                     Status::conflict, Status::rejected};

// A series read back from the registry: nullopt when the family or label set does not exist.
struct Sample {
  double value = 0;                    // counter / gauge value, or histogram sample count
  double sum = 0;                      // histogram only
  std::vector<std::uint64_t> buckets;  // histogram only: cumulative counts
};

std::optional<Sample> find(const Metrics& metrics, const std::string& name,
                           const prometheus::Labels& labels = {}) {
  for (const auto& family : metrics.registry()->Collect()) {
    if (family.name != name) continue;
    for (const auto& metric : family.metric) {
      prometheus::Labels have;
      for (const auto& pair : metric.label) have.emplace(pair.name, pair.value);
      if (have != labels) continue;
      Sample sample;
      switch (family.type) {
        case prometheus::MetricType::Counter:
          sample.value = metric.counter.value;
          break;
        case prometheus::MetricType::Gauge:
          sample.value = metric.gauge.value;
          break;
        case prometheus::MetricType::Histogram:
          sample.value = static_cast<double>(metric.histogram.sample_count);
          sample.sum = metric.histogram.sample_sum;
          for (const auto& bucket : metric.histogram.bucket) {
            sample.buckets.push_back(bucket.cumulative_count);
          }
          break;
        default:
          break;
      }
      return sample;
    }
  }
  return std::nullopt;
}

double value(const Metrics& metrics, const std::string& name,
             const prometheus::Labels& labels = {}) {
  const auto sample = find(metrics, name, labels);
  EXPECT_TRUE(sample.has_value()) << name << " with the given labels does not exist";
  return sample ? sample->value : -1;
}

// Every label value of every series of a family.
std::vector<std::string> label_values(const Metrics& metrics, const std::string& name,
                                      const std::string& label) {
  std::vector<std::string> values;
  for (const auto& family : metrics.registry()->Collect()) {
    if (family.name != name) continue;
    for (const auto& metric : family.metric) {
      for (const auto& pair : metric.label) {
        if (pair.name == label) values.push_back(pair.value);
      }
    }
  }
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
  return values;
}

CommandResult result(std::optional<std::string> type, Status status, bool replayed = false) {
  CommandResult r;
  r.status = status;
  r.replayed = replayed;
  r.type = std::move(type);
  r.scope = "org-1";
  r.idempotency_key = "key-1";
  if (status == Status::rejected) r.rejection = Rejection{RejectCode::invalid_payload, "bad"};
  return r;
}

CommandResult rejected(std::optional<std::string> type, RejectCode code) {
  CommandResult r;
  r.status = Status::rejected;
  r.type = std::move(type);
  r.rejection = Rejection{code, "rejected for the test"};
  return r;
}

TEST(Metrics, PreCreatesEverySeriesAtZero) {
  const Metrics metrics(kTypes, "1.2.3");
  for (const std::string type : {"todo.create", "appointment.create", "unknown"}) {
    for (const Status status : kAllStatuses) {
      EXPECT_EQ(value(metrics, "dedup_commands_total",
                      {{"type", type}, {"status", std::string(to_string(status))}}),
                0)
          << type << " " << to_string(status);
    }
    EXPECT_EQ(value(metrics, "dedup_idempotent_hits_total", {{"type", type}}), 0);
    EXPECT_EQ(value(metrics, "dedup_key_reuse_mismatch_total", {{"type", type}}), 0);
    EXPECT_EQ(value(metrics, "dedup_missing_key_total", {{"type", type}}), 0);
  }
  for (const RejectCode code : {RejectCode::too_large, RejectCode::invalid_json,
                                RejectCode::unknown_type, RejectCode::invalid_payload}) {
    EXPECT_EQ(
        value(metrics, "dedup_dead_letters_total", {{"reason", std::string(to_string(code))}}), 0);
  }
  EXPECT_EQ(value(metrics, "dedup_db_errors_total", {{"kind", "transient"}}), 0);
  EXPECT_EQ(value(metrics, "dedup_db_errors_total", {{"kind", "permanent"}}), 0);
  EXPECT_EQ(value(metrics, "dedup_cross_scope_key_reuse_total"), 0);
  EXPECT_EQ(value(metrics, "dedup_kafka_errors_total"), 0);
  EXPECT_EQ(value(metrics, "dedup_keys_expired_total"), 0);
  EXPECT_EQ(value(metrics, "dedup_build_info", {{"version", "1.2.3"}}), 1);
  EXPECT_EQ(value(metrics, "dedup_batch_size"), 0);
  EXPECT_EQ(value(metrics, "dedup_db_transaction_seconds"), 0);
  EXPECT_EQ(value(metrics, "dedup_end_to_end_seconds"), 0);
  // No lag series until a partition is assigned.
  EXPECT_TRUE(label_values(metrics, "dedup_consumer_lag", "partition").empty());
}

TEST(Metrics, IdempotentHitsPerTypeEqualTheReplayedResultsSent) {
  Metrics metrics(kTypes, "test");
  struct Feed {
    const char* type;
    Status status;
    bool replayed;
    int count;
  };
  const std::vector<Feed> stream = {
      {"todo.create", Status::created, false, 7},
      {"todo.create", Status::duplicate, true, 4},
      {"todo.create", Status::conflict, false, 2},  // the first conflict: stored, not replayed
      {"todo.create", Status::conflict, true, 3},   // later records with that key: replayed
      {"todo.create", Status::key_reused, false, 1},
      {"appointment.create", Status::created, false, 5},
      {"appointment.create", Status::duplicate, true, 6},
      {"appointment.create", Status::rejected, false, 2},
  };
  int sent = 0;
  for (const auto& feed : stream) {
    for (int i = 0; i < feed.count; ++i, ++sent) {
      metrics.on_result_published(result(feed.type, feed.status, feed.replayed), 0.05);
    }
  }

  EXPECT_EQ(value(metrics, "dedup_idempotent_hits_total", {{"type", "todo.create"}}), 4 + 3);
  EXPECT_EQ(value(metrics, "dedup_idempotent_hits_total", {{"type", "appointment.create"}}), 6);
  EXPECT_EQ(value(metrics, "dedup_idempotent_hits_total", {{"type", "unknown"}}), 0);
  EXPECT_EQ(value(metrics, "dedup_key_reuse_mismatch_total", {{"type", "todo.create"}}), 1);
  EXPECT_EQ(value(metrics, "dedup_key_reuse_mismatch_total", {{"type", "appointment.create"}}), 0);
  EXPECT_EQ(
      value(metrics, "dedup_commands_total", {{"type", "todo.create"}, {"status", "conflict"}}), 5);
  EXPECT_EQ(value(metrics, "dedup_commands_total",
                  {{"type", "appointment.create"}, {"status", "rejected"}}),
            2);
  EXPECT_EQ(value(metrics, "dedup_dead_letters_total", {{"reason", "invalid_payload"}}), 2);

  // Status counters add up: per type to what was sent for it, and overall to every result.
  double total = 0;
  for (const std::string type : {"todo.create", "appointment.create", "unknown"}) {
    double per_type = 0;
    for (const Status status : kAllStatuses) {
      per_type += value(metrics, "dedup_commands_total",
                        {{"type", type}, {"status", std::string(to_string(status))}});
    }
    double expected = 0;
    for (const auto& feed : stream) {
      if (feed.type == type) expected += feed.count;
    }
    EXPECT_EQ(per_type, expected) << type;
    total += per_type;
  }
  EXPECT_EQ(total, sent);
  EXPECT_EQ(value(metrics, "dedup_end_to_end_seconds"), sent);
}

TEST(Metrics, TypesOutsideTheConfigAreCountedAsUnknown) {
  Metrics metrics(kTypes, "test");
  metrics.on_result_published(rejected("no.such.type", RejectCode::unknown_type), -1);
  metrics.on_result_published(rejected(std::nullopt, RejectCode::missing_type), -1);
  metrics.on_result_published(rejected(std::nullopt, RejectCode::invalid_json), -1);
  metrics.on_result_published(rejected("todo.create", RejectCode::invalid_payload), -1);

  EXPECT_EQ(value(metrics, "dedup_commands_total", {{"type", "unknown"}, {"status", "rejected"}}),
            3);
  EXPECT_EQ(
      value(metrics, "dedup_commands_total", {{"type", "todo.create"}, {"status", "rejected"}}), 1);
  EXPECT_EQ(label_values(metrics, "dedup_commands_total", "type"),
            (std::vector<std::string>{"appointment.create", "todo.create", "unknown"}));
  EXPECT_EQ(value(metrics, "dedup_dead_letters_total", {{"reason", "unknown_type"}}), 1);
  EXPECT_EQ(value(metrics, "dedup_dead_letters_total", {{"reason", "missing_type"}}), 1);
  EXPECT_EQ(value(metrics, "dedup_dead_letters_total", {{"reason", "invalid_json"}}), 1);
  EXPECT_EQ(value(metrics, "dedup_dead_letters_total", {{"reason", "invalid_payload"}}), 1);
  // Unknown end-to-end time (negative) is not observed.
  EXPECT_EQ(value(metrics, "dedup_end_to_end_seconds"), 0);

  EXPECT_EQ(metrics.type_label(std::string("todo.create")), "todo.create");
  EXPECT_EQ(metrics.type_label(std::string("TODO.CREATE")), "unknown");
  EXPECT_EQ(metrics.type_label(std::nullopt), "unknown");
}

TEST(Metrics, NoLabelCarriesAKeyOrAScope) {
  Metrics metrics(kTypes, "test");
  CommandResult r = result("todo.create", Status::duplicate, true);
  r.scope = "tenant-secret-scope";
  r.idempotency_key = "secret-idempotency-key";
  r.cross_scope_key_reuse = true;
  r.missing_key = true;
  metrics.on_result_published(r, 0.1);
  CommandResult bad = rejected("tenant-chosen-type", RejectCode::unknown_type);
  bad.scope = "tenant-secret-scope";
  metrics.on_result_published(bad, 0.1);
  metrics.on_kafka_error("broker 10.0.0.1:9092/1: Connection refused");

  const std::string text = prometheus::TextSerializer().Serialize(metrics.registry()->Collect());
  EXPECT_EQ(text.find("secret"), std::string::npos) << text;
  EXPECT_EQ(text.find("tenant-chosen-type"), std::string::npos) << text;
  EXPECT_EQ(text.find("Connection refused"), std::string::npos) << text;
}

TEST(Metrics, CountsFlagsOfTheResult) {
  Metrics metrics(kTypes, "test");
  CommandResult natural = result("todo.create", Status::created);
  natural.missing_key = true;
  natural.natural_key = true;
  metrics.on_result_published(natural, 0.01);
  CommandResult cross = result("appointment.create", Status::created);
  cross.cross_scope_key_reuse = true;
  metrics.on_result_published(cross, 0.01);
  metrics.on_result_published(cross, 0.01);
  CommandResult missing = rejected(std::nullopt, RejectCode::missing_key);
  missing.missing_key = true;
  metrics.on_result_published(missing, 0.01);

  EXPECT_EQ(value(metrics, "dedup_missing_key_total", {{"type", "todo.create"}}), 1);
  EXPECT_EQ(value(metrics, "dedup_missing_key_total", {{"type", "unknown"}}), 1);
  EXPECT_EQ(value(metrics, "dedup_cross_scope_key_reuse_total"), 2);
  EXPECT_EQ(value(metrics, "dedup_dead_letters_total", {{"reason", "missing_key"}}), 1);
}

TEST(Metrics, RejectedResultWithoutRejectionStillCountsADeadLetter) {
  Metrics metrics(kTypes, "test");
  CommandResult r;  // status rejected, rejection unset: an upstream bug, still never dropped
  metrics.on_result_published(r, -1);
  EXPECT_EQ(value(metrics, "dedup_dead_letters_total", {{"reason", "unknown"}}), 1);
}

TEST(Metrics, HistogramsObserveTheHooks) {
  Metrics metrics(kTypes, "test");
  metrics.on_batch(1);
  metrics.on_batch(100);
  metrics.on_batch(100);
  metrics.on_store_transaction(0.004);
  metrics.on_store_transaction(2.0);

  const auto batch = find(metrics, "dedup_batch_size");
  ASSERT_TRUE(batch);
  EXPECT_EQ(batch->value, 3);
  EXPECT_EQ(batch->sum, 201);
  ASSERT_EQ(batch->buckets.size(), Metrics::batch_size_buckets().size() + 1);  // + le="+Inf"
  EXPECT_EQ(batch->buckets.front(), 1u);                                       // le="1"

  const auto db = find(metrics, "dedup_db_transaction_seconds");
  ASSERT_TRUE(db);
  EXPECT_EQ(db->value, 2);
  EXPECT_DOUBLE_EQ(db->sum, 2.004);

  for (const auto* buckets :
       {&Metrics::batch_size_buckets(), &Metrics::db_transaction_seconds_buckets(),
        &Metrics::end_to_end_seconds_buckets()}) {
    EXPECT_TRUE(std::is_sorted(buckets->begin(), buckets->end()));
  }
}

TEST(Metrics, ErrorCountersAndExpiredKeys) {
  Metrics metrics(kTypes, "test");
  metrics.on_db_error(DbErrorKind::transient);
  metrics.on_db_error(DbErrorKind::transient);
  metrics.on_db_error(DbErrorKind::permanent);
  metrics.on_kafka_error("timed out");
  metrics.on_keys_expired(250);
  metrics.on_keys_expired(0);
  EXPECT_EQ(value(metrics, "dedup_db_errors_total", {{"kind", "transient"}}), 2);
  EXPECT_EQ(value(metrics, "dedup_db_errors_total", {{"kind", "permanent"}}), 1);
  EXPECT_EQ(value(metrics, "dedup_kafka_errors_total"), 1);
  EXPECT_EQ(value(metrics, "dedup_keys_expired_total"), 250);
}

TEST(Metrics, LagIsAGaugePerAssignedPartition) {
  Metrics metrics(kTypes, "test");
  metrics.on_consumer_lag(0, 10);
  metrics.on_consumer_lag(3, 7);
  metrics.on_consumer_lag(0, 4);
  EXPECT_EQ(value(metrics, "dedup_consumer_lag", {{"partition", "0"}}), 4);
  EXPECT_EQ(value(metrics, "dedup_consumer_lag", {{"partition", "3"}}), 7);

  metrics.on_partition_revoked(3);
  metrics.on_partition_revoked(42);  // never assigned: nothing to forget
  EXPECT_EQ(label_values(metrics, "dedup_consumer_lag", "partition"),
            (std::vector<std::string>{"0"}));
  metrics.on_consumer_lag(3, 1);  // reassigned
  EXPECT_EQ(value(metrics, "dedup_consumer_lag", {{"partition", "3"}}), 1);
}

TEST(Metrics, HooksAreThreadSafe) {
  Metrics metrics(kTypes, "test");
  constexpr int kThreads = 4;
  constexpr int kPerThread = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&metrics, t] {
      for (int i = 0; i < kPerThread; ++i) {
        metrics.on_result_published(result("todo.create", Status::duplicate, true), 0.01);
        metrics.on_result_published(rejected("nope", RejectCode::unknown_type), -1);
        metrics.on_consumer_lag(i % 3, i);
        if (i % 7 == 0) metrics.on_partition_revoked((i + t) % 3);
        metrics.on_batch(2);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(value(metrics, "dedup_idempotent_hits_total", {{"type", "todo.create"}}),
            kThreads * kPerThread);
  EXPECT_EQ(value(metrics, "dedup_commands_total", {{"type", "unknown"}, {"status", "rejected"}}),
            kThreads * kPerThread);
  EXPECT_EQ(value(metrics, "dedup_batch_size"), kThreads * kPerThread);
}

}  // namespace
}  // namespace dedup
