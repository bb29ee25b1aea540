// Hostile records against the real Postgres key store (issue 8): every value Postgres refuses is
// a final outcome of its own record, the rest of the batch goes on, numbers are exact, results
// are the same when a record is read again, and the fast path never writes an entity for a key
// another transaction claimed.
#include <gtest/gtest.h>

#include <pqxx/pqxx>
#include <unistd.h>

#include <chrono>
#include <future>
#include <map>
#include <memory>
#include <thread>

#include "dedup/errors.hpp"
#include "dedup/json_text.hpp"
#include "dedup/postgres.hpp"
#include "dedup/processor.hpp"
#include "support/manual_clock.hpp"
#include "support/records.hpp"
#include "support/test_db.hpp"

namespace dedup {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;
using test::record_raw;

class HostileStoreTest : public ::testing::Test {
 protected:
  HostileStoreTest() { open(); }

  // (Re)opens the store and the processor; `conninfo_suffix` e.g. " user=<role>".
  void open(const std::string& conninfo_suffix = "") {
    processor_.reset();
    store_ = std::make_unique<PostgresKeyStore>(
        PostgresOptions{.conninfo = schema_.conninfo() + conninfo_suffix, .schema = schema_.name()},
        catalog_);
    processor_ = std::make_unique<Processor>(catalog_, *store_, clock_, observer_, ParseOptions{});
  }

  // A record whose value is the envelope around `payload` (raw JSON text, as a client sent it).
  InboundRecord specimen(const std::string& key, const std::string& payload,
                         const std::string& type = "specimen.create") {
    return record_raw(R"({"idempotency_key":")" + key + R"(","scope":"org-h","type":")" + type +
                          R"(","payload":)" + payload + "}",
                      {"commands", 0, next_offset_++});
  }
  std::vector<CommandResult> process(std::vector<InboundRecord> records) {
    return processor_->process(records);
  }
  // For attacks whose failure mode is an exception (the worker would exit): reported as a failure
  // naming it, with no results.
  std::vector<CommandResult> process_or_fail(std::vector<InboundRecord> records) {
    try {
      return process(std::move(records));
    } catch (const std::exception& e) {
      ADD_FAILURE() << "a record's content stops the worker: " << e.what();
      return {};
    }
  }
  std::string text(std::string_view sql) const {
    pqxx::connection c(schema_.conninfo());
    pqxx::read_transaction txn(c);
    const auto rows = txn.exec(std::string(sql).replace(sql.find("{schema}"), 8, schema_.name()));
    return rows.empty() || rows[0][0].is_null() ? std::string("<null>") : rows[0][0].c_str();
  }
  long long count(std::string_view table) const {
    return schema_.scalar("SELECT count(*) FROM {schema}." + std::string(table));
  }

  test::TestSchema schema_;
  CommandCatalog catalog_{CommandCatalog::from_yaml(schema_.hostile_config_yaml())};
  test::ManualClock clock_;
  Observer observer_;
  std::unique_ptr<PostgresKeyStore> store_;
  std::unique_ptr<Processor> processor_;
  std::int64_t next_offset_ = 0;
};

// Text that does not compress (TOAST would shrink a run of one letter below the index limit).
std::string incompressible(std::size_t size) {
  std::string out;
  std::uint64_t state = 42;
  while (out.size() < size) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    out += static_cast<char>('a' + (state >> 33) % 26);
  }
  return out;
}

json stable(const CommandResult& result) {
  auto document = result.to_json();
  document.erase("processed_at");
  return document;
}

std::string describe(const CommandResult& r) { return truncate_utf8(to_json_text(r.to_json()), 600); }

