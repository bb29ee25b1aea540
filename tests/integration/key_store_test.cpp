// Every outcome of SPEC §2 against a real Postgres, through the real Processor and
// PostgresKeyStore.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "dedup/errors.hpp"
#include "dedup/postgres.hpp"
#include "dedup/processor.hpp"
#include "support/manual_clock.hpp"
#include "support/records.hpp"
#include "support/test_db.hpp"

namespace dedup {
namespace {

using json = nlohmann::json;
using test::record;

class KeyStoreTest : public ::testing::Test {
 protected:
  explicit KeyStoreTest(std::chrono::seconds ttl = std::chrono::hours(24 * 7))
      : store_({.conninfo = schema_.conninfo(), .schema = schema_.name(), .key_ttl = ttl},
               schema_.catalog()),
        processor_(schema_.catalog(), store_, clock_, observer_, ParseOptions{}) {}

  // Processes one batch; each body gets the next offset of partition 0 unless positioned.
  std::vector<CommandResult> process(std::vector<InboundRecord> records) {
    return processor_.process(records);
  }
  CommandResult process_one(const json& body) { return process({next(body)}).at(0); }
  InboundRecord next(const json& body, std::vector<RecordHeader> headers = {}) {
    return record(body, {"commands", 0, next_offset_++}, std::move(headers));
  }

  static json todo(const std::string& key, const std::string& title, const std::string& scope = "org-1") {
    return {{"idempotency_key", key}, {"scope", scope}, {"type", "todo.create"},
            {"payload", {{"title", title}, {"description", "From store"}}}};
  }
  static json appointment(const std::string& key, int professional, const std::string& starts,
                          const std::string& ends) {
    return {{"idempotency_key", key}, {"scope", "clinic-1"}, {"type", "appointment.create"},
            {"payload", {{"professional_id", professional}, {"starts_at", starts}, {"ends_at", ends}}}};
  }
  long long todos() const { return schema_.scalar("SELECT count(*) FROM {schema}.todos"); }
  long long keys() const { return schema_.scalar("SELECT count(*) FROM {schema}.idempotency_keys"); }

