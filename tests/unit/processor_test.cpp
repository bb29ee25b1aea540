// Processor with an in-memory key store, a fixed clock and a recording observer.
#include "dedup/processor.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "dedup/errors.hpp"
#include "support/in_memory_key_store.hpp"
#include "support/manual_clock.hpp"
#include "support/records.hpp"

namespace dedup {
namespace {

using json = nlohmann::json;
using test::command_body;
using test::record;
using test::record_raw;

class RecordingObserver final : public Observer {
 public:
  void on_batch(std::size_t records) override { batches.push_back(records); }
  void on_store_transaction(double seconds) override { transactions.push_back(seconds); }

  std::vector<std::size_t> batches;
  std::vector<double> transactions;
};

class ProcessorTest : public ::testing::Test {
 protected:
  CommandCatalog catalog_ = CommandCatalog::from_yaml(R"(
commands:
  todo.create:
    table: todos
  conversation.create:
    table: conversations
    key_from: [context_type, context_id]
)");
  test::InMemoryKeyStore store_;
  test::ManualClock clock_;
  RecordingObserver observer_;
  Processor processor_{catalog_, store_, clock_, observer_, ParseOptions{}};

  static InboundRecord todo(const std::string& key, const std::string& title, std::int64_t offset,
                            const std::string& scope = "org-1") {
    return record(command_body(key, scope, "todo.create", {{"title", title}}),
                  {"commands", 0, offset});
  }
  static InboundRecord bad_json(std::int64_t offset) {
    return record_raw(R"({"idempotency_key":)", {"commands", 0, offset});
  }
  static InboundRecord unknown_type(std::int64_t offset) {
    return record(command_body("k-x", "org-1", "todo.delete", {{"title", "x"}}),
                  {"commands", 0, offset});
  }