// Regression (issue 8, defect 3): each of these, alone among valid records, stopped the worker or
// blocked the partition. Now each is its record's own final outcome, and the valid records of the
// batch are written.
TEST_F(HostileStoreTest, EveryRefusalIsItsRecordsOwnOutcomeAndTheBatchGoesOn) {
  struct Case {
    std::string key;
    std::string payload;
    Status status;
    std::string detail;  // a substring of error.message (or of the entity, when created)
    std::string type = "specimen.create";
  };
  const std::vector<Case> cases = {
      {"valid-1", R"({"label":"one"})", Status::created, "\"one\""},
      {"identity", R"({"id":5,"label":"two"})", Status::rejected, "428C9"},
      {"huge-index", R"({"label":")" + incompressible(9000) + R"("})", Status::rejected, "54000"},
      {"numeric-string", R"({"amount":"1e400"})", Status::created, "1" + std::string(400, '0')},
      {"numeric-overflow", R"({"amount":1e200000})", Status::rejected, "numeric"},
      {"trigger", R"({"label":"forbidden"})", Status::rejected, "AB123"},
      {"fk", R"({"owner_id":999})", Status::conflict, "specimens_owner_id_fkey"},
      {"check", R"({"n":-1})", Status::conflict, "specimens_n_check"},
      {"not-null", R"({"note":null})", Status::conflict, "23502"},
      {"enum", R"({"kind":"weird"})", Status::rejected, "22P02"},
      {"date", R"({"born":"2026-02-30"})", Status::rejected, "SQLSTATE 22"},
      {"unknown-column", R"({"nope":1})", Status::rejected, "42703"},
      {"int-overflow", R"({"n":99999999999})", Status::rejected, "22003"},
      {"sql-mode-bad", R"({"label":"x","n":"abc"})", Status::rejected, "22P02", "specimen.sql"},
      {"valid-2", R"({"label":"three","amount":12345678901234567.89})", Status::created,
       "12345678901234567.89"},
  };
  std::vector<InboundRecord> batch;
  for (const auto& c : cases) batch.push_back(specimen(c.key, c.payload, c.type));
  const auto results = process(batch);
  ASSERT_EQ(results.size(), cases.size());
  std::size_t created = 0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].key + ": " + describe(results[i]));
    EXPECT_EQ(results[i].status, cases[i].status);
    const auto where = results[i].status == Status::created ? to_json_text(results[i].entity)
                                                            : to_json_text(results[i].error);
    EXPECT_NE(where.find(cases[i].detail), std::string::npos);
    if (results[i].status == Status::rejected) {
      ASSERT_TRUE(results[i].rejection);
      EXPECT_EQ(results[i].rejection->code, RejectCode::invalid_payload);
    }
    if (results[i].status == Status::created) ++created;
  }
  // Entities equal the created keys; conflicts are stored, rejections are not.
  EXPECT_EQ(count("specimens"), static_cast<long long>(created));
  EXPECT_EQ(schema_.scalar("SELECT count(*) FROM {schema}.idempotency_keys WHERE status = 'created'"),
            static_cast<long long>(created));
  EXPECT_EQ(schema_.scalar("SELECT count(*) FROM {schema}.idempotency_keys WHERE status = 'conflict'"), 3);

  // The same records read again (a crash before the offset commit): identical results.
  clock_.advance(10s);
  const auto again = process(batch);
  for (std::size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].key);
    EXPECT_EQ(stable(again[i]), stable(results[i]));
  }
  EXPECT_EQ(count("specimens"), static_cast<long long>(created));
}