  test::TestSchema schema_;
  test::ManualClock clock_;
  Observer observer_;
  PostgresKeyStore store_;
  Processor processor_;
  std::int64_t next_offset_ = 0;
};

// The result document without processed_at: what must be identical when a record is re-read.
json stable(const CommandResult& result) {
  auto document = result.to_json();
  document.erase("processed_at");
  return document;
}

TEST_F(KeyStoreTest, FirstDeliveryCreatesAndAnotherRecordWithTheSameKeyIsADuplicate) {
  const auto created = process_one(todo("k-1", "Buy milk"));
  ASSERT_EQ(created.status, Status::created) << created.to_json();
  EXPECT_FALSE(created.replayed);
  EXPECT_EQ(created.entity.at("title"), "Buy milk");
  EXPECT_TRUE(created.entity.at("id").is_number_integer());
  EXPECT_TRUE(created.error.is_null());

  clock_.advance(std::chrono::seconds(5));
  const auto duplicate = process_one(todo("k-1", "Buy milk"));
  EXPECT_EQ(duplicate.status, Status::duplicate);
  EXPECT_TRUE(duplicate.replayed);
  EXPECT_EQ(duplicate.entity, created.entity);
  EXPECT_EQ(duplicate.first_processed_at, created.first_processed_at);
  EXPECT_EQ(duplicate.processed_at, created.processed_at + std::chrono::seconds(5));
  EXPECT_EQ(duplicate.source.offset, 1);
  EXPECT_EQ(todos(), 1);
  EXPECT_EQ(keys(), 1);
}

TEST_F(KeyStoreTest, TheSameRecordReadAgainAfterACrashGetsTheIdenticalCreatedResult) {
  const auto original = next(todo("k-1", "Buy milk"));
  const auto first = process({original}).at(0);
  ASSERT_EQ(first.status, Status::created);
  clock_.advance(std::chrono::seconds(30));
  const auto again = process({original}).at(0);  // redelivered: same topic, partition, offset
  EXPECT_EQ(again.status, Status::created);
  EXPECT_FALSE(again.replayed);
  EXPECT_EQ(stable(again), stable(first));
  EXPECT_NE(again.processed_at, first.processed_at);
  // ... while another record with that key is a duplicate.
  EXPECT_EQ(process_one(todo("k-1", "Buy milk")).status, Status::duplicate);
  EXPECT_EQ(todos(), 1);
}

TEST_F(KeyStoreTest, AKeyReusedWithADifferentPayloadIsRefusedAndWritesNothing) {
  const auto created = process_one(todo("k-1", "Buy milk"));
  const auto reused = process_one(todo("k-1", "Buy bread"));
  EXPECT_EQ(reused.status, Status::key_reused);
  EXPECT_FALSE(reused.replayed);
  EXPECT_EQ(reused.error.at("code"), "key_reused");
  EXPECT_TRUE(reused.entity.is_null());
  EXPECT_EQ(reused.first_processed_at, created.first_processed_at);
  EXPECT_EQ(todos(), 1);
}

TEST_F(KeyStoreTest, TheSameKeyInTwoScopesIsTwoCommandsAndTheSecondIsFlaggedCrossScope) {
  const auto first = process_one(todo("shared-key", "A", "org-1"));
  const auto second = process_one(todo("shared-key", "A", "org-2"));
  EXPECT_EQ(first.status, Status::created);
  EXPECT_EQ(second.status, Status::created);
  EXPECT_NE(first.entity.at("id"), second.entity.at("id"));
  EXPECT_FALSE(first.cross_scope_key_reuse);
  EXPECT_TRUE(second.cross_scope_key_reuse);
  // A duplicate in either scope is not a new cross-scope reuse.
  EXPECT_FALSE(process_one(todo("shared-key", "A", "org-2")).cross_scope_key_reuse);
  // Two scopes claiming one key inside one batch are caught too.
  const auto batch = process({next(todo("other", "B", "org-1")), next(todo("other", "B", "org-3"))});
  EXPECT_FALSE(batch[0].cross_scope_key_reuse);
  EXPECT_TRUE(batch[1].cross_scope_key_reuse);
  EXPECT_EQ(todos(), 4);
}

TEST_F(KeyStoreTest, FingerprintIgnoresKeyOrderButNotArrayOrderTypesOrValues) {
  auto with_payload = [](const json& payload) {
    return json{{"idempotency_key", "fp"}, {"scope", "s"}, {"type", "todo.create"}, {"payload", payload}};
  };
  ASSERT_EQ(process_one(with_payload(json::parse(R"({"title":"t","priority":1})"))).status,
            Status::created);
  EXPECT_EQ(process_one(with_payload(json::parse(R"({"priority":1,"title":"t"})"))).status,
            Status::duplicate);
  EXPECT_EQ(process_one(with_payload(json::parse(R"({"title":"t","priority":"1"})"))).status,
            Status::key_reused);
  EXPECT_EQ(process_one(with_payload(json::parse(R"({"title":"t","priority":2})"))).status,
            Status::key_reused);
  EXPECT_EQ(process_one(with_payload(json::parse(R"({"title":"t"})"))).status, Status::key_reused);
  EXPECT_EQ(todos(), 1);
}

TEST_F(KeyStoreTest, ArrayOrderChangesTheFingerprint) {
  auto with_tags = [](const json& tags) {
    return json{{"idempotency_key", "arr"}, {"scope", "s"}, {"type", "conversation.create"},
                {"payload", {{"context_type", "ticket"}, {"context_id", "1"}, {"created_by", "u"},
                             {"title", tags.dump()}}}};
  };
  ASSERT_EQ(process_one(with_tags({1, 2})).status, Status::created);
  EXPECT_EQ(process_one(with_tags({1, 2})).status, Status::duplicate);
  EXPECT_EQ(process_one(with_tags({2, 1})).status, Status::key_reused);
}

TEST_F(KeyStoreTest, KeysAndScopesWithQuotesAndBackslashesRoundTrip) {
  const std::string key = R"(k"ey\with "quotes" and \backslashes\)";
  const std::string scope = R"(org "\ ünïcödé)";
  const auto first = process_one(todo(key, "T", scope));
  ASSERT_EQ(first.status, Status::created) << first.to_json();
  EXPECT_EQ(*first.idempotency_key, key);
  EXPECT_EQ(*first.scope, scope);
  EXPECT_EQ(process_one(todo(key, "T", scope)).status, Status::duplicate);
  EXPECT_EQ(schema_.scalar("SELECT count(*) FROM {schema}.idempotency_keys WHERE idempotency_key = "
                           "'k\"ey\\with \"quotes\" and \\backslashes\\'"),
            1);
}

