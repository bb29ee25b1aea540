// The key store's planning, which needs no database: key identities, the JSON inputs of the key
// statements, entity groups, fast-path groups, leaders, cross-scope marks, answers, and the SQL
// templating.
#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "batch_plan.hpp"
#include "dedup/command.hpp"
#include "dedup/config.hpp"
#include "dedup/errors.hpp"
#include "dedup/fingerprint.hpp"
#include "dedup/json_text.hpp"
#include "dedup/key_store.hpp"
#include "entity_writer.hpp"
#include "fast_path.hpp"
#include "key_rows.hpp"
#include "sql.hpp"

namespace dedup::pg {
namespace {

using json = nlohmann::json;
using namespace std::chrono;
using namespace std::chrono_literals;

const Timestamp kNow = sys_days{2026y / December / 2} + 10h;

const CommandType kTodo{
    .name = "todo.create", .table = QualifiedName{"app", "todos"}, .sql = {}, .key_from = {}};
const CommandType kNote{
    .name = "note.create", .table = QualifiedName{"app", "notes"}, .sql = {}, .key_from = {}};
const CommandType kSqlMode{.name = "audit.log",
                           .table = std::nullopt,
                           .sql = "INSERT INTO audit SELECT $1 RETURNING *",
                           .key_from = {}};

Command command(const CommandType& type, std::string scope, std::string key, json payload,
                std::int64_t offset = 0) {
  Command c;
  c.source = {"commands", 3, offset};
  c.scope = std::move(scope);
  c.idempotency_key = std::move(key);
  c.type = &type;
  c.canonical_payload = canonical_json(payload);
  c.fingerprint = command_fingerprint_of_canonical(type.name, c.canonical_payload);
  c.payload = std::move(payload);
  return c;
}

StoredKey stored_as_claimed_by(const Command& c) {
  return claimed_key(c, Status::created, json{{"id", 1}}, json(), kNow);
}

// --- key identities and statement inputs ------------------------------------------------------

TEST(KeyRowsTest, KeyIdKeepsScopeAndKeyApart) {
  EXPECT_NE(key_id("ab", "c"), key_id("a", "bc"));
  EXPECT_EQ(key_id(command(kTodo, "tenant", "k1", json::object())), key_id("tenant", "k1"));
}

TEST(KeyRowsTest, ClaimArrayHasEveryClaimFieldInOrderAndEscapesStrings) {
  const std::vector<Command> commands{command(kTodo, "t\"1", "k1", json{{"title", "a"}}, 42),
                                      command(kTodo, "t2", "k2", json{{"title", "b"}}, 43)};
  const auto text = claim_array(commands, {1, 0});
  const std::string hex = to_hex(commands[1].fingerprint);
  const std::string first = R"([{"s":"t2","k":"k2","t":"todo.create","f":")" + hex +
                            R"(","tp":"commands","p":3,"o":43},{"s":"t\"1",)";
  EXPECT_EQ(text.substr(0, first.size()), first);
  const auto parsed = json::parse(text);
  ASSERT_EQ(parsed.size(), 2u);
  EXPECT_EQ(parsed[1]["s"], "t\"1");
  EXPECT_EQ(parsed[1]["k"], "k1");
  EXPECT_EQ(parsed[1]["f"], to_hex(commands[0].fingerprint));
  EXPECT_EQ(parsed[1]["o"], 42);
  EXPECT_EQ(claim_array(commands, {}), "[]");
}

TEST(KeyRowsTest, KeyAndPayloadArraysFollowTheIndices) {
  const std::vector<Command> commands{command(kTodo, "s", "a", json{{"n", 1}}),
                                      command(kTodo, "s", "b\\", json{{"n", 2}, {"m", "x"}})};
  EXPECT_EQ(key_array(commands, {1, 0}), R"([{"s":"s","k":"b\\"},{"s":"s","k":"a"}])");
  EXPECT_EQ(payload_array(commands, {0, 1}), R"([{"n":1},{"m":"x","n":2}])");
}

