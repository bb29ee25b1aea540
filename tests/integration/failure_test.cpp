// The backend dies mid-batch: nothing of the batch may be committed, and the retry must succeed
// without doubling anything.
#include <gtest/gtest.h>

#include <pqxx/pqxx>
#include <thread>

#include "dedup/errors.hpp"
#include "dedup/postgres.hpp"
#include "dedup/processor.hpp"
#include "support/records.hpp"
#include "support/test_db.hpp"

namespace dedup {
namespace {

using namespace std::chrono_literals;

class BackendTerminatedTest : public ::testing::Test {
 protected:
  static constexpr int kCommands = 100;

  std::vector<InboundRecord> batch() const {
    std::vector<InboundRecord> records;
    for (int i = 0; i < kCommands; ++i) {
      char key[16];
      std::snprintf(key, sizeof key, "k-%03d", i);
      records.push_back(test::record({{"idempotency_key", key}, {"scope", "s"}, {"type", "todo.create"},
                                      {"payload", {{"title", key}}}},
                                     {"commands", 0, i}));
    }
    return records;
  }
  std::string victim_conninfo() const { return schema_.conninfo() + " application_name=dedup-victim"; }

  // Holds an uncommitted row for key k-050, so the victim's claim (sorted) inserts k-000..k-049
  // and then blocks: it is provably in the middle of its transaction.
  void block_key_50() {
    blocker_txn_.exec(
        "INSERT INTO \"" + schema_.name() + "\".idempotency_keys (scope, idempotency_key, "
        "command_type, fingerprint, status, result, created_at, expires_at, source_topic, "
        "source_partition, source_offset) VALUES ('s', 'k-050', 'todo.create', "
        "decode(repeat('00', 32), 'hex'), 'created', '{}', now(), now() + interval '1 hour', "
        "'elsewhere', 0, 0)");
  }

  // Waits until the victim waits on the blocker's lock, then terminates its backend.
  void terminate_victim_when_blocked() {
    pqxx::connection observer(schema_.conninfo());
    for (int i = 0; i < 200; ++i) {
      pqxx::nontransaction q(observer);
      const auto rows = q.exec(
          "SELECT pid FROM pg_stat_activity WHERE application_name = 'dedup-victim' "
          "AND wait_event_type = 'Lock'");
      if (!rows.empty()) {
        q.exec("SELECT pg_terminate_backend(" + std::string(rows[0][0].c_str()) + ")");
        return;
      }
      std::this_thread::sleep_for(50ms);
    }
    FAIL() << "the victim never blocked on the held key";
  }

  long long count(const char* table) const {
    return schema_.scalar(std::string("SELECT count(*) FROM {schema}.") + table);
  }

  test::TestSchema schema_;
  SystemClock clock_;
  Observer observer_;
  pqxx::connection blocker_{schema_.conninfo()};
  pqxx::work blocker_txn_{blocker_};
};

TEST_F(BackendTerminatedTest, NothingOfTheBatchIsCommittedAndTheRetrySucceeds) {
  block_key_50();
  std::optional<std::string> error;
  std::thread victim([&] {
    PostgresKeyStore store({.conninfo = victim_conninfo(), .schema = schema_.name(), .max_attempts = 1},
                           schema_.catalog());
    Processor processor(schema_.catalog(), store, clock_, observer_, {});
    try {
      processor.process(batch());
    } catch (const TransientDatabaseError& e) {
      error = e.what();
    }
  });
  terminate_victim_when_blocked();
  victim.join();
  ASSERT_TRUE(error) << "the batch should have failed as transient";
  blocker_txn_.abort();
  EXPECT_EQ(count("idempotency_keys"), 0);  // the 50 keys claimed before the kill are gone
  EXPECT_EQ(count("todos"), 0);

  PostgresKeyStore store({.conninfo = schema_.conninfo(), .schema = schema_.name()}, schema_.catalog());
  Processor processor(schema_.catalog(), store, clock_, observer_, {});
  for (const auto& result : processor.process(batch())) EXPECT_EQ(result.status, Status::created);
  // The same records once more (redelivered): their original results, nothing doubled.
  for (const auto& result : processor.process(batch())) {
    EXPECT_EQ(result.status, Status::created);
    EXPECT_FALSE(result.replayed);
  }
  EXPECT_EQ(count("todos"), kCommands);
  EXPECT_EQ(count("idempotency_keys"), kCommands);
}

TEST_F(BackendTerminatedTest, TheStoreReconnectsAndRetriesByItself) {
  block_key_50();
  std::vector<CommandResult> results;
  std::size_t retried = 0;
  std::optional<std::string> error;
  std::thread victim([&] {
    try {
      PostgresKeyStore store({.conninfo = victim_conninfo(), .schema = schema_.name()},
                             schema_.catalog());
      Processor processor(schema_.catalog(), store, clock_, observer_, {});
      results = processor.process(batch());
      retried = store.retried_attempts();
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  terminate_victim_when_blocked();
  blocker_txn_.abort();  // let the retry through
  victim.join();
  ASSERT_FALSE(error) << *error;
  EXPECT_GE(retried, 1u);
  ASSERT_EQ(results.size(), static_cast<std::size_t>(kCommands));
  for (const auto& result : results) EXPECT_EQ(result.status, Status::created);
  EXPECT_EQ(count("todos"), kCommands);
  EXPECT_EQ(count("idempotency_keys"), kCommands);
}

}  // namespace
}  // namespace dedup
