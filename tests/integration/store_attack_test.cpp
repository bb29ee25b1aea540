// Attacks on the store found by reviewing issue 8's fixes: a client resending a refused command
// 17 times in one batch, row-level security and regclass values that make one record raise a
// "deployment" SQLSTATE, an absurd key TTL. Each failed on 547af80.
#include <gtest/gtest.h>

#include <pqxx/pqxx>

#include <unistd.h>

#include "dedup/errors.hpp"
#include "dedup/json_text.hpp"
#include "dedup/postgres.hpp"
#include "dedup/processor.hpp"
#include "support/manual_clock.hpp"
#include "support/records.hpp"
#include "support/test_db.hpp"

namespace dedup {
namespace {

using test::record_raw;

class StoreAttackTest : public ::testing::Test {
 protected:
  void open(const std::string& conninfo_suffix = "") {
    store_ = std::make_unique<PostgresKeyStore>(
        PostgresOptions{.conninfo = schema_.conninfo() + conninfo_suffix, .schema = schema_.name()},
        catalog_);
    processor_ = std::make_unique<Processor>(catalog_, *store_, clock_, observer_, ParseOptions{});
  }

  InboundRecord specimen(const std::string& key, const std::string& payload,
                         const std::string& type = "specimen.create") {
    return record_raw(R"({"idempotency_key":")" + key + R"(","scope":"org-r","type":")" + type +
                          R"(","payload":)" + payload + "}",
                      {"commands", 0, next_offset_++});
  }
  long long count(std::string_view table) const {
    return schema_.scalar("SELECT count(*) FROM {schema}." + std::string(table));
  }
  static std::string describe(const CommandResult& r) {
    return truncate_utf8(to_json_text(r.to_json()), 600);
  }

  test::TestSchema schema_;
  CommandCatalog catalog_{CommandCatalog::from_yaml(schema_.hostile_config_yaml())};
  test::ManualClock clock_;
  Observer observer_;
  std::unique_ptr<PostgresKeyStore> store_;
  std::unique_ptr<Processor> processor_;
  std::int64_t next_offset_ = 0;
};

// A client that retries a command Postgres refuses (the retry loop idempotency keys exist for)
// puts 17 copies of it into one batch. Each copy becomes the leader of its own "round" after the
// previous one was refused and its key forgotten; round 16 throws TransientDatabaseError("key rows
// kept changing under the batch"), the store retries max_attempts times, and the worker backs off
// and retries the same batch forever: the partition is blocked by a record's content.
TEST_F(StoreAttackTest, SeventeenCopiesOfARefusedCommandInOneBatchAreAllRejected) {
  open();
  std::vector<InboundRecord> batch;
  for (int i = 0; i < 17; ++i) batch.push_back(specimen("retried", R"({"n":"not a number"})"));
  std::vector<CommandResult> results;
  ASSERT_NO_THROW(results = processor_->process(batch)) << "a record's content blocked the batch";
  ASSERT_EQ(results.size(), batch.size());
  for (const auto& r : results) EXPECT_EQ(r.status, Status::rejected) << describe(r);
}

// The same with 17 different refused payloads under one key (a client editing a bad command).
TEST_F(StoreAttackTest, SeventeenDifferentRefusedPayloadsUnderOneKeyAreAllRejected) {
  open();
  std::vector<InboundRecord> batch;
  for (int i = 0; i < 17; ++i) {
    batch.push_back(specimen("edited", R"({"n":"bad )" + std::to_string(i) + R"("})"));
  }
  std::vector<CommandResult> results;
  ASSERT_NO_THROW(results = processor_->process(batch));
  for (const auto& r : results) EXPECT_EQ(r.status, Status::rejected) << describe(r);
}