  std::vector<CommandResult> process(const std::vector<InboundRecord>& records) {
    return processor_.process(records);
  }
};

std::vector<std::string> statuses(const std::vector<CommandResult>& results) {
  std::vector<std::string> out;
  for (const auto& result : results) out.emplace_back(to_string(result.status));
  return out;
}

TEST_F(ProcessorTest, OneResultPerRecordInInputOrderWithRejectionsInterleaved) {
  const auto results = process({todo("k-1", "a", 0), bad_json(1), todo("k-2", "b", 2),
                                unknown_type(3), todo("k-3", "c", 4)});
  ASSERT_EQ(results.size(), 5u);
  EXPECT_EQ(statuses(results),
            (std::vector<std::string>{"created", "rejected", "created", "rejected", "created"}));
  for (std::size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ(results[i].source.offset, static_cast<std::int64_t>(i)) << i;
  }
  EXPECT_EQ(results[0].idempotency_key, "k-1");
  EXPECT_EQ(results[0].entity, json({{"id", 1}, {"title", "a"}}));
  EXPECT_EQ(results[2].idempotency_key, "k-2");
  EXPECT_EQ(results[2].entity, json({{"id", 2}, {"title", "b"}}));
  EXPECT_EQ(results[4].idempotency_key, "k-3");
  EXPECT_EQ(results[1].error["code"], "invalid_json");
  EXPECT_EQ(results[3].error["code"], "unknown_type");
  EXPECT_EQ(results[3].idempotency_key, "k-x");
  EXPECT_TRUE(results[1].rejection.has_value());
  EXPECT_FALSE(results[0].rejection.has_value());
}

TEST_F(ProcessorTest, RejectedRecordsNeverReachTheStore) {
  process({bad_json(0), todo("k-1", "a", 1), unknown_type(2), todo("k-2", "b", 3)});
  ASSERT_EQ(store_.apply_calls(), 1u);
  ASSERT_EQ(store_.batches()[0].size(), 2u);
  EXPECT_EQ(store_.batches()[0][0].idempotency_key, "k-1");
  EXPECT_EQ(store_.batches()[0][0].source.offset, 1);
  EXPECT_EQ(store_.batches()[0][1].idempotency_key, "k-2");
  EXPECT_EQ(store_.batches()[0][1].source.offset, 3);
  EXPECT_EQ(store_.find("org-1", "k-x"), nullptr);
}

TEST_F(ProcessorTest, BatchWithoutValidRecordDoesNotCallTheStore) {
  const auto results = process({bad_json(0), unknown_type(1)});
  EXPECT_EQ(statuses(results), (std::vector<std::string>{"rejected", "rejected"}));
  EXPECT_EQ(store_.apply_calls(), 0u);
  EXPECT_EQ(observer_.batches, (std::vector<std::size_t>{2}));
  EXPECT_TRUE(observer_.transactions.empty());
}

TEST_F(ProcessorTest, EmptyBatchGivesNoResultAndDoesNotCallTheStore) {
  EXPECT_TRUE(process({}).empty());
  EXPECT_EQ(store_.apply_calls(), 0u);
}

TEST_F(ProcessorTest, EveryResultIsStampedWithTheClock) {
  const auto results = process({todo("k-1", "a", 0), bad_json(1)});
  for (const auto& result : results) {
    EXPECT_EQ(result.processed_at, clock_.now());
    EXPECT_EQ(result.first_processed_at, clock_.now());
  }
}

TEST_F(ProcessorTest, DuplicateWithinOneBatch) {
  const auto results = process({todo("k-1", "a", 0), todo("k-1", "a", 1)});
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[0].status, Status::created);
  EXPECT_FALSE(results[0].replayed);
  EXPECT_EQ(results[1].status, Status::duplicate);
  EXPECT_TRUE(results[1].replayed);
  EXPECT_EQ(results[1].entity, results[0].entity);
  EXPECT_EQ(results[1].source.offset, 1);
  EXPECT_EQ(store_.size(), 1u);
}

TEST_F(ProcessorTest, KeyReusedWithinOneBatch) {
  const auto results = process({todo("k-1", "a", 0), todo("k-1", "b", 1)});
  EXPECT_EQ(statuses(results), (std::vector<std::string>{"created", "key_reused"}));
  EXPECT_EQ(results[1].error["code"], "key_reused");
  EXPECT_TRUE(results[1].entity.is_null());
}

TEST_F(ProcessorTest, SameKeyInTwoScopesIsTwoCommands) {
  const auto results = process({todo("k-1", "a", 0, "org-1"), todo("k-1", "a", 1, "org-2")});
  EXPECT_EQ(statuses(results), (std::vector<std::string>{"created", "created"}));
  EXPECT_NE(results[0].entity["id"], results[1].entity["id"]);
}

TEST_F(ProcessorTest, RedeliveredRecordGetsItsOriginalResultAndLaterRetryIsDuplicate) {
  const auto first = process({todo("k-1", "a", 0)});
  clock_.advance(std::chrono::seconds(5));
  const auto again = process({todo("k-1", "a", 0), todo("k-1", "a", 7)});
  ASSERT_EQ(again.size(), 2u);
  EXPECT_EQ(again[0].status, Status::created);
  EXPECT_FALSE(again[0].replayed);
  EXPECT_EQ(again[0].entity, first[0].entity);
  EXPECT_EQ(again[0].first_processed_at, first[0].first_processed_at);
  EXPECT_EQ(again[0].processed_at, clock_.now());
  EXPECT_EQ(again[1].status, Status::duplicate);
  EXPECT_EQ(again[1].first_processed_at, first[0].first_processed_at);
}

TEST_F(ProcessorTest, NaturalKeyDuplicatesAreCaughtWithoutClientKey) {
  const auto conversation = [](std::int64_t offset) {
    auto body = command_body("", "org-1", "conversation.create",
                             {{"context_type", "ticket"}, {"context_id", 42}});
    body.erase("idempotency_key");
    return record(body, {"commands", 0, offset});
  };
  const auto results = process({conversation(0), conversation(1)});
  EXPECT_EQ(statuses(results), (std::vector<std::string>{"created", "duplicate"}));
  EXPECT_TRUE(results[0].natural_key);
  EXPECT_TRUE(results[0].missing_key);
  EXPECT_EQ(results[0].idempotency_key, results[1].idempotency_key);
  EXPECT_EQ(results[0].idempotency_key->rfind("nk:", 0), 0u);
}

// Whatever bytes arrive, every record gets a result the worker can publish: process() does not
// throw for bad input, and each result (and its record key) serializes as JSON. A record that
// breaks this stops the worker, and after a restart it is read again: a poison pill.
TEST_F(ProcessorTest, EveryRecordGetsAPublishableResult) {
  auto overlong_scope_header =
      record_raw(R"({"idempotency_key":"k-2","type":"todo.create","payload":{"title":"a"}})",
                 {"commands", 0, 4}, {test::header("idempotency-scope", "org\xc0\xaf")});
  const std::vector<std::pair<std::string, InboundRecord>> cases = {
      {"null value", record_raw(std::nullopt, {"commands", 0, 0})},
      {"invalid UTF-8 value",
       record_raw("{\"idempotency_key\":\"k-1\",\"payload\":\"\xc3(\"}", {"commands", 0, 1})},
      {"number overflow",
       record_raw(
           R"({"idempotency_key":"k-1","scope":"org-1","type":"todo.create","payload":{"n":1e400}})",
           {"commands", 0, 2})},
      {"valid", todo("k-3", "fine", 3)},
      {"overlong UTF-8 scope header", overlong_scope_header},
  };
  for (const auto& [name, input] : cases) {
    SCOPED_TRACE(name);
    std::vector<CommandResult> results;
    try {
      results = process({input});
    } catch (const std::exception& e) {
      ADD_FAILURE() << "process() threw: " << e.what();
      continue;
    }
    ASSERT_EQ(results.size(), 1u);
    EXPECT_NO_THROW((void)results[0].to_json().dump());
    if (const auto key = results[0].record_key()) {
      EXPECT_NO_THROW((void)json(*key).dump());
    }
  }
}

TEST_F(ProcessorTest, ObserverSeesEachBatchAndEachStoreTransaction) {
  process({todo("k-1", "a", 0), bad_json(1), todo("k-2", "b", 2)});
  process({todo("k-3", "c", 3)});
  EXPECT_EQ(observer_.batches, (std::vector<std::size_t>{3, 1}));
  ASSERT_EQ(observer_.transactions.size(), 2u);
  for (double seconds : observer_.transactions) EXPECT_GE(seconds, 0.0);
}

TEST_F(ProcessorTest, TransientStoreErrorPropagatesAndTheBatchCanBeRetried) {
  const std::vector<InboundRecord> batch = {todo("k-1", "a", 0), bad_json(1)};
  store_.fail_next_apply(TransientDatabaseError("deadlock detected", "40P01"));
  try {
    process(batch);
    FAIL() << "expected TransientDatabaseError";
  } catch (const TransientDatabaseError& e) {
    EXPECT_EQ(e.sqlstate(), "40P01");
  }
  EXPECT_EQ(store_.size(), 0u);
  EXPECT_EQ(observer_.batches, (std::vector<std::size_t>{2}));
  EXPECT_TRUE(observer_.transactions.empty());

  const auto retried = process(batch);
  EXPECT_EQ(statuses(retried), (std::vector<std::string>{"created", "rejected"}));
  EXPECT_FALSE(retried[0].replayed);
}

TEST_F(ProcessorTest, PermanentStoreErrorPropagates) {
  store_.fail_next_apply(PermanentDatabaseError("relation \"todos\" does not exist", "42P01"));
  EXPECT_THROW(process({todo("k-1", "a", 0)}), PermanentDatabaseError);
}

}  // namespace
}  // namespace dedup
