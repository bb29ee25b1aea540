// The single-statement fast path: a batch whose commands are all table-mode is settled by one
// statement (claims, entities and results together), or refused as a whole with nothing done.
#pragma once

#include <pqxx/pqxx>

#include <span>
#include <string>
#include <variant>
#include <vector>

#include "batch_plan.hpp"
#include "dedup/command.hpp"
#include "session.hpp"
#include "sql.hpp"

namespace dedup::pg {

// Whether the fast path can take this batch: every command in table mode (the fast path settles
// all of the batch's keys in its one statement).
bool fast_path_applies(std::span<const Command> commands);

// The fast path's statement input for commands[leaders]: the claims, each with its entity group
// ("g", numbered in order of first appearance) and payload ("pl"); the groups (one INSERT per
// table and column set); and the signature under which that statement is prepared.
struct FastPathPlan {
  std::string input;
  std::vector<FastPathGroup> groups;
  std::string signature;
};
FastPathPlan plan_fast_path(std::span<const Command> commands,
                            const std::vector<std::size_t>& leaders);

// The fast path did not apply (a key claimed concurrently, a refused entity, an expired key):
// nothing of it took effect, and the batch goes to the claim-first protocol.
struct FastPathRefused {};

using FastPathOutcome = std::variant<Settled, FastPathRefused>;

// Runs the fast path for the whole batch, as one statement in `txn` (a pqxx::nontransaction: the
// statement is atomic by itself). Throws TransientDatabaseError / pqxx errors like any statement.
FastPathOutcome run_fast_path(pqxx::transaction_base& txn, Session& session,
                              std::span<const Command> commands, const BatchTime& time);

}  // namespace dedup::pg
