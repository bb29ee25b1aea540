// Writes the entities of claimed commands: grouped by statement, in bulk, and row by row where
// Postgres refuses a group as a whole.
#pragma once

#include <pqxx/pqxx>

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "dedup/clock.hpp"
#include "dedup/command.hpp"
#include "dedup/result.hpp"

namespace dedup::pg {

// How much of a Postgres message is quoted in ours ("Postgres refused the payload: ... (SQLSTATE
// xxxxx)"), which must stay within kMaxRejectionMessageBytes.
inline constexpr std::size_t kQuotedMessageBytes = kMaxRejectionMessageBytes - 96;

// How one claimed command's entity write ended.
struct EntityOutcome {
  enum class Kind { created, conflict, invalid } kind = Kind::created;
  nlohmann::json entity;          // created
  nlohmann::json error;           // conflict: {"code", "message", "constraint", "sqlstate"}
  std::string reason;             // invalid: why Postgres refused the payload
  bool stored = false;            // the bulk statement already wrote the result into the key row
  std::string deployment_suspect;  // invalid with a configuration-class SQLSTATE: re-check first
};

// A set of claimed commands that share one INSERT statement.
struct EntityGroup {
  std::string identity;     // type name, plus the column list in table mode
  std::string bulk_sql;     // table mode: all rows, and their results, in one statement
  std::string per_row_sql;  // for write_entity(): one row, $1 is the payload
  std::vector<std::size_t> commands;
};

// The INSERT statements for commands[indices]: one group per type and column set, in order of
// first appearance, each listing its commands in batch order. `schema` holds the key rows.
std::vector<EntityGroup> plan_groups(std::span<const Command> commands,
                                     const std::vector<std::size_t>& indices,
                                     std::string_view schema);

// Postgres refused the bulk statement of this group (EntityGroup::identity): the transaction is
// spoilt, and is redone with the group written row by row.
struct BulkRefused {
  std::string group;
};

// One outcome per claimed command, in the order of `claimed`, or the group that was refused.
using EntityWrite = std::variant<std::vector<EntityOutcome>, BulkRefused>;

// Writes the entities of commands[claimed] and, in bulk, their results; the groups named in
// `per_row_groups` go row by row (their results are not stored: EntityOutcome::stored is false).
EntityWrite write_entities(pqxx::dbtransaction& txn, std::span<const Command> commands,
                           const std::vector<std::size_t>& claimed,
                           const std::unordered_set<std::string>& per_row_groups,
                           std::string_view schema);

// Writes commands[indices] row by row, each in its own subtransaction, so that a command's
// refusal (a record fault) is its own outcome and the others are written.
std::vector<EntityOutcome> write_per_row(pqxx::dbtransaction& txn,
                                         std::span<const Command> commands,
                                         const std::vector<std::size_t>& indices,
                                         std::string_view schema);

// An invalid outcome whose reason is `reason` (cut to fit a rejection message).
EntityOutcome invalid_outcome(std::string_view reason);

// The result of a command whose payload Postgres refused: rejected, nothing stored.
CommandResult rejected_by_postgres(const Command& command, const EntityOutcome& outcome,
                                   Timestamp now);

}  // namespace dedup::pg