// The net under everything (docs/design.md): a record fault that no step pins on one command
// fails the whole claim-first transaction; the store halves the batch until the fault is one
// command's. Here an SQL-mode statement returns JSON nested deeper than the store reads (512
// levels): that command is rejected, its entity rolled back, every other command written, and
// reading the batch again gives the same results.
TEST_F(HostileStoreTest, AFaultNoStepPinsOnACommandIsIsolatedByHalvingTheBatch) {
  std::vector<InboundRecord> batch;
  for (int i = 0; i < 7; ++i) {
    batch.push_back(specimen("shallow-" + std::to_string(i),
                             R"({"label":"s)" + std::to_string(i) + R"(","depth":3})",
                             "specimen.nested"));
  }
  batch.insert(batch.begin() + 4, specimen("deep", R"({"label":"d","depth":600})", "specimen.nested"));
  batch.push_back(specimen("table-mode", R"({"label":"t"})"));
  const auto results = process(batch);
  ASSERT_EQ(results.size(), batch.size());
  for (std::size_t i = 0; i < results.size(); ++i) {
    SCOPED_TRACE(describe(results[i]));
    if (results[i].idempotency_key == "deep") {
      EXPECT_EQ(results[i].status, Status::rejected);
      EXPECT_NE(results[i].error.at("message").get<std::string>().find("512"), std::string::npos);
      EXPECT_NE(results[i].error.at("message").get<std::string>().find("DD002"), std::string::npos);
    } else {
      EXPECT_EQ(results[i].status, Status::created);
    }
  }
  EXPECT_EQ(count("specimens"), 8) << "the deep command's entity must be rolled back";
  EXPECT_EQ(schema_.scalar("SELECT count(*) FROM {schema}.idempotency_keys"), 8);
  clock_.advance(5s);
  const auto again = process(batch);
  for (std::size_t i = 0; i < results.size(); ++i) EXPECT_EQ(stable(again[i]), stable(results[i]));
  EXPECT_EQ(count("specimens"), 8);
}

// Regression (issue 8, defect 4): numbers were written to Postgres as doubles.
TEST_F(HostileStoreTest, NumbersAreWrittenAndReturnedExactly) {
  const auto first = process({specimen("money", R"({"amount":12345678901234567.89,"n":1e2})")});
  ASSERT_EQ(first[0].status, Status::created) << describe(first[0]);
  EXPECT_EQ(text("SELECT amount::text FROM {schema}.specimens"), "12345678901234567.89");
  EXPECT_EQ(text("SELECT n::text FROM {schema}.specimens"), "100");  // 1e2 is an integer value
  const auto entity = to_json_text(first[0].entity);
  EXPECT_NE(entity.find(R"("amount":12345678901234567.89)"), std::string::npos) << entity;

  // A cent less under the same key is another payload, not a duplicate.
  const auto edited = process({specimen("money", R"({"amount":12345678901234567.80,"n":1e2})")});
  EXPECT_EQ(edited[0].status, Status::key_reused) << describe(edited[0]);

  const auto tiny = process({specimen("tiny", R"({"amount":1e-400})")});
  ASSERT_EQ(tiny[0].status, Status::created) << describe(tiny[0]);
  EXPECT_EQ(text("SELECT (amount > 0)::text FROM {schema}.specimens WHERE amount < 1"), "true");

  // Numeric beyond 64 bits, returned exactly, and replayed exactly from the stored result.
  const auto big = process({specimen("big", R"({"amount":)" + std::string(40, '9') + "}")});
  ASSERT_EQ(big[0].status, Status::created) << describe(big[0]);
  EXPECT_NE(to_json_text(big[0].entity).find(std::string(40, '9')), std::string::npos);
  const auto duplicate = process({specimen("big", R"({"amount":)" + std::string(40, '9') + "}")});
  EXPECT_EQ(duplicate[0].status, Status::duplicate);
  EXPECT_EQ(to_json_text(duplicate[0].entity), to_json_text(big[0].entity));
}

// Regression (issue 8, defect 5): A (key K, a payload Postgres refuses) was `rejected` and B (key
// K, a valid other payload) `created`; read again, A became `key_reused`. A refused payload is
// rejected whatever the state of its key.
TEST_F(HostileStoreTest, ARefusedPayloadIsRejectedWhetherOrNotItsKeyWasClaimedSince) {
  const auto a = specimen("K", R"({"n":"not a number"})");
  const auto b = specimen("K", R"({"label":"valid"})");
  const auto first = process({a, b});
  ASSERT_EQ(first[0].status, Status::rejected) << describe(first[0]);
  ASSERT_EQ(first[1].status, Status::created) << describe(first[1]);

  clock_.advance(5s);
  const auto again = process({a});  // read again after a crash
  EXPECT_EQ(stable(again[0]), stable(first[0])) << describe(again[0]);
  const auto both = process({a, b});
  EXPECT_EQ(stable(both[0]), stable(first[0]));
  EXPECT_EQ(stable(both[1]), stable(first[1]));
  // A later record with a refused payload under K: rejected too, not key_reused.
  const auto later = process({specimen("K", R"({"n":"nan?"})")});
  EXPECT_EQ(later[0].status, Status::rejected) << describe(later[0]);
  // ...while a valid other payload under K is key_reused, and nothing was written by the probes.
  const auto reuse = process({specimen("K", R"({"label":"other"})")});
  EXPECT_EQ(reuse[0].status, Status::key_reused);
  EXPECT_EQ(count("specimens"), 1);
}