TEST(KeyRowsTest, ColumnListQuotesEveryFieldInCanonicalOrder) {
  EXPECT_EQ(column_list(json{{"title", 1}, {"a \"b\"", 2}}), R"("a ""b""", "title")");
}

TEST(KeyRowsTest, StoredJsonDeeperThanTheBoundIsARecordFault) {
  // Numbers as Postgres wrote them: 1.50 stays 1.50.
  EXPECT_EQ(to_json_text(parse_stored_json(R"({"entity":{"id":1.50}})")),
            R"({"entity":{"id":1.50}})");
  const std::string deep = std::string(600, '[') + std::string(600, ']');
  try {
    parse_stored_json(deep.c_str());
    FAIL() << "no error";
  } catch (const PermanentDatabaseError& e) {
    EXPECT_EQ(e.sqlstate(), "DD002");
  }
}

// --- entity groups ------------------------------------------------------------------------------

TEST(PlanGroupsTest, OneGroupPerTypeAndColumnSetInOrderOfFirstAppearance) {
  const std::vector<Command> commands{
      command(kTodo, "s", "1", json{{"title", "a"}}),
      command(kSqlMode, "s", "2", json{{"x", 1}}),
      command(kTodo, "s", "3", json{{"title", "b"}, {"done", true}}),
      command(kTodo, "s", "4", json{{"title", "c"}}),
      command(kSqlMode, "s", "5", json{{"y", 2}}),
  };
  const auto groups = plan_groups(commands, {0, 1, 2, 3, 4}, "dedup");
  ASSERT_EQ(groups.size(), 3u);
  EXPECT_EQ(groups[0].identity, "todo.create\n\"title\"");
  EXPECT_EQ(groups[0].commands, (std::vector<std::size_t>{0, 3}));
  EXPECT_EQ(groups[1].identity, "audit.log");  // SQL mode: one group whatever the fields
  EXPECT_EQ(groups[1].commands, (std::vector<std::size_t>{1, 4}));
  EXPECT_EQ(groups[2].identity, "todo.create\n\"done\", \"title\"");
  EXPECT_EQ(groups[2].commands, (std::vector<std::size_t>{2}));
}

TEST(PlanGroupsTest, TableModeHasABulkStatementSqlModeOnlyItsWrappedStatement) {
  const std::vector<Command> commands{command(kTodo, "s", "1", json{{"title", "a"}}),
                                      command(kSqlMode, "s", "2", json{{"x", 1}})};
  const auto groups = plan_groups(commands, {0, 1}, "my schema");
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_NE(groups[0].bulk_sql.find(R"(INSERT INTO "app"."todos" ("title") SELECT "title" FROM )"
                                    R"(jsonb_populate_recordset(NULL::"app"."todos", $1::jsonb))"),
            std::string::npos);
  EXPECT_NE(groups[0].bulk_sql.find(R"(UPDATE "my schema".idempotency_keys AS k)"),
            std::string::npos);
  EXPECT_EQ(groups[0].per_row_sql,
            R"(WITH entity AS (INSERT INTO "app"."todos" ("title") SELECT "title" FROM )"
            R"(jsonb_populate_record(NULL::"app"."todos", $1) RETURNING *) )"
            R"(SELECT to_jsonb(entity) FROM entity)");
  EXPECT_TRUE(groups[1].bulk_sql.empty());
  EXPECT_EQ(groups[1].per_row_sql,
            "WITH entity AS (INSERT INTO audit SELECT $1 RETURNING *) SELECT to_jsonb(entity) FROM "
            "entity");
}

// --- the fast path's plan ---------------------------------------------------------------------

TEST(FastPathPlanTest, AppliesOnlyWhenEveryCommandIsTableMode) {
  std::vector<Command> commands{command(kTodo, "s", "1", json{{"title", "a"}}),
                                command(kNote, "s", "2", json{{"text", "b"}})};
  EXPECT_TRUE(fast_path_applies(commands));
  commands.push_back(command(kSqlMode, "s", "3", json{{"x", 1}}));
  EXPECT_FALSE(fast_path_applies(commands));
}

TEST(FastPathPlanTest, GroupsAreNumberedByFirstAppearanceAndNamedInTheInput) {
  const std::vector<Command> commands{
      command(kTodo, "s", "1", json{{"title", "a"}}),
      command(kNote, "s", "2", json{{"text", "b"}}),
      command(kTodo, "s", "3", json{{"title", "c"}}),
      command(kTodo, "s", "4", json{{"title", "d"}, {"done", false}}),
  };
  const auto plan = plan_fast_path(commands, {0, 1, 2, 3});
  ASSERT_EQ(plan.groups.size(), 3u);
  EXPECT_EQ(plan.groups[0].table, R"("app"."todos")");
  EXPECT_EQ(plan.groups[0].columns, R"("title")");
  EXPECT_EQ(plan.groups[1].table, R"("app"."notes")");
  EXPECT_EQ(plan.groups[2].columns, R"("done", "title")");
  EXPECT_EQ(plan.signature,
            "\"app\".\"todos\"\n\"title\"\n\"app\".\"notes\"\n\"text\"\n"
            "\"app\".\"todos\"\n\"done\", \"title\"\n");
  const auto input = json::parse(plan.input);
  ASSERT_EQ(input.size(), 4u);
  EXPECT_EQ(input[0]["g"], 0);
  EXPECT_EQ(input[1]["g"], 1);
  EXPECT_EQ(input[2]["g"], 0);
  EXPECT_EQ(input[3]["g"], 2);
  EXPECT_EQ(input[3]["pl"], (json{{"title", "d"}, {"done", false}}));
  EXPECT_EQ(input[3]["k"], "4");
}

TEST(FastPathPlanTest, StatementHasOneInsertPerGroupAndTheGuardRowLast) {
  const auto sql = fast_path_sql({{R"("app"."todos")", R"("title")"}, {R"("a")", R"("b")"}}, "d");
  EXPECT_NE(sql.find(",\ne0 AS (INSERT INTO \"app\".\"todos\" (\"title\")"), std::string::npos);
  EXPECT_NE(sql.find(",\ne1 AS (INSERT INTO \"a\" (\"b\")"), std::string::npos);
  EXPECT_NE(sql.find("SELECT 0 AS g, row_number() OVER () AS n, to_jsonb(r) AS row FROM e0 r "
                     "UNION ALL SELECT 1 AS g"),
            std::string::npos);
  EXPECT_NE(sql.find("\"d\".fast_path_guard("), std::string::npos);
  EXPECT_EQ(sql.find("{"), std::string::npos);  // every placeholder filled in
  EXPECT_EQ(sql.substr(sql.size() - 10), "FROM guard");
}

// --- leaders, cross-scope marks, answers --------------------------------------------------------

TEST(BatchPlanTest, LeadersAreTheFirstPendingCommandOfEachUnsettledKey) {
  const std::vector<Command> commands{
      command(kTodo, "s1", "a", json::object()), command(kTodo, "s1", "b", json::object()),
      command(kTodo, "s1", "a", json::object()), command(kTodo, "s2", "a", json::object()),
      command(kTodo, "s1", "c", json::object()),
  };
  BatchState batch(commands);
  batch.known.emplace(key_id("s1", "c"), stored_as_claimed_by(commands[4]));
  const auto leaders = select_leaders(batch);
  EXPECT_EQ(leaders.commands, (std::vector<std::size_t>{0, 1, 3}));
  EXPECT_EQ(leaders.of_key.at(key_id("s1", "a")), 0u);
  EXPECT_EQ(leaders.of_key.at(key_id("s2", "a")), 3u);
  EXPECT_FALSE(leaders.of_key.contains(key_id("s1", "c")));
}

TEST(BatchPlanTest, AKeyClaimedUnderTwoScopesMarksEveryScopeAfterTheFirst) {
  const std::vector<Command> commands{
      command(kTodo, "s1", "a", json::object()), command(kTodo, "s2", "a", json::object()),
      command(kTodo, "s3", "a", json::object()), command(kTodo, "s1", "b", json::object()),
  };
  BatchState batch(commands);
  mark_cross_scope_in_batch(batch, {0, 1, 2, 3});
  EXPECT_FALSE(batch.cross_scope.contains(key_id("s1", "a")));
  EXPECT_TRUE(batch.cross_scope.contains(key_id("s2", "a")));
  EXPECT_TRUE(batch.cross_scope.contains(key_id("s3", "a")));
  EXPECT_FALSE(batch.cross_scope.contains(key_id("s1", "b")));
}

TEST(BatchPlanTest, AnswersSettledKeysAndKeepsTheOthersPending) {
  const std::vector<Command> commands{
      command(kTodo, "s", "a", json{{"n", 1}}, 1),
      command(kTodo, "s", "a", json{{"n", 1}}, 2),  // same payload: a duplicate
      command(kTodo, "s", "b", json{{"n", 1}}, 3),
  };
  BatchState batch(commands);
  batch.known.emplace(batch.ids[0], stored_as_claimed_by(commands[0]));
  batch.cross_scope.insert(batch.ids[0]);

  EXPECT_TRUE(answer_settled(batch, kNow));
  EXPECT_EQ(batch.pending, (std::vector<std::size_t>{2}));
  ASSERT_TRUE(batch.results[0] && batch.results[1]);
  EXPECT_EQ(batch.results[0]->status, Status::created);
  EXPECT_EQ(batch.results[0]->entity, (json{{"id", 1}}));
  // Only the claimant reports the key's use under another scope.
  EXPECT_TRUE(batch.results[0]->cross_scope_key_reuse);
  EXPECT_EQ(batch.results[1]->status, Status::duplicate);
  EXPECT_FALSE(batch.results[1]->cross_scope_key_reuse);
  EXPECT_FALSE(batch.results[2]);

  EXPECT_FALSE(answer_settled(batch, kNow));  // nothing new settled: an idle round
  batch.known.emplace(batch.ids[2], stored_as_claimed_by(commands[2]));
  EXPECT_TRUE(answer_settled(batch, kNow));
  const auto results = take_results(batch);
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[2].status, Status::created);
  EXPECT_FALSE(results[2].cross_scope_key_reuse);
}

TEST(BatchPlanTest, NaturalKeysNeverReportCrossScopeReuse) {
  auto natural = command(kTodo, "s", "a", json{{"n", 1}});
  natural.natural_key = true;
  const std::vector<Command> commands{natural};
  BatchState batch(commands);
  batch.known.emplace(batch.ids[0], stored_as_claimed_by(commands[0]));
  batch.cross_scope.insert(batch.ids[0]);
  ASSERT_TRUE(answer_settled(batch, kNow));
  EXPECT_FALSE(batch.results[0]->cross_scope_key_reuse);
}

TEST(BatchPlanTest, ACommandRefusedByPostgresIsAnsweredAsRejected) {
  const std::vector<Command> commands{command(kTodo, "s", "a", json{{"n", 1}})};
  BatchState batch(commands);
  batch.results[0] = rejected_by_postgres(
      commands[0], invalid_outcome("Postgres refused the payload: bad (SQLSTATE 22P02)"), kNow);
  EXPECT_TRUE(answer_settled(batch, kNow));  // answered: the round made progress
  EXPECT_TRUE(batch.pending.empty());
  const auto results = take_results(batch);
  EXPECT_EQ(results[0].status, Status::rejected);
  ASSERT_TRUE(results[0].rejection);
  EXPECT_EQ(results[0].rejection->code, RejectCode::invalid_payload);
  EXPECT_EQ(results[0].rejection->message, "Postgres refused the payload: bad (SQLSTATE 22P02)");
}

// --- the SQL templating -------------------------------------------------------------------------

TEST(RenderSqlTest, FillsNamedPlaceholdersOnceAndLeavesOtherBraces) {
  EXPECT_EQ(render_sql("SELECT {a}, '{b}', {a}{", {{"a", "x"}}), "SELECT x, '{b}', x{");
  // An inserted text is not searched again: a column named {a} stays as it is.
  EXPECT_EQ(render_sql("{cols} {a}", {{"cols", "\"{a}\""}, {"a", "1"}}), "\"{a}\" 1");
}

TEST(RenderSqlTest, EveryFixedStatementHasItsSchemaFilledIn) {
  const auto statements = fixed_statements("my\"schema");
  ASSERT_EQ(statements.size(), 7u);
  for (const auto& statement : statements) {
    EXPECT_NE(statement.sql.find(R"("my""schema".)"), std::string::npos) << statement.name;
    EXPECT_EQ(statement.sql.find("{schema}"), std::string::npos) << statement.name;
    EXPECT_EQ(statement.sql.find("{stored_row}"), std::string::npos) << statement.name;
  }
}

}  // namespace
}  // namespace dedup::pg
