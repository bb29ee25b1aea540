// The Postgres key store: chooses the protocol for each batch (the fast path, or the claim-first
// protocol of claim_protocol.hpp), and retries through the one backoff policy.
#include <chrono>
#include <thread>
#include <unordered_set>

#include "claim_protocol.hpp"
#include "dedup/backoff.hpp"
#include "dedup/json_text.hpp"
#include "dedup/observer.hpp"
#include "dedup/postgres.hpp"
#include "entity_writer.hpp"
#include "fast_path.hpp"
#include "internal.hpp"
#include "schema_check.hpp"
#include "session.hpp"

namespace dedup {
namespace {

// After a refusal, batches skip the fast path for a while: refusals come in runs (a burst of
// racing workers, a type that keeps conflicting), and each one costs a rolled-back statement.
constexpr int kFastPathCooldownBatches = 8;

}  // namespace

struct PostgresKeyStore::Impl {
  Impl(PostgresOptions opts, const CommandCatalog& catalog, Observer* obs)
      : options(std::move(opts)),
        observer(obs),
        deployment{options.conninfo, options.schema, catalog},
        session(options.conninfo, options.schema) {}

  PostgresOptions options;
  Observer* observer;
  pg::Deployment deployment;
  pg::Session session;
  std::size_t retried = 0;
  int fast_path_cooldown = 0;  // batches left before the fast path is tried again
  std::size_t fast_path_fallbacks = 0;
  // Deadlocks and serialization failures clear up fastest when the losers do not come back in
  // lockstep: jittered exponential backoff from 5 ms, capped at 1 s.
  Backoff retry_delay{std::chrono::milliseconds(5), std::chrono::seconds(1)};

  // One atomic attempt at the batch, redone on refusals and transient failures (bounded).
  std::vector<CommandResult> apply_with_retries(std::span<const Command> commands, Timestamp now);