// Regression (issue 8, defect 2): the fast path read its guard only through joins with the
// claimed and existing rows. When a concurrent transaction claimed every key of the batch, both
// were empty, the guard never ran and the entity INSERT committed: two entities for one key.
TEST_F(HostileStoreTest, FastPathWritesNoEntityForAKeyAnotherTransactionClaimed) {
  // Another worker's claim, held open: the store's INSERT ... ON CONFLICT will wait for it.
  pqxx::connection other(schema_.conninfo());
  pqxx::work claim(other);
  claim.exec(
      "INSERT INTO \"" + schema_.name() +
      "\".idempotency_keys (scope, idempotency_key, command_type, fingerprint, status, result, "
      "created_at, expires_at, source_topic, source_partition, source_offset) VALUES ('org-h', "
      "'raced', 'specimen.create', decode(repeat('ab', 32), 'hex'), 'created', "
      "'{\"entity\": {\"id\": -1}, \"error\": null}', now(), now() + interval '1 day', 'commands', "
      "1, 0)");
  const std::string pid = std::to_string(other.backendpid());

  auto applied = std::async(std::launch::async, [&] {
    return process({specimen("raced", R"({"label":"mine"})")});
  });
  // Wait until the store's statement provably waits on the other transaction's row.
  pqxx::connection observer_connection(schema_.conninfo());
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  bool waiting = false;
  while (!waiting && std::chrono::steady_clock::now() < deadline) {
    pqxx::nontransaction look(observer_connection);
    waiting = look.exec("SELECT count(*) FROM pg_stat_activity WHERE " + pid +
                        " = ANY(pg_blocking_pids(pid))")[0][0].as<int>() > 0;
    if (!waiting) std::this_thread::sleep_for(20ms);
  }
  ASSERT_TRUE(waiting) << "the store never waited on the held claim";
  claim.commit();

  const auto results = applied.get();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].status, Status::key_reused) << describe(results[0]);
  EXPECT_EQ(count("specimens"), 0) << "an entity was written for a key another transaction owns";
  EXPECT_EQ(store_->fast_path_fallbacks(), 1u) << "the guard must have fired";
}

// Found reviewing issue 8's fixes: a client retrying a command Postgres refuses puts many copies
// of it in one batch, each the leader of a new "round" once the previous copy is refused; the
// round limit (meant for key rows changing under the batch) turned that into a transient error
// retried forever. Rounds that answer a command no longer count.
TEST_F(HostileStoreTest, ManyCopiesOfARefusedCommandInOneBatchAreAllRejected) {
  std::vector<InboundRecord> copies;
  std::vector<InboundRecord> edits;  // a client editing a bad command under one key
  for (int i = 0; i < 20; ++i) {
    copies.push_back(specimen("retried", R"({"n":"not a number"})"));
    edits.push_back(specimen("edited", R"({"n":"bad )" + std::to_string(i) + R"("})"));
  }
  for (const auto* batch : {&copies, &edits}) {
    const auto results = process_or_fail(*batch);
    ASSERT_EQ(results.size(), batch->size());
    for (const auto& r : results) EXPECT_EQ(r.status, Status::rejected) << describe(r);
  }
}