TEST_F(KeyStoreTest, TheSameKeyTwiceInOneBatch) {
  const auto results = process({next(todo("dup", "T")), next(todo("dup", "T")),
                                next(todo("dup", "changed")), next(todo("solo", "S"))});
  ASSERT_EQ(results.size(), 4u);
  EXPECT_EQ(results[0].status, Status::created);
  EXPECT_EQ(results[1].status, Status::duplicate);
  EXPECT_TRUE(results[1].replayed);
  EXPECT_EQ(results[1].entity, results[0].entity);
  EXPECT_EQ(results[2].status, Status::key_reused);
  EXPECT_EQ(results[3].status, Status::created);
  EXPECT_EQ(todos(), 2);
}

TEST_F(KeyStoreTest, AConstraintViolationIsAConflictForThatCommandOnlyAndIsReplayed) {
  const auto slot_taken = next(appointment("a-1", 7, "2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z"));
  const auto overlapping = next(appointment("a-2", 7, "2026-12-01T10:30:00Z", "2026-12-01T11:30:00Z"));
  const auto other_pro = next(appointment("a-3", 8, "2026-12-01T10:30:00Z", "2026-12-01T11:30:00Z"));
  const auto results = process({slot_taken, overlapping, other_pro});
  EXPECT_EQ(results[0].status, Status::created);
  ASSERT_EQ(results[1].status, Status::conflict) << results[1].to_json();
  EXPECT_FALSE(results[1].replayed);
  EXPECT_EQ(results[1].error.at("code"), "conflict");
  EXPECT_EQ(results[1].error.at("constraint"), "appointments_no_overlap");
  EXPECT_EQ(results[1].error.at("sqlstate"), "23P01");
  EXPECT_TRUE(results[1].entity.is_null());
  EXPECT_EQ(results[2].status, Status::created);
  EXPECT_EQ(schema_.scalar("SELECT count(*) FROM {schema}.appointments"), 2);
  EXPECT_EQ(keys(), 3);  // the conflict's key stores its final result

  // Another record with the conflicting key: the stored conflict, replayed.
  const auto retry = process_one(appointment("a-2", 7, "2026-12-01T10:30:00Z", "2026-12-01T11:30:00Z"));
  EXPECT_EQ(retry.status, Status::conflict);
  EXPECT_TRUE(retry.replayed);
  EXPECT_EQ(retry.error, results[1].error);
  // The conflicting record itself, redelivered: its identical original result.
  const auto redelivered = process({overlapping}).at(0);
  EXPECT_EQ(stable(redelivered), stable(results[1]));
  EXPECT_EQ(schema_.scalar("SELECT count(*) FROM {schema}.appointments"), 2);
}

