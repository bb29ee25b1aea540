// What both protocols know about a batch while they settle it, and the planning steps that need
// no database: keys, leaders, cross-scope marks, answers.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "dedup/clock.hpp"
#include "dedup/command.hpp"
#include "dedup/key_store.hpp"
#include "dedup/result.hpp"

namespace dedup::pg {

// The batch's "now", and its timestamptz texts for the statements.
struct BatchTime {
  BatchTime(Timestamp now, std::chrono::seconds key_ttl);
  Timestamp now;
  std::string now_text;
  std::string expires_text;  // now + key_ttl
};

struct BatchState {
  explicit BatchState(std::span<const Command> commands);

  std::span<const Command> commands;
  std::vector<std::string> ids;                       // key_id of each command
  std::unordered_map<std::string, StoredKey> known;  // key rows settled in this transaction
  std::unordered_set<std::string> cross_scope;       // keys claimed here that another scope uses
  std::vector<std::optional<CommandResult>> results;
  std::vector<std::size_t> pending;  // commands not answered yet, in batch order
};

// The first pending command of every key that is not settled yet: the one that claims it.
struct Leaders {
  std::vector<std::size_t> commands;                     // in batch order
  std::unordered_map<std::string, std::size_t> of_key;  // key_id -> command
};
Leaders select_leaders(const BatchState& batch);

// Two scopes claiming one key inside a batch: the claiming statement's snapshot cannot see that,
// so both protocols mark their claimed leaders here (every claimant after the key's first scope).
void mark_cross_scope_in_batch(BatchState& batch, const std::vector<std::size_t>& claimed);

// The row a command claimed and whose entity it created or conflicted on, as it is now stored.
StoredKey claimed_key(const Command& command, Status status, nlohmann::json entity,
                      nlohmann::json error, Timestamp now);

// Step 5: answers every pending command whose key is settled (resolve_stored), keeps the others
// pending. Returns whether any command was answered.
bool answer_settled(BatchState& batch, Timestamp now);

// The results, one per command; every command must be answered.
std::vector<CommandResult> take_results(BatchState& batch);

// A protocol that answered every command of the batch.
struct Settled {
  std::vector<CommandResult> results;
};

}  // namespace dedup::pg
