// Tries hard to break exactly-once: many workers, each with its own connection, race through the
// same keys in different orders and overlapping batches.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

#include "dedup/database_lanes.hpp"
#include "dedup/postgres.hpp"
#include "dedup/processor.hpp"
#include "support/records.hpp"
#include "support/test_db.hpp"

namespace dedup {
namespace {

// The largest transaction the lanes ran (the processor reports each one's records).
class LargestTransaction final : public Observer {
 public:
  void on_batch(std::size_t records) override {
    std::size_t seen = largest.load();
    while (records > seen && !largest.compare_exchange_weak(seen, records)) {
    }
  }
  std::atomic<std::size_t> largest{0};
};

// --db-connections 4: one batch's lanes are four transactions at once; the same key sent on
// several partitions of one batch lands in several lanes, which race for it like workers do.
// The lanes' cap per transaction is a quarter of the batch, so a lane given more than its quarter
// (random partitions rarely split evenly) runs two transactions: a key whose copies straddle them
// is claimed by the first and replayed by the second.
TEST(Race, FourLanesRacingOverOneKeyInOneBatchCreateOneEntityAndReplayTheSameResults) {
  constexpr int kLanes = 4;
  constexpr int kPartitions = 16;
  constexpr int kKeys = 2'000;
  constexpr int kCopies = 3;  // each key on 3 random partitions
  constexpr std::size_t kBatch = 400;
  constexpr std::size_t kPerTransaction = kBatch / kLanes;
  test::TestSchema schema;
  SystemClock clock;
  LargestTransaction observer;
  DatabaseLanes lanes(kLanes, PostgresOptions{.conninfo = schema.conninfo(), .schema = schema.name()},
                      schema.catalog(), clock, observer, ParseOptions{}, kPerTransaction);

  // Copies of a key sit next to each other in the stream, so most batches hold all of them.
  std::mt19937 random(4242);
  std::vector<std::int64_t> next_offset(kPartitions, 0);
  std::vector<InboundRecord> stream;
  for (int key = 0; key < kKeys; ++key) {
    for (int copy = 0; copy < kCopies; ++copy) {
      const int partition = static_cast<int>(random() % kPartitions);
      stream.push_back(test::record({{"idempotency_key", "key-" + std::to_string(key)},
                                     {"scope", "org-" + std::to_string(key % 5)},
                                     {"type", "todo.create"},
                                     {"payload", {{"title", "todo " + std::to_string(key)}}}},
                                    {"commands", partition, next_offset[partition]++}));
    }
  }
  auto run = [&] {
    std::vector<CommandResult> results;
    for (std::size_t start = 0; start < stream.size(); start += kBatch) {
      const auto end = std::min(stream.size(), start + kBatch);
      auto batch = lanes.process(std::span(stream).subspan(start, end - start));
      results.insert(results.end(), batch.begin(), batch.end());
    }
    return results;
  };
  const auto first = run();
  ASSERT_EQ(first.size(), stream.size());
  std::map<std::string, nlohmann::json> created;
  for (const auto& result : first) {
    ASSERT_TRUE(result.status == Status::created || result.status == Status::duplicate)
        << result.to_json();
    if (result.status == Status::created) {
      EXPECT_TRUE(created.emplace(*result.idempotency_key, result.entity).second)
          << "second creation of " << *result.idempotency_key;
    }
  }
  EXPECT_EQ(created.size(), static_cast<std::size_t>(kKeys));
  EXPECT_EQ(observer.largest.load(), kPerTransaction) << "no lane transaction above the cap, and some at it";
  for (const auto& result : first) {
    EXPECT_EQ(result.entity, created.at(*result.idempotency_key)) << "one entity per key";
  }
  EXPECT_EQ(schema.scalar("SELECT count(*) FROM {schema}.todos"), kKeys);
  EXPECT_EQ(schema.scalar("SELECT count(*) FROM {schema}.idempotency_keys"), kKeys);
  // The lanes did race: some batch found a key claimed by another lane's open transaction and
  // fell back to the claim-first protocol (a key's copies share a batch, on different lanes).
  const std::size_t fallbacks = lanes.fast_path_fallbacks();
  EXPECT_GT(fallbacks, 0U);
  std::cout << "lanes: " << fallbacks << " fast-path fallback(s) from keys claimed by another lane\n";

  // The whole stream redelivered (a rebalance, a crash before the commit): the same results.
  const auto again = run();
  ASSERT_EQ(again.size(), first.size());
  for (std::size_t i = 0; i < first.size(); ++i) {
    EXPECT_EQ(again[i].status, first[i].status) << i;
    EXPECT_EQ(again[i].entity, first[i].entity) << i;
  }
  EXPECT_EQ(schema.scalar("SELECT count(*) FROM {schema}.todos"), kKeys);
}

TEST(Race, EightWorkersRacingOverTheSameKeysCreateExactlyOneEntityPerKey) {
  constexpr int kWorkers = 8;
  constexpr int kKeys = 10'000;
  constexpr int kBatch = 100;
  test::TestSchema schema;

  std::vector<std::vector<CommandResult>> results(kWorkers);
  std::vector<std::string> errors;
  std::vector<std::size_t> retried(kWorkers, 0);
  std::vector<std::size_t> fallbacks(kWorkers, 0);
  std::mutex errors_mutex;
  std::vector<std::thread> workers;
  for (int worker = 0; worker < kWorkers; ++worker) {
    workers.emplace_back([&, worker] {
      try {
        SystemClock clock;
        Observer observer;
        PostgresKeyStore store({.conninfo = schema.conninfo(), .schema = schema.name()},
                               schema.catalog());
        Processor processor(schema.catalog(), store, clock, observer, {});
        std::vector<int> order(kKeys);
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), std::mt19937(1000 + worker));
        for (int start = 0; start < kKeys; start += kBatch) {
          std::vector<InboundRecord> batch;
          for (int i = start; i < start + kBatch; ++i) {
            const int key = order[i];
            batch.push_back(test::record({{"idempotency_key", "key-" + std::to_string(key)},
                                          {"scope", "org-" + std::to_string(key % 7)},
                                          {"type", "todo.create"},
                                          {"payload", {{"title", "todo " + std::to_string(key)}}}},
                                         {"race", worker, i}));
          }
          auto batch_results = processor.process(batch);
          results[worker].insert(results[worker].end(), batch_results.begin(), batch_results.end());
        }
        retried[worker] = store.retried_attempts();
        fallbacks[worker] = store.fast_path_fallbacks();
      } catch (const std::exception& e) {
        std::lock_guard lock(errors_mutex);
        errors.push_back(e.what());
      }
    });
  }
  for (auto& w : workers) w.join();
  ASSERT_TRUE(errors.empty()) << errors.front();  // no deadlock or other error reached a caller