TEST_F(KeyStoreTest, NaturalKeyCatchesADuplicateWithoutAClientKey) {
  const json conversation = {{"scope", "org-1"}, {"type", "conversation.create"},
                             {"payload", {{"context_type", "ticket"}, {"context_id", "42"},
                                          {"created_by", "u-1"}, {"title", "Help"}}}};
  const auto first = process_one(conversation);
  ASSERT_EQ(first.status, Status::created) << first.to_json();
  EXPECT_TRUE(first.natural_key);
  EXPECT_EQ(first.idempotency_key->rfind("nk:", 0), 0u);
  const auto second = process_one(conversation);
  EXPECT_EQ(second.status, Status::duplicate);
  EXPECT_EQ(second.entity, first.entity);
  // The same conversation under an explicit client key hits the table's unique natural key.
  auto keyed = conversation;
  keyed["idempotency_key"] = "client-key";
  const auto conflict = process_one(keyed);
  EXPECT_EQ(conflict.status, Status::conflict);
  EXPECT_EQ(conflict.error.at("constraint"), "conversations_natural_key");
  EXPECT_EQ(schema_.scalar("SELECT count(*) FROM {schema}.conversations"), 1);
}

TEST_F(KeyStoreTest, TheSameNaturalKeyInTwoScopesIsNotCrossScopeReuse) {
  // Different tenants with the same field values: two commands, not a leaked client key. (The
  // entity table's unique natural key spans tenants here, so the second is a conflict.)
  auto conversation = [](const std::string& scope) {
    return json{{"scope", scope}, {"type", "conversation.create"},
                {"payload", {{"context_type", "ticket"}, {"context_id", "7"}, {"created_by", "u"}}}};
  };
  const auto first = process_one(conversation("org-1"));
  const auto second = process_one(conversation("org-2"));
  EXPECT_EQ(first.idempotency_key, second.idempotency_key);
  EXPECT_EQ(second.status, Status::conflict);
  EXPECT_FALSE(first.cross_scope_key_reuse);
  EXPECT_FALSE(second.cross_scope_key_reuse);
}

TEST_F(KeyStoreTest, APayloadPostgresRefusesIsRejectedAndLeavesTheKeyFree) {
  auto bad = todo("k-bad", "T");
  bad["payload"]["due"] = "not a date";
  auto unknown_column = todo("k-col", "T");
  unknown_column["payload"]["no_such_column"] = 1;
  const auto results = process({next(bad), next(unknown_column), next(todo("k-ok", "fine"))});
  EXPECT_EQ(results[0].status, Status::rejected);
  ASSERT_TRUE(results[0].rejection);
  EXPECT_EQ(results[0].rejection->code, RejectCode::invalid_payload);
  EXPECT_NE(results[0].rejection->message.find("22007"), std::string::npos)
      << results[0].rejection->message;
  EXPECT_EQ(results[1].status, Status::rejected);
  EXPECT_NE(results[1].rejection->message.find("no_such_column"), std::string::npos);
  EXPECT_EQ(results[2].status, Status::created);
  EXPECT_EQ(todos(), 1);
  EXPECT_EQ(keys(), 1);
  // Nothing was stored for the refused key: a corrected command may use it.
  auto fixed = todo("k-bad", "T");
  fixed["payload"]["due"] = "2026-12-24";
  EXPECT_EQ(process_one(fixed).status, Status::created);
}

TEST_F(KeyStoreTest, ARepeatOfARefusedKeyInTheSameBatchGetsItsOwnChance) {
  auto bad = todo("k", "T");
  bad["payload"]["due"] = "not a date";
  const auto results = process({next(bad), next(todo("k", "T"))});
  EXPECT_EQ(results[0].status, Status::rejected);
  EXPECT_EQ(results[1].status, Status::created);
  EXPECT_EQ(todos(), 1);
}

TEST_F(KeyStoreTest, ValidationRejectionsNeverReachTheDatabase) {
  const auto results = process({test::record_raw(R"({"not json)", {"commands", 0, 99}),
                                next(todo("k-1", "T"))});
  EXPECT_EQ(results[0].status, Status::rejected);
  EXPECT_EQ(results[0].rejection->code, RejectCode::invalid_json);
  EXPECT_EQ(results[1].status, Status::created);
  EXPECT_EQ(keys(), 1);
}

class ShortTtlTest : public KeyStoreTest {
 protected:
  ShortTtlTest() : KeyStoreTest(std::chrono::seconds(60)) {}
};