// Found reviewing issue 8's fixes: some "deployment" SQLSTATEs are raised by one record's values.
// A row failing a row-level security policy's WITH CHECK raises 42501 (which libpqxx 6.4 throws
// without its SQLSTATE); a regclass value naming nothing raises 42P01. Both stopped the worker on
// every restart. Now the start-up checks run again on a fresh connection: they pass, so the
// record is rejected; the probe of a key_reused command meets the same refusal and agrees.
TEST_F(HostileStoreTest, DeploymentCodesRaisedByOneRecordsValuesAreThatRecordsOutcome) {
  const std::string role = "hostile_rls_" + std::to_string(::getpid());
  schema_.exec("DROP ROLE IF EXISTS " + role + "; CREATE ROLE " + role + " LOGIN; "
               "GRANT USAGE ON SCHEMA {schema} TO " + role + "; "
               "GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO " + role + "; "
               "GRANT ALL ON ALL SEQUENCES IN SCHEMA {schema} TO " + role + "; "
               "ALTER TABLE {schema}.specimens ADD COLUMN rel regclass; "
               "ALTER TABLE {schema}.specimens ENABLE ROW LEVEL SECURITY; "
               "CREATE POLICY small_n ON {schema}.specimens USING (true) "
               "WITH CHECK (n IS NULL OR n < 100)");
  open(" user=" + role);
  const auto results = process_or_fail({specimen("ok", R"({"label":"fine","n":1})"),
                                        specimen("rls", R"({"label":"big","n":500})"),
                                        specimen("rel", R"({"rel":"no_such_table"})")});
  if (results.size() == 3) {
    EXPECT_EQ(results[0].status, Status::created) << describe(results[0]);
    EXPECT_EQ(results[1].status, Status::rejected) << describe(results[1]);
    EXPECT_NE(to_json_text(results[1].error).find("42501"), std::string::npos);
    EXPECT_EQ(results[2].status, Status::rejected) << describe(results[2]);
    EXPECT_NE(to_json_text(results[2].error).find("42P01"), std::string::npos);
  }
  const auto reused = process_or_fail({specimen("ok", R"({"label":"other","n":700})")});
  ASSERT_EQ(reused.size(), 1U);
  EXPECT_EQ(reused[0].status, Status::rejected) << describe(reused[0]);
  processor_.reset();
  store_.reset();
  schema_.exec("DROP OWNED BY " + role + "; DROP ROLE " + role);
}

// now + key_ttl overflowed above ~106,751,991 days: expires_at landed in the past, every key was
// born expired, and a resend wrote a second entity. Refused at start-up.
TEST(HostileStoreConfigTest, AnAbsurdKeyTtlIsRefusedNamingTheFlag) {
  test::TestSchema schema;
  const auto catalog = CommandCatalog::from_yaml(schema.hostile_config_yaml());
  try {
    PostgresKeyStore store({.conninfo = schema.conninfo(), .schema = schema.name(),
                            .key_ttl = std::chrono::hours(24) * 213'503'982LL},
                           catalog);
    ADD_FAILURE() << "a key TTL that overflows the clock was accepted";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), "--key-ttl");
  }
}

TEST(HostileStoreConfigTest, MissingInsertPrivilegeStopsStartUpNamingTheTable) {
  test::TestSchema schema;
  const std::string role = "dedup_reader_" + schema.name().substr(schema.name().rfind('_') + 1) +
                           std::to_string(::getpid());
  schema.exec("DROP ROLE IF EXISTS " + role + "; CREATE ROLE " + role + " LOGIN; GRANT USAGE ON "
              "SCHEMA {schema} TO " + role + "; GRANT ALL ON {schema}.idempotency_keys, "
              "{schema}.schema_migrations, {schema}.todos, {schema}.appointments, "
              "{schema}.conversations TO " + role + "; GRANT SELECT ON {schema}.specimens TO " + role);
  const auto catalog = CommandCatalog::from_yaml(schema.hostile_config_yaml());
  try {
    PostgresKeyStore store({.conninfo = schema.conninfo() + " user=" + role, .schema = schema.name()},
                           catalog);
    ADD_FAILURE() << "started without INSERT on specimens";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("commands.specimen.create.table"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("INSERT"), std::string::npos) << e.what();
  }
  schema.exec("DROP OWNED BY " + role + "; DROP ROLE " + role);
}

}  // namespace
}  // namespace dedup
