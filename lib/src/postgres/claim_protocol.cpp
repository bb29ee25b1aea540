#include "claim_protocol.hpp"

#include <optional>
#include <unordered_set>

#include "dedup/errors.hpp"
#include "dedup/json_text.hpp"
#include "key_rows.hpp"
#include "sql.hpp"

namespace dedup::pg {
namespace {

using json = nlohmann::json;

// Rounds in a row that answer no command (concurrent re-claims) before the batch is retried.
constexpr int kMaxIdleRounds = 16;

// Steps 1 and 2 for this round's leaders: returns those whose key this transaction claimed, in
// batch order; the keys found committed go into batch.known.
std::vector<std::size_t> claim_leaders(pqxx::dbtransaction& txn, BatchState& batch,
                                       const Leaders& leaders, const BatchTime& time) {
  std::unordered_set<std::size_t> claimed;
  std::unordered_set<std::size_t> settled;  // claimed, found live, or found expired
  std::vector<std::size_t> reclaim;        // leaders whose row expired
  // A key row as the claim and lookup statements return it: claimed by us, or committed.
  auto take_row = [&](const pqxx::row& row) {
    const auto i = leaders.of_key.at(key_id_of_row(row));
    settled.insert(i);
    if (row["claimed"].as<bool>()) {
      claimed.insert(i);
      if (row["cross_scope"].as<bool>()) batch.cross_scope.insert(batch.ids[i]);
      return;
    }
    if (row["expired"].as<bool>()) {  // absent, unless someone re-claims it first
      reclaim.push_back(i);
      return;
    }
    batch.known.emplace(batch.ids[i], stored_key_from_row(row));
  };

  // 1. claim the new keys, read the known ones
  for (const auto& row : txn.exec_prepared(kClaim, claim_array(batch.commands, leaders.commands),
                                           time.now_text, time.expires_text)) {
    take_row(row);
  }
  // 2. keys a concurrent batch committed while we waited: read them with a new snapshot
  std::vector<std::size_t> lost;
  for (const auto i : leaders.commands) {
    if (!settled.contains(i)) lost.push_back(i);
  }
  if (!lost.empty()) {
    for (const auto& row :
         txn.exec_prepared(kLookup, key_array(batch.commands, lost), time.now_text)) {
      take_row(row);
    }
  }
  if (!reclaim.empty()) {
    for (const auto& row : txn.exec_prepared(kReclaim, claim_array(batch.commands, reclaim),
                                             time.now_text, time.expires_text)) {
      const auto i = leaders.of_key.at(key_id_of_row(row));
      claimed.insert(i);
      if (row["cross_scope"].as<bool>()) batch.cross_scope.insert(batch.ids[i]);
    }
  }
  std::vector<std::size_t> in_order;
  for (const auto i : leaders.commands) {
    if (claimed.contains(i)) in_order.push_back(i);
  }
  return in_order;
}

// Steps 3 and 4 for the claimed leaders: their entities written, their results stored (or their
// key rows deleted, for payloads Postgres refused, whose commands are answered as rejected).
std::optional<BulkRefused> write_and_store(pqxx::dbtransaction& txn, const ClaimContext& context,
                                           BatchState& batch,
                                           const std::vector<std::size_t>& claimed,
                                           Timestamp now) {
  auto written = write_entities(txn, batch.commands, claimed, context.per_row_groups,
                                context.deployment.schema);
  if (auto* refused = std::get_if<BulkRefused>(&written)) return std::move(*refused);
  const auto& outcomes = std::get<std::vector<EntityOutcome>>(written);
  recheck_deployment_if_suspect(context.deployment, outcomes);

  json stored_rows = json::array();
  std::vector<std::size_t> forgotten;  // claimed keys whose payload Postgres refused
  for (std::size_t slot = 0; slot < claimed.size(); ++slot) {
    const auto i = claimed[slot];
    const Command& command = batch.commands[i];
    const auto& outcome = outcomes[slot];
    if (outcome.kind == EntityOutcome::Kind::invalid) {
      forgotten.push_back(i);
      batch.results[i] = rejected_by_postgres(command, outcome, now);
      continue;
    }
    const auto status =
        outcome.kind == EntityOutcome::Kind::created ? Status::created : Status::conflict;
    auto stored = claimed_key(command, status, outcome.entity, outcome.error, now);
    if (!outcome.stored) {
      stored_rows.push_back({{"s", command.scope},
                             {"k", command.idempotency_key},
                             {"st", to_string(stored.status)},
                             {"r", {{"entity", stored.entity}, {"error", stored.error}}}});
    }
    batch.known.emplace(batch.ids[i], std::move(stored));
  }
  if (!stored_rows.empty()) txn.exec_prepared0(kStoreResults, to_json_text(stored_rows));
  if (!forgotten.empty()) txn.exec_prepared0(kForget, key_array(batch.commands, forgotten));
  return std::nullopt;
}

}  // namespace

ClaimOutcome run_claim_protocol(pqxx::dbtransaction& txn, const ClaimContext& context,
                                std::span<const Command> commands, const BatchTime& time) {
  BatchState batch(commands);
  int idle_rounds = 0;  // consecutive rounds that answered no command (concurrent re-claims)
  while (!batch.pending.empty()) {
    if (idle_rounds == kMaxIdleRounds) {
      throw TransientDatabaseError("key rows kept changing under the batch; retrying", "");
    }
    const auto leaders = select_leaders(batch);
    if (!leaders.commands.empty()) {
      const auto claimed = claim_leaders(txn, batch, leaders, time);
      mark_cross_scope_in_batch(batch, claimed);
      if (!claimed.empty()) {
        if (auto refused = write_and_store(txn, context, batch, claimed, time.now)) {
          return std::move(*refused);
        }
      }
    }
    // 5. answer every pending command whose key is settled. A round in which a leader was
    // refused answers it: such rounds always make progress and may be as many as the batch has
    // commands of one key (a client resending a refused command).
    idle_rounds = answer_settled(batch, time.now) ? 0 : idle_rounds + 1;
  }
  return Settled{take_results(batch)};
}

}  // namespace dedup::pg
