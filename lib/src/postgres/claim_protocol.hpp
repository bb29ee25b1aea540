// The claim-first protocol, one transaction per batch (docs/design.md):
//
//   1. claim    INSERT the key rows of the batch's new keys, sorted, ON CONFLICT DO NOTHING
//               RETURNING what was claimed. Sorting makes racing batches take the key locks in one
//               order, so they wait for each other instead of deadlocking.
//   2. look up  SELECT the rows of the keys that were not claimed: committed by someone else (we
//               waited for them in step 1), or expired. Expired ones are re-claimed by UPDATE.
//   3. write    INSERT the entities of the claimed keys and store their results. Table mode, per
//   4. store    type and column set: ONE statement inserts all rows and updates their key rows
//               with the result. If Postgres refuses it (a constraint, a bad value), the whole
//               transaction is retried with that group going through write_entity(), which gives
//               each command its own subtransaction, so only the offending command fails; those
//               results are stored by one UPDATE, and rows whose payload was refused are DELETEd.
//               Keeping savepoints out of the common path saves round trips and subtransactions.
//   5. answer   Every command is judged against the row of its key (resolve_stored).
//
// A batch that repeats a key whose first command was refused by Postgres runs steps 1-5 again for
// the repeats ("rounds"): the refused command left no row, so the next one may claim the key.
#pragma once

#include <pqxx/pqxx>

#include <span>
#include <string>
#include <unordered_set>
#include <variant>

#include "batch_plan.hpp"
#include "entity_writer.hpp"
#include "schema_check.hpp"

namespace dedup::pg {

struct ClaimContext {
  const Deployment& deployment;  // its schema holds the key rows; re-checked on suspect refusals
  // Groups (EntityGroup::identity) whose bulk statement was refused earlier in this apply(): they
  // go row by row.
  const std::unordered_set<std::string>& per_row_groups;
};

// Settled, or a group's bulk statement was refused: the transaction is spoilt and must be rolled
// back; the caller redoes the batch with that group row by row.
using ClaimOutcome = std::variant<Settled, BulkRefused>;

// Runs steps 1-5, in rounds, inside `txn`; the caller commits. Throws TransientDatabaseError when
// key rows keep changing under the batch, and what the statements throw.
ClaimOutcome run_claim_protocol(pqxx::dbtransaction& txn, const ClaimContext& context,
                                std::span<const Command> commands, const BatchTime& time);

}  // namespace dedup::pg
