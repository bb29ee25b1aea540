#include "batch_plan.hpp"

#include <numeric>

#include "internal.hpp"
#include "key_rows.hpp"

namespace dedup::pg {

BatchTime::BatchTime(Timestamp at, std::chrono::seconds key_ttl)
    : now(at), now_text(to_pg_timestamp(at)), expires_text(to_pg_timestamp(at + key_ttl)) {}

BatchState::BatchState(std::span<const Command> batch)
    : commands(batch), ids(batch.size()), results(batch.size()), pending(batch.size()) {
  for (std::size_t i = 0; i < batch.size(); ++i) ids[i] = key_id(batch[i]);
  std::iota(pending.begin(), pending.end(), std::size_t{0});
}

Leaders select_leaders(const BatchState& batch) {
  Leaders leaders;
  for (const auto i : batch.pending) {
    if (!batch.known.contains(batch.ids[i]) && leaders.of_key.try_emplace(batch.ids[i], i).second) {
      leaders.commands.push_back(i);
    }
  }
  return leaders;
}

void mark_cross_scope_in_batch(BatchState& batch, const std::vector<std::size_t>& claimed) {
  std::unordered_map<std::string_view, std::string_view> scope_of_key;
  for (const auto i : claimed) {
    const Command& command = batch.commands[i];
    const auto [it, inserted] = scope_of_key.try_emplace(command.idempotency_key, command.scope);
    if (!inserted && it->second != command.scope) batch.cross_scope.insert(batch.ids[i]);
  }
}

StoredKey claimed_key(const Command& command, Status status, nlohmann::json entity,
                      nlohmann::json error, Timestamp now) {
  return StoredKey{.command_type = command.type->name,
                   .fingerprint = command.fingerprint,
                   .status = status,
                   .entity = std::move(entity),
                   .error = std::move(error),
                   .first_processed_at = now,
                   .source = command.source};
}

bool answer_settled(BatchState& batch, Timestamp now) {
  std::vector<std::size_t> still_pending;
  for (const auto i : batch.pending) {
    if (batch.results[i]) continue;  // refused by Postgres
    const auto it = batch.known.find(batch.ids[i]);
    if (it == batch.known.end()) {
      still_pending.push_back(i);
      continue;
    }
    const Command& command = batch.commands[i];
    auto& result = batch.results[i];
    result = resolve_stored(command, it->second, now);
    // Only the claimant of a key new in this transaction reports cross-scope reuse, and only
    // for a key the client sent: the same natural key in two tenants is two tenants having the
    // same field values, not a key leaking between them.
    result->cross_scope_key_reuse = !command.natural_key && it->second.source == command.source &&
                                    batch.cross_scope.contains(batch.ids[i]);
  }
  const bool answered = still_pending.size() < batch.pending.size();
  batch.pending = std::move(still_pending);
  return answered;
}

std::vector<CommandResult> take_results(BatchState& batch) {
  std::vector<CommandResult> answered;
  answered.reserve(batch.results.size());
  for (auto& result : batch.results) answered.push_back(std::move(*result));
  return answered;
}

}  // namespace dedup::pg