// Row-level security is the usual multi-tenant guard on entity tables. A record whose values fail
// a policy's WITH CHECK makes Postgres raise 42501 ("new row violates row-level security
// policy"), which classify_sqlstate calls a configuration fault: PermanentDatabaseError, the
// worker exits 1, and exits again on the same record after every restart (poison pill). The
// start-up checks pass (the role has INSERT on the table): the deployment is sound, the record
// is not.
TEST_F(StoreAttackTest, ARowLevelSecurityRefusalIsTheRecordsOwnOutcome) {
  const std::string role = "review_rls_" + std::to_string(::getpid());
  schema_.exec("DROP ROLE IF EXISTS " + role + "; CREATE ROLE " + role + " LOGIN; "
               "GRANT USAGE ON SCHEMA {schema} TO " + role + "; "
               "GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO " + role + "; "
               "GRANT ALL ON ALL SEQUENCES IN SCHEMA {schema} TO " + role + "; "
               "ALTER TABLE {schema}.specimens ENABLE ROW LEVEL SECURITY; "
               "CREATE POLICY small_n ON {schema}.specimens USING (true) "
               "WITH CHECK (n IS NULL OR n < 100)");
  open(" user=" + role);
  const std::vector<InboundRecord> batch = {specimen("ok", R"({"label":"fine","n":1})"),
                                            specimen("rls", R"({"label":"big","n":500})")};
  std::vector<CommandResult> results;
  try {
    results = processor_->process(batch);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "one record's values stop the worker: " << e.what();
  }
  if (results.size() == 2) {
    EXPECT_EQ(results[0].status, Status::created) << describe(results[0]);
    EXPECT_TRUE(results[1].status == Status::rejected || results[1].status == Status::conflict)
        << describe(results[1]);
  }
  // The same refusal met by the key_reused probe (reject_refused_reuses): write_entity reports
  // 42501 with its SQLSTATE, outcome_of_answer throws PermanentDatabaseError: exit 1.
  try {
    const auto reused = processor_->process(std::vector<InboundRecord>{
        specimen("ok", R"({"label":"other","n":700})")});
    EXPECT_EQ(reused[0].status, Status::rejected) << describe(reused[0]);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "the key_reused probe stops the worker: " << e.what();
  }
  processor_.reset();
  store_.reset();
  schema_.exec("DROP OWNED BY " + role + "; DROP ROLE " + role);
}

// A value Postgres resolves by name (regclass, regproc, regtype...): an unknown name raises 42P01
// / 42883, also classified as configuration: exit 1 on every restart. Same for a trigger that
// routes rows to a table named after a value (EXECUTE format('INSERT INTO %I', ...)).
TEST_F(StoreAttackTest, AnUnknownNameInARegclassColumnIsTheRecordsOwnOutcome) {
  schema_.exec("ALTER TABLE {schema}.specimens ADD COLUMN rel regclass");
  open();
  const std::vector<InboundRecord> batch = {specimen("ok", R"({"label":"fine"})"),
                                            specimen("rel", R"({"rel":"no_such_table"})")};
  std::vector<CommandResult> results;
  try {
    results = processor_->process(batch);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "one record's values stop the worker: " << e.what();
  }
  if (results.size() == 2) {
    EXPECT_EQ(results[0].status, Status::created) << describe(results[0]);
    EXPECT_EQ(results[1].status, Status::rejected) << describe(results[1]);
  }
}

}  // namespace
}  // namespace dedup

namespace dedup {
namespace {

// --key-ttl is bounded only by parse_duration (int64 milliseconds, ~292 million years), and
// PostgresKeyStore only checks it is positive. now + key_ttl in microseconds overflows above
// ~106,751,991 days (signed overflow: UB; in practice it wraps): with 213503982d expires_at lands 8 h in the past, every
// key is born expired, and the next record with the same key re-claims it and writes a SECOND
// entity. (Values that do not overflow but pass year 294276 make every claim fail with 22008, a
// "record fault": the halving net then rejects every record.) Refuse such a TTL at start-up.
TEST(StoreAttackConfigTest, AnAbsurdKeyTtlIsRefusedInsteadOfBreakingDeduplication) {
  test::TestSchema schema;
  const auto catalog = CommandCatalog::from_yaml(schema.hostile_config_yaml());
  try {
    PostgresKeyStore store({.conninfo = schema.conninfo(), .schema = schema.name(),
                            .key_ttl = std::chrono::hours(24) * 213'503'982LL},
                           catalog);
    test::ManualClock clock;
    Observer observer;
    Processor processor(catalog, store, clock, observer, ParseOptions{});
    const std::string value =
        R"({"idempotency_key":"k","scope":"s","type":"specimen.create","payload":{"n":1}})";
    const std::vector<InboundRecord> first = {record_raw(value, {"commands", 0, 0})};
    const auto a = processor.process(first);
    const std::vector<InboundRecord> again = {record_raw(value, {"commands", 0, 1})};  // a resend
    const auto b = processor.process(again);
    ADD_FAILURE() << "accepted; first " << to_string(a[0].status) << ", resend "
                  << to_string(b[0].status) << "; entities: "
                  << schema.scalar("SELECT count(*) FROM {schema}.specimens") << "; expires_at - now: "
                  << schema.scalar("SELECT extract(epoch FROM max(expires_at) - now())::bigint "
                                   "FROM {schema}.idempotency_keys") << " s";
  } catch (const ConfigError& e) {
    SUCCEED() << e.what();
  }
}

}  // namespace
}  // namespace dedup