TEST_F(ShortTtlTest, AnExpiredKeyIsTreatedAsAbsentAndReclaimed) {
  const auto first = process_one(todo("k-1", "Buy milk"));
  clock_.advance(std::chrono::seconds(59));
  EXPECT_EQ(process_one(todo("k-1", "Buy milk")).status, Status::duplicate);
  clock_.advance(std::chrono::seconds(2));  // 61 s after the claim: expired
  const auto again = process_one(todo("k-1", "Buy bread"));
  EXPECT_EQ(again.status, Status::created);  // not key_reused: the old key is gone
  EXPECT_NE(again.entity.at("id"), first.entity.at("id"));
  EXPECT_EQ(todos(), 2);
  EXPECT_EQ(keys(), 1);
  EXPECT_EQ(process_one(todo("k-1", "Buy bread")).status, Status::duplicate);
}

TEST(KeyStoreStartup, RefusesAnUnmigratedSchemaAndMissingTablesNamingTheField) {
  test::TestSchema schema;
  const auto catalog = CommandCatalog::from_yaml("commands:\n  x.create:\n    table: public.nope_nope\n");
  try {
    PostgresKeyStore store({.conninfo = schema.conninfo(), .schema = schema.name()}, catalog);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), "commands.x.create.table");
  }
  try {
    PostgresKeyStore store({.conninfo = schema.conninfo(), .schema = "never_migrated"}, schema.catalog());
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), "--db-schema");
  }
  const auto bad_sql = CommandCatalog::from_yaml(
      "commands:\n  y.create:\n    sql: INSERT INTO nowhere (a) SELECT 1 FROM jsonb_to_record($1) AS x(a int) RETURNING *\n");
  try {
    PostgresKeyStore store({.conninfo = schema.conninfo(), .schema = schema.name()}, bad_sql);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), "commands.y.create.sql");
  }
  // Prepared as it runs (wrapped in WITH entity AS (...)): a data-modifying WITH prepares alone
  // but not wrapped, and would have refused every command of the type at run time.
  const auto nested_with = CommandCatalog::from_yaml(
      "commands:\n  y.create:\n    sql: WITH e AS (INSERT INTO " + schema.name() +
      ".todos (title) SELECT title FROM jsonb_to_record($1) AS x(title text) RETURNING *) "
      "SELECT * FROM e\n");
  try {
    PostgresKeyStore store({.conninfo = schema.conninfo(), .schema = schema.name()}, nested_with);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), "commands.y.create.sql");
    EXPECT_NE(std::string(e.what()).find("top level"), std::string::npos) << e.what();
  }
}

TEST(KeyStoreStartup, AKeyTtlUnderAMinuteOrPastAHundredYearsNamesTheFlag) {
  test::TestSchema schema;
  for (const std::chrono::seconds ttl :
       {std::chrono::seconds(0), std::chrono::seconds(59), std::chrono::seconds(-5),
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::days(36501))}) {
    try {
      PostgresKeyStore store(
          {.conninfo = schema.conninfo(), .schema = schema.name(), .key_ttl = ttl},
          schema.catalog());
      FAIL() << "expected ConfigError for a TTL of " << ttl.count() << " s";
    } catch (const ConfigError& e) {
      EXPECT_EQ(e.field(), "--key-ttl");
    }
  }
  EXPECT_NO_THROW(PostgresKeyStore(
      {.conninfo = schema.conninfo(), .schema = schema.name(), .key_ttl = std::chrono::minutes(1)},
      schema.catalog()));
}

TEST(KeyStoreStartup, AnUnreachableServerIsTransient) {
  const auto catalog = CommandCatalog::from_yaml("commands:\n  t.create:\n    table: t\n");
  EXPECT_THROW(PostgresKeyStore({.conninfo = "host=127.0.0.1 port=1 connect_timeout=2"}, catalog),
               TransientDatabaseError);
}

}  // namespace
}  // namespace dedup
