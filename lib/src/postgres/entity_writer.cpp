#include "entity_writer.hpp"

#include <fmt/format.h>

#include <unordered_map>

#include "dedup/errors.hpp"
#include "dedup/json_text.hpp"
#include "internal.hpp"
#include "key_rows.hpp"
#include "sql.hpp"

namespace dedup::pg {
namespace {

using json = nlohmann::json;

// Command index -> its slot in the outcomes of `indices`.
using SlotOf = std::unordered_map<std::size_t, std::size_t>;

SlotOf slots_of(const std::vector<std::size_t>& indices) {
  SlotOf slot_of;
  for (std::size_t slot = 0; slot < indices.size(); ++slot) slot_of[indices[slot]] = slot;
  return slot_of;
}

// A savepoint, rolled back unless released. (pqxx::subtransaction is no help here: libpqxx 6.4
// does not start it for prepared statements, so a failed one leaves the transaction aborted.)
class Savepoint {
 public:
  Savepoint(pqxx::transaction_base& txn, const char* name) : txn_(txn), name_(name) {
    txn_.exec0(std::string("SAVEPOINT ") + name_);
  }
  void release() {
    txn_.exec0(std::string("RELEASE SAVEPOINT ") + name_);
    released_ = true;
  }
  ~Savepoint() {
    if (released_) return;
    try {
      txn_.exec0(std::string("ROLLBACK TO SAVEPOINT ") + name_);
      txn_.exec0(std::string("RELEASE SAVEPOINT ") + name_);
    } catch (...) {
      // The connection is gone: the whole transaction is lost anyway, and the caller's error
      // (the one being handled) says why.
    }
  }
  Savepoint(const Savepoint&) = delete;
  Savepoint& operator=(const Savepoint&) = delete;

 private:
  pqxx::transaction_base& txn_;
  const char* name_;
  bool released_ = false;
};

// A write Postgres refused with `state` (not transient): the command is rejected, and a
// deployment-class state makes the caller re-check the deployment first (schema_check.hpp).
EntityOutcome refused_outcome(std::string_view message, const std::string& state) {
  auto outcome = invalid_outcome(fmt::format("Postgres refused the payload: {} (SQLSTATE {})",
                                             truncate_utf8(message, kQuotedMessageBytes), state));
  if (classify_sqlstate(state) == FailureKind::configuration) outcome.deployment_suspect = state;
  return outcome;
}

// How one write_entity() call ended, as the function reports it (migration 3).
EntityOutcome outcome_of_answer(const json& answer) {
  EntityOutcome outcome;
  if (answer.at("ok").get<bool>()) {
    outcome.entity = answer.at("entity");
    return outcome;
  }
  const auto& state = answer.at("sqlstate").get_ref<const std::string&>();
  // Postgres's message is quoted inside ours: cut it so that ours stays within the bound.
  const auto message = truncate_utf8(answer.at("message").get<std::string>(), kQuotedMessageBytes);
  if (state.rfind("23", 0) == 0) {
    outcome.kind = EntityOutcome::Kind::conflict;
    outcome.error = json{{"code", "conflict"},
                         {"message", message},
                         {"constraint", answer.at("constraint")},
                         {"sqlstate", state}};
    return outcome;
  }
  if (classify_sqlstate(state) == FailureKind::transient) {
    throw TransientDatabaseError("writing an entity: " + message, state);
  }
  return refused_outcome(message, state);
}

// Each command of the group alone, in a savepoint of its own.
void write_each_alone(pqxx::dbtransaction& txn, std::span<const Command> commands,
                      const EntityGroup& group, std::vector<EntityOutcome>& outcomes,
                      const SlotOf& slot_of) {
  for (const auto index : group.commands) {
    auto& outcome = outcomes[slot_of.at(index)];
    try {
      Savepoint alone(txn, "dedup_alone");
      const auto row =
          txn.exec_prepared1(kWriteOne, commands[index].canonical_payload, group.per_row_sql);
      alone.release();
      outcome = outcome_of_answer(parse_stored_json(row[0].c_str()));
    } catch (const pqxx::sql_error& refused) {
      const auto state = sqlstate_of(refused);
      if (!may_be_records(state)) throw;
      outcome = refused_outcome(refused.what(), state);
    }
  }
}

void write_group_per_row(pqxx::dbtransaction& txn, std::span<const Command> commands,
                         const EntityGroup& group, std::vector<EntityOutcome>& outcomes,
                         const SlotOf& slot_of) {
  // One statement for the group: write_entity() gives each command its own subtransaction and
  // reports its fate. In a savepoint, because the statement as a whole can still be refused:
  // Postgres takes the payloads as one jsonb value, and a number beyond numeric's range in one
  // payload fails them all. Then each command goes alone.
  pqxx::result rows;
  try {
    Savepoint attempt(txn, "dedup_group");
    rows = txn.exec_prepared(kWriteEach, payload_array(commands, group.commands),
                             group.per_row_sql);
    attempt.release();
  } catch (const pqxx::sql_error& e) {
    if (!may_be_records(sqlstate_of(e))) throw;
    write_each_alone(txn, commands, group, outcomes, slot_of);
    return;
  }
  if (rows.size() != group.commands.size()) {
    throw PermanentDatabaseError("write_entity returned a wrong number of rows", "");
  }
  for (const auto& row : rows) {
    const auto ordinal = row[0].as<std::size_t>();  // 1-based
    outcomes[slot_of.at(group.commands.at(ordinal - 1))] =
        outcome_of_answer(parse_stored_json(row[1].c_str()));
  }
}

// The group's single bulk statement; false when Postgres refused it (the caller goes row by row).
bool write_group_in_bulk(pqxx::dbtransaction& txn, std::span<const Command> commands,
                         const EntityGroup& group, std::vector<EntityOutcome>& outcomes,
                         const SlotOf& slot_of) {
  pqxx::result rows;
  try {
    rows = txn.exec_params(group.bulk_sql, payload_array(commands, group.commands),
                           key_array(commands, group.commands));
  } catch (const pqxx::sql_error& e) {
    if (may_be_records(sqlstate_of(e))) return false;
    throw;
  }
  const auto expected = group.commands.size();
  if (rows.size() != expected || rows[0][1].as<std::size_t>() != expected) return false;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    auto& outcome = outcomes[slot_of.at(group.commands[i])];
    outcome.kind = EntityOutcome::Kind::created;
    outcome.entity = parse_stored_json(rows[i][0].c_str());
    outcome.stored = true;
  }
  return true;
}

}  // namespace

