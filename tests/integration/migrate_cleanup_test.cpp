// migrate, cleanup and inspect against a real Postgres.
#include <gtest/gtest.h>

#include <pqxx/pqxx>

#include "dedup/postgres.hpp"
#include "dedup/processor.hpp"
#include "support/manual_clock.hpp"
#include "support/records.hpp"
#include "support/test_db.hpp"

namespace dedup {
namespace {

using json = nlohmann::json;

TEST(Migrate, IsIdempotentAndRecordsItsVersion) {
  test::TestSchema schema;  // already migrated once
  EXPECT_EQ(migrate(schema.conninfo(), schema.name()), 0);
  EXPECT_EQ(schema.scalar("SELECT max(version) FROM {schema}.schema_migrations"),
            latest_schema_version());
  EXPECT_EQ(schema.scalar("SELECT count(*) FROM {schema}.schema_migrations"),
            latest_schema_version());
}

TEST(Migrate, ConcurrentRunsSerializeOnTheAdvisoryLock) {
  const auto conninfo = test::test_db();
  const std::string schema = "dedup_test_concurrent_migrate";
  {
    pqxx::connection c(conninfo);
    pqxx::work txn(c);
    txn.exec("DROP SCHEMA IF EXISTS " + schema + " CASCADE");
    txn.commit();
  }
  std::vector<std::thread> threads;
  std::atomic<int> applied{0};
  std::atomic<int> failures{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      try {
        applied += migrate(conninfo, schema);
      } catch (...) {
        ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(applied.load(), latest_schema_version());
  pqxx::connection c(conninfo);
  pqxx::work txn(c);
  txn.exec("DROP SCHEMA " + schema + " CASCADE");
  txn.commit();
}

class CleanupTest : public ::testing::Test {
 protected:
  // Writes `count` keys at the clock's current time with a TTL of `ttl`.
  void write_keys(const std::string& prefix, int count, std::chrono::seconds ttl) {
    PostgresKeyStore store({.conninfo = schema_.conninfo(), .schema = schema_.name(), .key_ttl = ttl},
                           schema_.catalog());
    Observer observer;
    Processor processor(schema_.catalog(), store, clock_, observer, {});
    std::vector<InboundRecord> records;
    for (int i = 0; i < count; ++i) {
      records.push_back(test::record({{"idempotency_key", prefix + std::to_string(i)},
                                      {"scope", "s"},
                                      {"type", "todo.create"},
                                      {"payload", {{"title", "t"}}}},
                                     {"commands", 0, offset_++}));
    }
    for (const auto& result : processor.process(records)) ASSERT_EQ(result.status, Status::created);
  }

  test::TestSchema schema_;
  test::ManualClock clock_;
  std::int64_t offset_ = 0;
};

TEST_F(CleanupTest, RemovesOnlyExpiredKeysInBoundedBatches) {
  write_keys("short-", 25, std::chrono::minutes(10));
  write_keys("long-", 5, std::chrono::hours(1));
  clock_.advance(std::chrono::minutes(11));
  // Batches of 10: 25 expired rows take three short transactions; the live ones stay.
  EXPECT_EQ(cleanup_expired_keys(schema_.conninfo(), schema_.name(), clock_.now(), {.batch_size = 10}),
            25u);
  EXPECT_EQ(schema_.scalar("SELECT count(*) FROM {schema}.idempotency_keys"), 5);
  EXPECT_EQ(schema_.scalar("SELECT count(*) FROM {schema}.idempotency_keys WHERE idempotency_key LIKE 'long-%'"), 5);
  EXPECT_EQ(cleanup_expired_keys(schema_.conninfo(), schema_.name(), clock_.now()), 0u);
  // Entities are the user's data: cleanup never touches them.
  EXPECT_EQ(schema_.scalar("SELECT count(*) FROM {schema}.todos"), 30);
}

TEST_F(CleanupTest, MaxBatchesBoundsOneRun) {
  write_keys("k-", 30, std::chrono::minutes(1));
  clock_.advance(std::chrono::minutes(2));
  EXPECT_EQ(cleanup_expired_keys(schema_.conninfo(), schema_.name(), clock_.now(),
                                 {.batch_size = 10, .max_batches = 2}),
            20u);
  EXPECT_EQ(schema_.scalar("SELECT count(*) FROM {schema}.idempotency_keys"), 10);
}

TEST_F(CleanupTest, InspectShowsTheStoredRow) {
  write_keys("k-", 1, std::chrono::hours(1));
  const auto row = inspect_key(schema_.conninfo(), schema_.name(), "s", "k-0");
  ASSERT_TRUE(row);
  EXPECT_EQ(row->at("status"), "created");
  EXPECT_EQ(row->at("command_type"), "todo.create");
  EXPECT_EQ(row->at("result").at("entity").at("title"), "t");
  EXPECT_EQ(row->at("source").at("offset"), 0);
  EXPECT_EQ(row->at("fingerprint").get<std::string>().size(), 64u);
  EXPECT_FALSE(inspect_key(schema_.conninfo(), schema_.name(), "s", "absent"));
}

}  // namespace
}  // namespace dedup