  // A `key_reused` command whose payload Postgres refuses is `rejected` instead, as it is when
  // its key is free: so a record's result does not depend on whether another record claimed its
  // key meanwhile (it stays the same when the record is read again after a crash).
  void reject_refused_reuses(std::span<const Command> commands,
                             std::vector<CommandResult>& results, Timestamp now);
};

void PostgresKeyStore::Impl::reject_refused_reuses(std::span<const Command> commands,
                                                   std::vector<CommandResult>& results,
                                                   Timestamp now) {
  std::vector<std::size_t> reused;
  for (std::size_t i = 0; i < results.size(); ++i) {
    if (results[i].status == Status::key_reused) reused.push_back(i);
  }
  if (reused.empty()) return;
  // Tried for real, then rolled back: nothing of it stays (sequences excepted, which never roll
  // back). Whether Postgres refuses a payload depends on the payload, not on the key's state.
  pqxx::work txn(session.connection());
  const auto outcomes = pg::write_per_row(txn, commands, reused, options.schema);
  txn.abort();
  pg::recheck_deployment_if_suspect(deployment, outcomes);
  for (std::size_t slot = 0; slot < reused.size(); ++slot) {
    if (outcomes[slot].kind != pg::EntityOutcome::Kind::invalid) continue;
    results[reused[slot]] = pg::rejected_by_postgres(commands[reused[slot]], outcomes[slot], now);
  }
}

std::vector<CommandResult> PostgresKeyStore::Impl::apply_with_retries(
    std::span<const Command> commands, Timestamp now) {
  const pg::BatchTime time(now, options.key_ttl);
  std::unordered_set<std::string> per_row_groups;  // groups whose bulk statement was refused
  bool fast = fast_path_cooldown == 0 && pg::fast_path_applies(commands);
  if (fast_path_cooldown > 0) --fast_path_cooldown;
  for (int attempt = 1;;) {
    try {
      try {
        std::vector<CommandResult> results;
        if (fast) {
          // The fast path is one statement, atomic by itself: run without BEGIN/COMMIT, two
          // round trips fewer. (An in-doubt implicit commit is retried like any other: each
          // record then finds its own claim and gets its result back.)
          pqxx::nontransaction txn(session.connection());
          auto outcome = pg::run_fast_path(txn, session, commands, time);
          if (std::holds_alternative<pg::FastPathRefused>(outcome)) {
            // Not a failure: redone with the claim-first protocol (the statement left no trace).
            fast = false;
            fast_path_cooldown = kFastPathCooldownBatches;
            ++fast_path_fallbacks;
            continue;
          }
          results = std::move(std::get<pg::Settled>(outcome).results);
        } else {
          pqxx::work txn(session.connection());
          auto outcome = pg::run_claim_protocol(txn, {deployment, per_row_groups}, commands, time);
          if (const auto* refused = std::get_if<pg::BulkRefused>(&outcome)) {
            // Not a failure: the transaction rolls back (pqxx::work's destructor) and is redone
            // with that group row by row. Each group can be refused once, so this ends.
            if (!per_row_groups.insert(refused->group).second) {
              throw PermanentDatabaseError("bulk insert of " + refused->group + " refused twice",
                                           "");
            }
            continue;
          }
          results = std::move(std::get<pg::Settled>(outcome).results);
          txn.commit();
        }
        reject_refused_reuses(commands, results, now);
        return results;
      } catch (...) {
        pg::rethrow_classified("applying a batch");
      }
    } catch (const TransientDatabaseError&) {
      if (observer) observer->on_db_error(DbErrorKind::transient);
      session.drop_if_broken();
      if (attempt >= options.max_attempts) throw;
      ++retried;
      std::this_thread::sleep_for(retry_delay.delay(attempt - 1));
      ++attempt;
    }
  }
}

PostgresKeyStore::PostgresKeyStore(PostgresOptions options, const CommandCatalog& catalog,
                                   Observer* observer)
    : impl_(std::make_unique<Impl>(std::move(options), catalog, observer)) {
  // The one check of --key-ttl. A key must outlive a redelivery; under a minute it could expire
  // while its batch is still being retried.
  if (impl_->options.key_ttl < std::chrono::minutes(1)) {
    throw ConfigError("--key-ttl", "must be at least 1m");
  }
  // now + key_ttl must stay a timestamp (microseconds since 1970 overflow int64 after ~292,000
  // years; Postgres stops at year 294276): an overflowed expires_at can lie in the past, and
  // every key would be born expired.
  if (impl_->options.key_ttl > std::chrono::days(36500)) {
    throw ConfigError("--key-ttl", "must be at most 36500d (100 years)");
  }
  if (impl_->options.max_attempts < 1) throw ConfigError("max_attempts", "must be at least 1");
  pg::check_deployment(impl_->session.connection(), impl_->deployment);
}

PostgresKeyStore::~PostgresKeyStore() = default;

std::size_t PostgresKeyStore::retried_attempts() const noexcept { return impl_->retried; }

std::size_t PostgresKeyStore::fast_path_fallbacks() const noexcept {
  return impl_->fast_path_fallbacks;
}

std::vector<CommandResult> PostgresKeyStore::apply(std::span<const Command> commands,
                                                   Timestamp now) {
  if (commands.empty()) return {};
  try {
    return impl_->apply_with_retries(commands, now);
  } catch (const PermanentDatabaseError& e) {
    const bool record_fault =
        !e.sqlstate().empty() && pg::classify_sqlstate(e.sqlstate()) == pg::FailureKind::record;
    if (!record_fault) {
      if (impl_->observer) impl_->observer->on_db_error(DbErrorKind::permanent);
      throw;
    }
    // The values of some record made a statement fail that no step above could pin on one
    // command (the per-row path does that for entity writes; this is the net under everything
    // else). Halve the batch until the fault is one command's: each half is a batch of its own,
    // atomic by itself, and the first half's keys are committed before the second half reads
    // them, so a key that repeats across the halves is decided as it would have been.
    if (commands.size() == 1) {
      const Command& command = commands.front();
      const auto refused = pg::invalid_outcome(truncate_utf8(e.what(), pg::kQuotedMessageBytes));
      return {pg::rejected_by_postgres(command, refused, now)};
    }
    const auto half = commands.size() / 2;
    auto results = apply(commands.first(half), now);
    auto rest = apply(commands.subspan(half), now);
    results.insert(results.end(), std::make_move_iterator(rest.begin()),
                   std::make_move_iterator(rest.end()));
    return results;
  }
}

}  // namespace dedup