std::vector<EntityGroup> plan_groups(std::span<const Command> commands,
                                     const std::vector<std::size_t>& indices,
                                     std::string_view schema) {
  std::vector<EntityGroup> groups;
  std::unordered_map<std::string, std::size_t> group_of;  // statement identity -> groups index
  for (const auto index : indices) {
    const Command& command = commands[index];
    const CommandType& type = *command.type;
    std::string identity = type.name;
    const std::string columns = type.table ? column_list(command.payload) : std::string();
    if (type.table) identity += '\n' + columns;
    auto [it, inserted] = group_of.try_emplace(identity, groups.size());
    if (inserted) {
      EntityGroup group;
      group.identity = identity;
      if (type.table) {
        const auto table = type.table->quoted();
        group.bulk_sql = bulk_insert_sql(table, columns, schema);
        group.per_row_sql = single_insert_sql(table, columns);
      } else {
        group.per_row_sql = sql_mode_statement(type);
      }
      groups.push_back(std::move(group));
    }
    groups[it->second].commands.push_back(index);
  }
  return groups;
}

EntityWrite write_entities(pqxx::dbtransaction& txn, std::span<const Command> commands,
                           const std::vector<std::size_t>& claimed,
                           const std::unordered_set<std::string>& per_row_groups,
                           std::string_view schema) {
  std::vector<EntityOutcome> outcomes(claimed.size());
  const auto slot_of = slots_of(claimed);
  for (const auto& group : plan_groups(commands, claimed, schema)) {
    if (group.bulk_sql.empty() || per_row_groups.contains(group.identity)) {
      write_group_per_row(txn, commands, group, outcomes, slot_of);
    } else if (!write_group_in_bulk(txn, commands, group, outcomes, slot_of)) {
      return BulkRefused{group.identity};
    }
  }
  return outcomes;
}

std::vector<EntityOutcome> write_per_row(pqxx::dbtransaction& txn,
                                         std::span<const Command> commands,
                                         const std::vector<std::size_t>& indices,
                                         std::string_view schema) {
  std::vector<EntityOutcome> outcomes(indices.size());
  const auto slot_of = slots_of(indices);
  for (const auto& group : plan_groups(commands, indices, schema)) {
    write_group_per_row(txn, commands, group, outcomes, slot_of);
  }
  return outcomes;
}

EntityOutcome invalid_outcome(std::string_view reason) {
  EntityOutcome outcome;
  outcome.kind = EntityOutcome::Kind::invalid;
  outcome.reason = std::string(reason);
  return outcome;
}

CommandResult rejected_by_postgres(const Command& command, const EntityOutcome& outcome,
                                   Timestamp now) {
  RejectedCommand rejected{.source = command.source,
                           .rejection = {RejectCode::invalid_payload,
                                         truncate_utf8(outcome.reason, kMaxRejectionMessageBytes)},
                           .scope = command.scope,
                           .idempotency_key = command.idempotency_key,
                           .type = command.type->name,
                           .missing_key = command.natural_key,
                           .cloudevent = command.cloudevent};
  auto result = make_rejected_result(rejected, now);
  result.natural_key = command.natural_key;
  return result;
}

}  // namespace dedup::pg