  std::map<std::string, nlohmann::json> created;  // key -> entity
  std::size_t duplicates = 0;
  for (const auto& worker_results : results) {
    ASSERT_EQ(worker_results.size(), static_cast<std::size_t>(kKeys));
    for (const auto& result : worker_results) {
      if (result.status == Status::created) {
        EXPECT_TRUE(created.emplace(*result.idempotency_key, result.entity).second)
            << "second creation of " << *result.idempotency_key;
      } else {
        ASSERT_EQ(result.status, Status::duplicate) << result.to_json();
        ++duplicates;
      }
    }
  }
  EXPECT_EQ(created.size(), static_cast<std::size_t>(kKeys));
  EXPECT_EQ(duplicates, static_cast<std::size_t>(kKeys * (kWorkers - 1)));
  for (const auto& worker_results : results) {
    for (const auto& result : worker_results) {
      EXPECT_EQ(result.entity, created.at(*result.idempotency_key));  // every answer: the one entity
    }
  }
  EXPECT_EQ(schema.scalar("SELECT count(*) FROM {schema}.todos"), kKeys);
  EXPECT_EQ(schema.scalar("SELECT count(*) FROM {schema}.idempotency_keys"), kKeys);
  std::size_t total_retries = 0;
  for (auto r : retried) total_retries += r;
  std::size_t total_fallbacks = 0;
  for (auto f : fallbacks) total_fallbacks += f;
  // Racing workers must have lost some optimistic single-statement batches to each other: the
  // claim-first path they fell back to is exercised here, not only the fast path.
  EXPECT_GT(total_fallbacks, 0u);
  // Sorted claims mean racing batches wait for each other instead of deadlocking.
  EXPECT_EQ(total_retries, 0u) << "transactions were retried (deadlock or serialization failure)";
  std::cout << "[race] " << kWorkers << " workers x " << kKeys << " keys: " << created.size()
            << " created, " << duplicates << " duplicates, " << total_retries << " retries, "
            << total_fallbacks << " fast-path fallbacks\n";
}

}  // namespace
}  // namespace dedup
