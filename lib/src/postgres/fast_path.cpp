#include "fast_path.hpp"

#include <algorithm>
#include <unordered_map>

#include "dedup/errors.hpp"
#include "internal.hpp"
#include "key_rows.hpp"

namespace dedup::pg {
namespace {

bool same_columns(const Command& a, const Command& b) {
  return std::equal(a.payload.items().begin(), a.payload.items().end(),
                    b.payload.items().begin(), b.payload.items().end(),
                    [](const auto& x, const auto& y) { return x.key() == y.key(); });
}

// The statement's rows into `batch`: claimed leaders with their created entity, committed rows
// as stored. Returns the claimed leaders.
std::vector<std::size_t> take_rows(const pqxx::result& rows, const Leaders& leaders,
                                   BatchState& batch, Timestamp now) {
  std::vector<std::size_t> claimed;
  for (const auto& row : rows) {
    if (row["claimed"].is_null()) continue;  // the guard's row
    const auto i = leaders.of_key.at(key_id_of_row(row));
    if (row["claimed"].as<bool>()) {
      if (row["cross_scope"].as<bool>()) batch.cross_scope.insert(batch.ids[i]);
      claimed.push_back(i);
      batch.known.emplace(batch.ids[i],
                          claimed_key(batch.commands[i], Status::created,
                                      parse_stored_json(row["result"].c_str()), nlohmann::json(),
                                      now));
      continue;
    }
    batch.known.emplace(batch.ids[i], stored_key_from_row(row));
  }
  return claimed;
}

}  // namespace

bool fast_path_applies(std::span<const Command> commands) {
  return std::all_of(commands.begin(), commands.end(),
                     [](const Command& c) { return c.type->table.has_value(); });
}

FastPathPlan plan_fast_path(std::span<const Command> commands,
                            const std::vector<std::size_t>& leaders) {
  FastPathPlan plan;
  std::unordered_map<std::string, int> group_of;  // table + columns -> groups index
  plan.input = "[";
  const Command* previous = nullptr;  // batches are mostly one shape: reuse its group
  int current_group = 0;
  for (const auto i : leaders) {
    const Command& command = commands[i];
    if (!previous || previous->type != command.type || !same_columns(*previous, command)) {
      auto columns = column_list(command.payload);
      auto table = command.type->table->quoted();
      std::string shape = table;
      shape += '\n';
      shape += columns;
      const auto [it, inserted] =
          group_of.try_emplace(std::move(shape), static_cast<int>(plan.groups.size()));
      if (inserted) plan.groups.push_back({std::move(table), std::move(columns)});
      current_group = it->second;
    }
    previous = &command;
    if (plan.input.size() > 1) plan.input += ',';
    plan.input += '{';
    append_claim_fields(plan.input, command);
    plan.input += R"(,"g":)";
    plan.input += std::to_string(current_group);
    plan.input += R"(,"pl":)";
    plan.input += command.canonical_payload;
    plan.input += '}';
  }
  plan.input += ']';
  for (const auto& group : plan.groups) plan.signature += group.table + '\n' + group.columns + '\n';
  return plan;
}

FastPathOutcome run_fast_path(pqxx::transaction_base& txn, Session& session,
                              std::span<const Command> commands, const BatchTime& time) {
  BatchState batch(commands);
  const auto leaders = select_leaders(batch);
  const auto plan = plan_fast_path(commands, leaders.commands);
  // Prepared once per connection and group signature: parsing and analysing this statement is a
  // third of its cost at small batches. (Plans stay custom: see Session::connection().)
  const auto& statement = session.prepared(
      txn.conn(), plan.signature, [&] { return fast_path_sql(plan.groups, session.schema()); });
  pqxx::result rows;
  try {
    rows = txn.exec_prepared(statement, plan.input, time.now_text, time.expires_text);
  } catch (const pqxx::sql_error& e) {
    const auto state = sqlstate_of(e);
    if (state == kFastPathRefusedState || may_be_records(state)) return FastPathRefused{};
    throw;
  }
  // The guard's own row. Its presence proves that the guard ran, whatever plan Postgres chose:
  // the statement's result includes it, so the statement cannot complete without evaluating it.
  // (Reading the guard only through joins with the claimed and existing rows let a plan skip it
  // when both were empty: an entity committed for a key another batch had claimed.)
  const auto guard_rows = std::count_if(rows.begin(), rows.end(),
                                        [](const auto& row) { return row["claimed"].is_null(); });
  if (guard_rows != 1) {
    throw PermanentDatabaseError("the fast path's guard row is missing: not running it again", "");
  }
  mark_cross_scope_in_batch(batch, take_rows(rows, leaders, batch, time.now));
  answer_settled(batch, time.now);
  if (!batch.pending.empty()) {
    // Cannot happen: the guard makes the fast path settle every key of the batch or nothing at
    // all. Were it to, a retry is safe (each record finds its own claim), and a second round
    // must not run outside the one statement.
    throw TransientDatabaseError("the fast path left keys unsettled; retrying the batch", "");
  }
  return Settled{take_results(batch)};
}

}  // namespace dedup::pg
