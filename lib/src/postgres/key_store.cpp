// The Postgres key store. The protocol, one transaction per batch (docs/design.md):
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
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <random>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "dedup/backoff.hpp"
#include "dedup/json_text.hpp"
#include "dedup/observer.hpp"
#include "dedup/postgres.hpp"
#include "internal.hpp"

namespace dedup {
namespace {

using json = nlohmann::json;

constexpr int kMaxRounds = 16;

json parse_stored_json(const char* text);

// Statement names (prepared once per connection).
constexpr const char* kClaim = "dedup_claim";
constexpr const char* kLookup = "dedup_lookup";
constexpr const char* kReclaim = "dedup_reclaim";
constexpr const char* kStoreResults = "dedup_store_results";
constexpr const char* kForget = "dedup_forget";
constexpr const char* kWriteEach = "dedup_write_each";
constexpr const char* kWriteOne = "dedup_write_one";

// The claim, lookup and fast-path statements return key rows in one layout: claimed, scope, key,
// cross_scope, then, for a row that exists, command_type, fingerprint (hex), status, result,
// created_at (µs), expired, source topic, partition, offset (stored_key_from_row reads them).
// {stored_row} is that projection of an existing row aliased k; $2 is now.
constexpr std::string_view kStoredRowColumns = R"SQL(false, k.scope, k.idempotency_key, false,
  k.command_type, encode(k.fingerprint, 'hex'), k.status, k.result::text,
  (extract(epoch FROM k.created_at) * 1000000)::bigint, k.expires_at <= $2::timestamptz,
  k.source_topic, k.source_partition, k.source_offset)SQL";

// A statement ready to prepare: {stored_row} and {schema} filled in.
std::string statement_sql(std::string_view sql, std::string_view schema) {
  std::string out(sql);
  constexpr std::string_view kPlaceholder = "{stored_row}";
  for (auto pos = out.find(kPlaceholder); pos != std::string::npos; pos = out.find(kPlaceholder, pos)) {
    out.replace(pos, kPlaceholder.size(), kStoredRowColumns);
    pos += kStoredRowColumns.size();
  }
  return pg::with_schema(out, schema);
}

//
// Claim or look up, in one round trip: `existing` reads the committed rows of the batch's keys
// (the statement's snapshot); the others are INSERTed, sorted, ON CONFLICT DO NOTHING. A key that
// is in neither result was committed by a concurrent batch after our snapshot (we waited for it
// in the INSERT): kLookup reads it with a new snapshot. RETURNING's subquery sees the snapshot too:
// rows of other scopes committed before, not the rows inserted by this statement.
// $1: [{s, k, t, f, tp, p, o}], $2: now, $3: expires_at.
constexpr const char* kClaimSql = R"SQL(
WITH input AS (
  SELECT * FROM jsonb_to_recordset($1::jsonb)
    AS x(s text, k text, t text, f text, tp text, p int, o bigint)),
existing AS (
  SELECT k.* FROM input x
  JOIN {schema}.idempotency_keys k ON k.scope = x.s AND k.idempotency_key = x.k),
claimed AS (
  INSERT INTO {schema}.idempotency_keys AS k
    (scope, idempotency_key, command_type, fingerprint, status, created_at, expires_at,
     source_topic, source_partition, source_offset)
  SELECT x.s, x.k, x.t, decode(x.f, 'hex'), 'pending', $2::timestamptz, $3::timestamptz,
         x.tp, x.p, x.o
  FROM input x
  WHERE NOT EXISTS (SELECT 1 FROM existing e WHERE e.scope = x.s AND e.idempotency_key = x.k)
  ORDER BY x.s COLLATE "C", x.k COLLATE "C"
  ON CONFLICT (scope, idempotency_key) DO NOTHING
  RETURNING k.scope, k.idempotency_key,
    EXISTS (SELECT 1 FROM {schema}.idempotency_keys o
            WHERE o.idempotency_key = k.idempotency_key AND o.scope <> k.scope
              AND o.expires_at > $2::timestamptz) AS cross_scope)
SELECT true, c.scope, c.idempotency_key, c.cross_scope, NULL::text, NULL::text, NULL::text,
       NULL::text, NULL::bigint, NULL::boolean, NULL::text, NULL::integer, NULL::bigint
FROM claimed c
UNION ALL
SELECT {stored_row} FROM existing k)SQL";

// $1: [{s, k}], $2: now.
constexpr const char* kLookupSql = R"SQL(
SELECT {stored_row}
FROM jsonb_to_recordset($1::jsonb) AS x(s text, k text)
JOIN {schema}.idempotency_keys k ON k.scope = x.s AND k.idempotency_key = x.k)SQL";

// $1: [{s, k, t, f, tp, p, o}], $2: now, $3: expires_at. Takes over keys that expired; a row that a
// concurrent batch re-claimed first no longer matches the WHERE after we waited for it.
constexpr const char* kReclaimSql = R"SQL(
UPDATE {schema}.idempotency_keys AS k
SET command_type = x.t, fingerprint = decode(x.f, 'hex'), status = 'pending', result = NULL,
    created_at = $2::timestamptz, expires_at = $3::timestamptz,
    source_topic = x.tp, source_partition = x.p, source_offset = x.o
FROM jsonb_to_recordset($1::jsonb) AS x(s text, k text, t text, f text, tp text, p int, o bigint)
WHERE k.scope = x.s AND k.idempotency_key = x.k AND k.expires_at <= $2::timestamptz
RETURNING k.scope, k.idempotency_key,
  EXISTS (SELECT 1 FROM {schema}.idempotency_keys o
          WHERE o.idempotency_key = k.idempotency_key AND o.scope <> k.scope
            AND o.expires_at > $2::timestamptz) AS cross_scope)SQL";

// $1: [{s, k, st, r}]. Touches only rows this transaction claimed; no indexed column changes, so
// with the table's fillfactor the update is HOT.
constexpr const char* kStoreResultsSql = R"SQL(
UPDATE {schema}.idempotency_keys AS k SET status = x.st, result = x.r
FROM jsonb_to_recordset($1::jsonb) AS x(s text, k text, st text, r jsonb)
WHERE k.scope = x.s AND k.idempotency_key = x.k)SQL";

// $1: [{s, k}]: claimed keys whose payload Postgres refused.
constexpr const char* kForgetSql = R"SQL(
DELETE FROM {schema}.idempotency_keys AS k
USING jsonb_to_recordset($1::jsonb) AS x(s text, k text)
WHERE k.scope = x.s AND k.idempotency_key = x.k)SQL";

// $1: [payload, ...], $2: the statement for one group. Rows are evaluated in array order.
constexpr const char* kWriteEachSql = R"SQL(
SELECT e.ord, {schema}.write_entity($2, e.payload)::text
FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(payload, ord))SQL";

// $1: one payload, $2: its statement.
constexpr const char* kWriteOneSql = R"SQL(SELECT {schema}.write_entity($2, $1::jsonb)::text)SQL";

std::string key_id(const Command& command) {
  std::string id;
  id.reserve(command.scope.size() + command.idempotency_key.size() + 1);
  id += command.scope;
  id += '\0';
  id += command.idempotency_key;
  return id;
}

std::string key_id(std::string_view scope, std::string_view key) {
  std::string id(scope);
  id += '\0';
  id += key;
  return id;
}

// The fields of a claim, "s","k","t","f","tp","p","o", appended to `out` without the braces, so
// the fast path can add its own. Written directly rather than through JSON objects: this runs
// for every command of every batch (a tenth of the client's time, measured, the other way).
void append_claim_fields(std::string& out, const Command& command) {
  out += R"("s":)";
  write_json_string(out, command.scope);
  out += R"(,"k":)";
  write_json_string(out, command.idempotency_key);
  out += R"(,"t":)";
  write_json_string(out, command.type->name);
  out += R"(,"f":")";
  out += to_hex(command.fingerprint);
  out += R"(","tp":)";
  write_json_string(out, command.source.topic);
  out += R"(,"p":)";
  out += std::to_string(command.source.partition);
  out += R"(,"o":)";
  out += std::to_string(command.source.offset);
}

// The claims of commands[indices] as a JSON array (the input of kClaimSql and kReclaimSql).
std::string claim_array(std::span<const Command> commands, const std::vector<std::size_t>& indices) {
  std::string out = "[";
  for (auto i : indices) {
    if (out.size() > 1) out += ',';
    out += '{';
    append_claim_fields(out, commands[i]);
    out += '}';
  }
  return out + ']';
}

// An SQL-mode type's statement as the store runs it (write_entity's $1 is the payload): the
// configured statement, its row returned as jsonb.
std::string sql_mode_statement(const CommandType& type) {
  return fmt::format("WITH entity AS ({}) SELECT to_jsonb(entity) FROM entity", type.sql);
}

// [{"s": scope, "k": key}, ...] of commands[indices]: the keys a statement looks up, updates or
// deletes.
std::string key_array(std::span<const Command> commands, const std::vector<std::size_t>& indices) {
  std::string out = "[";
  for (const auto i : indices) {
    if (out.size() > 1) out += ',';
    out += R"({"s":)";
    write_json_string(out, commands[i].scope);
    out += R"(,"k":)";
    write_json_string(out, commands[i].idempotency_key);
    out += '}';
  }
  return out + ']';
}

// [payload, ...] of commands[indices], each as its canonical text: numbers exactly as written.
std::string payload_array(std::span<const Command> commands, const std::vector<std::size_t>& indices) {
  std::string out = "[";
  for (const auto i : indices) {
    if (out.size() > 1) out += ',';
    out += commands[i].canonical_payload;
  }
  return out + ']';
}

// The quoted column list of a table-mode command: its payload's fields, in canonical order.
std::string column_list(const json& payload) {
  std::string columns;
  for (const auto& [field, value] : payload.items()) {
    if (!columns.empty()) columns += ", ";
    columns += quote_identifier(field);
  }
  return columns;
}

// Two scopes claiming one key inside a batch: the claiming statement's snapshot cannot see that,
// so both protocols check their claimed leaders here.
void mark_cross_scope_in_batch(std::span<const Command> commands,
                               const std::vector<std::size_t>& claimed,
                               const std::vector<std::string>& ids,
                               std::unordered_set<std::string>& cross_scope) {
  std::unordered_map<std::string_view, std::string_view> scope_of_key;
  for (auto i : claimed) {
    const auto [it, inserted] =
        scope_of_key.try_emplace(commands[i].idempotency_key, commands[i].scope);
    if (!inserted && it->second != commands[i].scope) cross_scope.insert(ids[i]);
  }
}

Fingerprint fingerprint_from_hex(std::string_view hex) {
  Fingerprint fingerprint{};
  if (hex.size() != fingerprint.size() * 2) throw Error("stored fingerprint has a bad length");
  auto nibble = [](char c) -> std::uint8_t {
    return static_cast<std::uint8_t>(c <= '9' ? c - '0' : c - 'a' + 10);
  };
  for (std::size_t i = 0; i < fingerprint.size(); ++i) {
    fingerprint[i] = static_cast<std::uint8_t>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
  }
  return fingerprint;
}

// A committed key row, as the claim, lookup and fast-path statements return it (columns 4-12:
// command_type, fingerprint hex, status, result, created_at µs, expired, source topic, partition,
// offset). Throws TransientDatabaseError for a 'pending' row, which only an open transaction can
// see (never the case here; it would mean reading another transaction's uncommitted claim).
StoredKey stored_key_from_row(const pqxx::row& row) {
  const std::string_view status = row[6].c_str();
  if (status == "pending") throw TransientDatabaseError("found an uncommitted key row; retrying", "");
  StoredKey stored;
  stored.command_type = row[4].c_str();
  stored.fingerprint = fingerprint_from_hex(row[5].c_str());
  stored.status = status == "created" ? Status::created : Status::conflict;
  const auto result = parse_stored_json(row[7].c_str());
  stored.entity = result.value("entity", json());
  stored.error = result.value("error", json());
  stored.first_processed_at = Timestamp(std::chrono::microseconds(row[8].as<std::int64_t>()));
  stored.source = {row[10].c_str(), row[11].as<std::int32_t>(), row[12].as<std::int64_t>()};
  return stored;
}

// How one claimed command's entity write ended.
struct EntityOutcome {
  enum class Kind { created, conflict, invalid } kind = Kind::created;
  json entity;          // created
  json error;           // conflict: {"code", "message", "constraint", "sqlstate"}
  std::string reason;   // invalid: why Postgres refused the payload
  bool stored = false;  // the bulk statement already wrote the result into the key row
  std::string deployment_suspect;  // invalid with a configuration-class SQLSTATE: re-check first
};

// A set of claimed commands that share one INSERT statement.
struct EntityGroup {
  std::string identity;     // type name, plus the column list in table mode
  std::string bulk_sql;     // table mode: all rows, and their results, in one statement
  std::string per_row_sql;  // for write_entity(): one row, $1 is the payload
  std::vector<std::size_t> commands;
};

// Thrown inside a transaction when a group's bulk statement was refused; the transaction is
// rolled back and retried with the group written row by row.
struct BulkRefused {
  std::string identity;
};

// Thrown inside a transaction when the single-statement fast path does not apply to this batch
// (a key claimed concurrently, a refused entity, an expired key): the transaction is rolled back
// and the batch redone with the claim-first protocol.
struct FastPathRefused {};

// SQLSTATE raised by fast_path_guard() (migration 2).
constexpr std::string_view kFastPathRefusedState = "DD001";
// After a refusal, batches skip the fast path for a while: refusals come in runs (a burst of
// racing workers, a type that keeps conflicting), and each one costs a rolled-back statement.
constexpr int kFastPathCooldownBatches = 8;

// How much of a Postgres message is quoted in ours ("Postgres refused the payload: ... (SQLSTATE
// xxxxx)"), which must stay within kMaxRejectionMessageBytes.
constexpr std::size_t kQuotedMessageBytes = kMaxRejectionMessageBytes - 96;

// Not transient: a statement over many records that fails so is redone in a way that pins the
// error on one record. A configuration-class error can be one record's too (a row-level security
// WITH CHECK: 42501; a regclass value naming no table: 42P01); the deployment is re-checked then.
bool may_be_records(const std::string& sqlstate) {
  return pg::classify_sqlstate(sqlstate) != pg::FailureKind::transient;
}

// JSON that Postgres produced (to_jsonb of an entity row, a stored result): numbers kept exactly.
// Payloads nest at most 64 levels, so a table-mode entity stays far below this bound; only an SQL
// statement that builds deeper JSON reaches it, and that command is then refused (a record fault:
// SQLSTATE DD002, our own), rather than recursing without bound.
constexpr std::size_t kStoredJsonDepth = 512;
json parse_stored_json(const char* text) {
  auto parsed = parse_json(text, JsonParseLimits{.max_depth = kStoredJsonDepth});
  if (std::holds_alternative<std::string>(parsed)) {
    // No byte offset in the message: it would change with the row (a longer id) and a replayed
    // rejection must be identical.
    throw PermanentDatabaseError(
        fmt::format("Postgres returned JSON nested deeper than {} levels (SQLSTATE DD002)",
                    kStoredJsonDepth),
        "DD002");
  }
  return std::move(std::get<json>(parsed));
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
// deployment-class state makes the caller re-check the deployment first (verify_deployment).
EntityOutcome refused_outcome(std::string_view message, const std::string& state) {
  EntityOutcome outcome;
  outcome.kind = EntityOutcome::Kind::invalid;
  outcome.reason = fmt::format("Postgres refused the payload: {} (SQLSTATE {})",
                               truncate_utf8(message, kQuotedMessageBytes), state);
  if (pg::classify_sqlstate(state) == pg::FailureKind::configuration) {
    outcome.deployment_suspect = state;
  }
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
  if (pg::classify_sqlstate(state) == pg::FailureKind::transient) {
    throw TransientDatabaseError("writing an entity: " + message, state);
  }
  return refused_outcome(message, state);
}

// The result of a command whose payload Postgres refused: rejected, nothing stored.
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

}  // namespace

struct PostgresKeyStore::Impl {
  PostgresOptions options;
  const CommandCatalog& catalog;
  Observer* observer;
  std::unique_ptr<pqxx::connection> connection;
  std::size_t retried = 0;

  Impl(PostgresOptions opts, const CommandCatalog& cat, Observer* obs)
      : options(std::move(opts)), catalog(cat), observer(obs) {}

  pqxx::connection& conn() {
    if (connection && connection->is_open()) return *connection;
    connection.reset();
    auto fresh = pg::connect(options.conninfo);
    // Plan every execution for its input: a generic plan cached while the keys table was small
    // (seq scans) would otherwise stay in use as the table grows to millions of rows.
    pqxx::nontransaction(*fresh).exec("SET plan_cache_mode = force_custom_plan");
    fast_path_statements.clear();  // prepared statements belong to the old connection
    const auto& schema = options.schema;
    fresh->prepare(kClaim, statement_sql(kClaimSql, schema));
    fresh->prepare(kLookup, statement_sql(kLookupSql, schema));
    fresh->prepare(kReclaim, statement_sql(kReclaimSql, schema));
    fresh->prepare(kStoreResults, statement_sql(kStoreResultsSql, schema));
    fresh->prepare(kForget, statement_sql(kForgetSql, schema));
    fresh->prepare(kWriteEach, statement_sql(kWriteEachSql, schema));
    fresh->prepare(kWriteOne, statement_sql(kWriteOneSql, schema));
    connection = std::move(fresh);
    return *connection;
  }

  void check_schema_and_tables() { check_deployment(conn()); }
  void check_deployment(pqxx::connection& c);
  // A write was refused with a configuration-class SQLSTATE: if the start-up checks still pass
  // (on a connection of their own: this one is mid-transaction), the record is at fault and its
  // refusal stands; if not, the deployment changed: PermanentDatabaseError (exit 1).
  void verify_deployment(const std::vector<EntityOutcome>& outcomes) {
    const auto suspect = std::find_if(outcomes.begin(), outcomes.end(), [](const EntityOutcome& o) {
      return !o.deployment_suspect.empty();
    });
    if (suspect == outcomes.end()) return;
    auto fresh = pg::connect(options.conninfo);
    try {
      check_deployment(*fresh);
    } catch (const ConfigError& e) {
      throw PermanentDatabaseError(std::string("the deployment changed: ") + e.what(),
                                   suspect->deployment_suspect);
    }
  }
  // Groups (EntityGroup::identity) whose bulk statement was refused in this apply(): they go row
  // by row on the retry.
  std::unordered_set<std::string> per_row_groups;
  // Fast-path statements prepared on the current connection: group signature -> name.
  std::unordered_map<std::string, std::string> fast_path_statements;
  int fast_path_cooldown = 0;     // batches left before the fast path is tried again
  std::size_t fast_path_fallbacks = 0;

  // Whether the fast path can take this batch: every command in table mode (the fast path
  // settles all of the batch's keys in its one statement).
  static bool fast_path_applies(std::span<const Command> commands) {
    return std::all_of(commands.begin(), commands.end(),
                       [](const Command& c) { return c.type->table.has_value(); });
  }

  // The single-statement fast path for a round whose leaders are all table-mode commands:
  // settles every leader in `known` (claimed ones with their created entity). Throws
  // FastPathRefused when it does not apply; then nothing of it took effect.
  void run_fast_path(pqxx::transaction_base& txn, std::span<const Command> commands,
                     const std::vector<std::size_t>& leaders,
                     const std::unordered_map<std::string, std::size_t>& leader_of,
                     const std::vector<std::string>& ids,
                     std::unordered_map<std::string, StoredKey>& known,
                     std::unordered_set<std::string>& cross_scope, const std::string& now_text,
                     const std::string& expires_text, Timestamp now);

  // One atomic attempt at the batch, redone on refusals and transient failures (bounded).
  std::vector<CommandResult> apply_with_retries(std::span<const Command> commands, Timestamp now);

  // `fast`: settle the batch with the fast path's single statement, in a pqxx::nontransaction
  // (apply() checked fast_path_applies); otherwise the claim-first protocol, in a pqxx::work.
  std::vector<CommandResult> run(pqxx::transaction_base& txn, std::span<const Command> commands,
                                 Timestamp now, bool fast);
  // The INSERT statements for commands[indices]: one group per type and column set.
  std::vector<EntityGroup> plan_groups(std::span<const Command> commands,
                                       const std::vector<std::size_t>& indices) const;
  // Writes the entities of the claimed commands and, in bulk, their results; a group whose bulk
  // statement Postgres refuses throws BulkRefused (the caller redoes it row by row).
  std::vector<EntityOutcome> write_entities(pqxx::dbtransaction& txn,
                                            std::span<const Command> commands,
                                            const std::vector<std::size_t>& claimed);
  // Writes a group command by command, each in its own subtransaction, so that a command's
  // refusal (a record fault) is its own outcome and the others are written.
  void write_group_per_row(pqxx::dbtransaction& txn, std::span<const Command> commands,
                           const EntityGroup& group, std::vector<EntityOutcome>& outcomes,
                           const std::unordered_map<std::size_t, std::size_t>& slot_of);
  std::vector<EntityOutcome> write_per_row(pqxx::dbtransaction& txn,
                                           std::span<const Command> commands,
                                           const std::vector<std::size_t>& indices);
  // A `key_reused` command whose payload Postgres refuses is `rejected` instead, as it is when
  // its key is free: so a record's result does not depend on whether another record claimed its
  // key meanwhile (it stays the same when the record is read again after a crash).
  void reject_refused_reuses(std::span<const Command> commands,
                             std::vector<CommandResult>& results, Timestamp now);

  // Deadlocks and serialization failures clear up fastest when the losers do not come back in
  // lockstep: jittered exponential backoff from 5 ms, capped at 1 s.
  Backoff retry_delay{std::chrono::milliseconds(5), std::chrono::seconds(1)};
  void backoff(int attempt) { std::this_thread::sleep_for(retry_delay.delay(attempt - 1)); }
};

void PostgresKeyStore::Impl::check_deployment(pqxx::connection& c) {
  try {
    pqxx::read_transaction txn(c);
    const auto table = pg::with_schema("{schema}.schema_migrations", options.schema);
    if (txn.exec_params("SELECT to_regclass($1) IS NULL", table)[0][0].as<bool>()) {
      throw ConfigError("--db-schema", fmt::format("schema '{}' has no dedup tables: run "
                                                   "`dedup-worker migrate` first",
                                                   options.schema));
    }
    const int version =
        txn.exec("SELECT coalesce(max(version), 0) FROM " + table)[0][0].as<int>();
    if (version != latest_schema_version()) {
      throw ConfigError("--db-schema",
                        fmt::format("schema '{}' is at version {}, this build expects {}: {}",
                                    options.schema, version, latest_schema_version(),
                                    version < latest_schema_version()
                                        ? "run `dedup-worker migrate`"
                                        : "the schema is newer than this worker; upgrade it"));
    }
    // Privileges are checked here because at run time their absence is not a record's fault:
    // without them every batch would fail (docs/design.md, "Errors by SQLSTATE").
    const auto keys_table = pg::with_schema("{schema}.idempotency_keys", options.schema);
    for (const char* privilege : {"SELECT", "INSERT", "UPDATE", "DELETE"}) {
      if (!txn.exec_params("SELECT has_table_privilege($1, $2)", keys_table, privilege)[0][0]
               .as<bool>()) {
        throw ConfigError("--db", fmt::format("the database role may not {} {}", privilege,
                                              keys_table));
      }
    }
    for (const auto& type : catalog.types()) {
      if (type.table) {
        const auto field = "commands." + type.name + ".table";
        if (txn.exec_params("SELECT to_regclass($1) IS NULL", type.table->quoted())[0][0].as<bool>()) {
          throw ConfigError(field, fmt::format("table {}.{} does not exist", type.table->schema,
                                               type.table->name));
        }
        if (!txn.exec_params("SELECT has_table_privilege($1, 'INSERT')", type.table->quoted())[0][0]
                 .as<bool>()) {
          throw ConfigError(field, fmt::format("the database role may not INSERT into {}.{}",
                                               type.table->schema, type.table->name));
        }
      }
    }
  } catch (const ConfigError&) {
    throw;
  } catch (...) {
    pg::rethrow_classified("checking the schema");
  }
  // Configured SQL is checked by preparing it: syntax, tables and columns are validated without
  // running it. Each check in its own transaction, so one failure names its own command type.
  for (const auto& type : catalog.types()) {
    if (type.table) continue;
    try {
      pqxx::work txn(c);
      // As it runs: wrapped. A statement that prepares alone can still be refused wrapped (a
      // data-modifying WITH must be at the top level), and would then refuse every command.
      txn.exec("PREPARE dedup_config_check(jsonb) AS " + sql_mode_statement(type));
      txn.exec("DEALLOCATE dedup_config_check");
    } catch (const pqxx::sql_error& e) {
      if (pg::classify_sqlstate(pg::sqlstate_of(e)) != pg::FailureKind::transient) {
        throw ConfigError("commands." + type.name + ".sql",
                          fmt::format("Postgres refuses the statement: {}", e.what()));
      }
      pg::rethrow_classified("checking commands." + type.name + ".sql");
    } catch (...) {
      pg::rethrow_classified("checking commands." + type.name + ".sql");
    }
  }
}

std::vector<EntityGroup> PostgresKeyStore::Impl::plan_groups(
    std::span<const Command> commands, const std::vector<std::size_t>& indices) const {
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
        // Rows come back from INSERT ... RETURNING in input order (as ORMs' bulk inserts rely
        // on), so row n of $1 is key n of $2. The count is checked: a trigger that skips a row
        // would break the pairing, and the group then goes row by row.
        group.bulk_sql = fmt::format(
            "WITH entity AS (INSERT INTO {0} ({1}) SELECT {1} FROM "
            "jsonb_populate_recordset(NULL::{0}, $1::jsonb) RETURNING *), "
            "numbered AS (SELECT row_number() OVER () AS n, to_jsonb(entity) AS row FROM entity), "
            "stored AS (UPDATE {2}.idempotency_keys AS k SET status = 'created', "
            "result = jsonb_build_object('entity', numbered.row, 'error', NULL) "
            "FROM ROWS FROM (jsonb_to_recordset($2::jsonb) AS (s text, k text)) "
            "WITH ORDINALITY AS x(s, k, n) JOIN numbered ON numbered.n = x.n "
            "WHERE k.scope = x.s AND k.idempotency_key = x.k RETURNING 1) "
            "SELECT row::text, (SELECT count(*) FROM stored) FROM numbered ORDER BY n",
            table, columns, quote_identifier(options.schema));
        group.per_row_sql = fmt::format(
            "WITH entity AS (INSERT INTO {0} ({1}) SELECT {1} FROM "
            "jsonb_populate_record(NULL::{0}, $1) RETURNING *) SELECT to_jsonb(entity) FROM entity",
            table, columns);
      } else {
        group.per_row_sql =
            sql_mode_statement(type);
      }
      groups.push_back(std::move(group));
    }
    groups[it->second].commands.push_back(index);
  }
  return groups;
}

std::vector<EntityOutcome> PostgresKeyStore::Impl::write_entities(
    pqxx::dbtransaction& txn, std::span<const Command> commands,
    const std::vector<std::size_t>& claimed) {
  std::vector<EntityOutcome> outcomes(claimed.size());
  std::unordered_map<std::size_t, std::size_t> slot_of;  // command index -> outcomes slot
  for (std::size_t slot = 0; slot < claimed.size(); ++slot) slot_of[claimed[slot]] = slot;

  for (const auto& group : plan_groups(commands, claimed)) {
    if (!group.bulk_sql.empty() && !per_row_groups.contains(group.identity)) {
      const auto payloads = payload_array(commands, group.commands);
      const auto keys = key_array(commands, group.commands);
      pqxx::result rows;
      try {
        rows = txn.exec_params(group.bulk_sql, payloads, keys);
      } catch (const pqxx::sql_error& e) {
        if (may_be_records(pg::sqlstate_of(e))) throw BulkRefused{group.identity};
        throw;
      }
      const auto expected = group.commands.size();
      if (rows.size() != expected || rows[0][1].as<std::size_t>() != expected) {
        throw BulkRefused{group.identity};
      }
      for (std::size_t i = 0; i < rows.size(); ++i) {
        auto& outcome = outcomes[slot_of.at(group.commands[i])];
        outcome.kind = EntityOutcome::Kind::created;
        outcome.entity = parse_stored_json(rows[i][0].c_str());
        outcome.stored = true;
      }
      continue;
    }
    write_group_per_row(txn, commands, group, outcomes, slot_of);
  }
  return outcomes;
}

void PostgresKeyStore::Impl::write_group_per_row(
    pqxx::dbtransaction& txn, std::span<const Command> commands, const EntityGroup& group,
    std::vector<EntityOutcome>& outcomes,
    const std::unordered_map<std::size_t, std::size_t>& slot_of) {
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
    if (!may_be_records(pg::sqlstate_of(e))) throw;
    for (const auto index : group.commands) {
      auto& outcome = outcomes[slot_of.at(index)];
      try {
        Savepoint alone(txn, "dedup_alone");
        const auto row = txn.exec_prepared1(kWriteOne, commands[index].canonical_payload,
                                            group.per_row_sql);
        alone.release();
        outcome = outcome_of_answer(parse_stored_json(row[0].c_str()));
      } catch (const pqxx::sql_error& refused) {
        const auto state = pg::sqlstate_of(refused);
        if (!may_be_records(state)) throw;
        outcome = refused_outcome(refused.what(), state);
      }
    }
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

std::vector<EntityOutcome> PostgresKeyStore::Impl::write_per_row(
    pqxx::dbtransaction& txn, std::span<const Command> commands,
    const std::vector<std::size_t>& indices) {
  std::vector<EntityOutcome> outcomes(indices.size());
  std::unordered_map<std::size_t, std::size_t> slot_of;
  for (std::size_t slot = 0; slot < indices.size(); ++slot) slot_of[indices[slot]] = slot;
  for (const auto& group : plan_groups(commands, indices)) {
    write_group_per_row(txn, commands, group, outcomes, slot_of);
  }
  return outcomes;
}

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
  pqxx::work txn(conn());
  const auto outcomes = write_per_row(txn, commands, reused);
  txn.abort();
  verify_deployment(outcomes);
  for (std::size_t slot = 0; slot < reused.size(); ++slot) {
    if (outcomes[slot].kind != EntityOutcome::Kind::invalid) continue;
    results[reused[slot]] = rejected_by_postgres(commands[reused[slot]], outcomes[slot], now);
  }
}

void PostgresKeyStore::Impl::run_fast_path(
    pqxx::transaction_base& txn, std::span<const Command> commands, const std::vector<std::size_t>& leaders,
    const std::unordered_map<std::string, std::size_t>& leader_of,
    const std::vector<std::string>& ids, std::unordered_map<std::string, StoredKey>& known,
    std::unordered_set<std::string>& cross_scope, const std::string& now_text,
    const std::string& expires_text, Timestamp now) {
  // Groups: one entity INSERT per (table, column set), numbered in order of first appearance.
  struct Group {
    std::string table;
    std::string columns;
  };
  std::vector<Group> groups;
  std::unordered_map<std::string, int> group_of;
  std::string input = "[";  // the claims, plus each command's group and payload
  const Command* previous = nullptr;  // batches are mostly one shape: reuse its group
  int current_group = 0;
  for (auto i : leaders) {
    const Command& command = commands[i];
    const bool same_shape =
        previous && previous->type == command.type &&
        std::equal(previous->payload.items().begin(), previous->payload.items().end(),
                   command.payload.items().begin(), command.payload.items().end(),
                   [](const auto& a, const auto& b) { return a.key() == b.key(); });
    if (!same_shape) {
      auto columns = column_list(command.payload);
      const auto table = command.type->table->quoted();
      const auto [it, inserted] =
          group_of.try_emplace(table + '\n' + columns, static_cast<int>(groups.size()));
      if (inserted) groups.push_back({table, columns});
      current_group = it->second;
    }
    previous = &command;
    if (input.size() > 1) input += ',';
    input += '{';
    append_claim_fields(input, command);
    input += R"(,"g":)";
    input += std::to_string(current_group);
    input += R"(,"pl":)";
    input += command.canonical_payload;
    input += '}';
  }
  input += ']';

  // input: the leaders in batch order; existing: their committed rows (this statement's
  // snapshot); fresh: the others, numbered per group in batch order; e<g>: each group's entities,
  // inserted in that order (RETURNING keeps it, so row n of e<g> is fresh row n of group g);
  // claimed: the key rows with their final result, sorted, ON CONFLICT DO NOTHING; guard: aborts
  // the whole statement unless every fresh key was claimed and got its entity.
  std::string sql = R"SQL(
WITH input AS (
  SELECT * FROM ROWS FROM (jsonb_to_recordset($1::jsonb)
      AS (s text, k text, t text, f text, tp text, p int, o bigint, g int, pl jsonb))
    WITH ORDINALITY AS x(s, k, t, f, tp, p, o, g, pl, ord)),
existing AS (
  SELECT k.* FROM input x
  JOIN {schema}.idempotency_keys k ON k.scope = x.s AND k.idempotency_key = x.k),
fresh AS (
  SELECT x.*, row_number() OVER (PARTITION BY x.g ORDER BY x.ord) AS n FROM input x
  WHERE NOT EXISTS (SELECT 1 FROM existing e WHERE e.scope = x.s AND e.idempotency_key = x.k)))SQL";
  for (std::size_t g = 0; g < groups.size(); ++g) {
    sql += fmt::format(
        ",\ne{0} AS (INSERT INTO {1} ({2}) SELECT {2} FROM jsonb_populate_recordset(NULL::{1}, "
        "(SELECT jsonb_agg(f.pl ORDER BY f.ord) FROM fresh f WHERE f.g = {0})) RETURNING *)",
        g, groups[g].table, groups[g].columns);
  }
  sql += ",\nentities AS (";
  for (std::size_t g = 0; g < groups.size(); ++g) {
    if (g > 0) sql += " UNION ALL ";
    sql += fmt::format("SELECT {0} AS g, row_number() OVER () AS n, to_jsonb(r) AS row FROM e{0} r", g);
  }
  sql += R"SQL(),
claimed AS (
  INSERT INTO {schema}.idempotency_keys AS k
    (scope, idempotency_key, command_type, fingerprint, status, result, created_at, expires_at,
     source_topic, source_partition, source_offset)
  SELECT f.s, f.k, f.t, decode(f.f, 'hex'), 'created',
         jsonb_build_object('entity', en.row, 'error', NULL), $2::timestamptz, $3::timestamptz,
         f.tp, f.p, f.o
  FROM fresh f JOIN entities en ON en.g = f.g AND en.n = f.n
  ORDER BY f.s COLLATE "C", f.k COLLATE "C"
  ON CONFLICT (scope, idempotency_key) DO NOTHING
  RETURNING k.scope, k.idempotency_key, k.result,
    EXISTS (SELECT 1 FROM {schema}.idempotency_keys o
            WHERE o.idempotency_key = k.idempotency_key AND o.scope <> k.scope
              AND o.expires_at > $2::timestamptz) AS cross_scope),
guard AS (
  SELECT {schema}.fast_path_guard((SELECT count(*) FROM claimed), (SELECT count(*) FROM fresh),
                                  (SELECT count(*) FROM entities),
                                  (SELECT count(*) FROM existing WHERE expires_at <= $2::timestamptz)))
SELECT true, c.scope, c.idempotency_key, c.cross_scope, NULL::text, NULL::text, 'created',
       (c.result -> 'entity')::text, NULL::bigint, false, NULL::text, NULL::integer, NULL::bigint
FROM claimed c
UNION ALL
SELECT {stored_row} FROM existing k
UNION ALL
SELECT NULL::boolean, NULL::text, NULL::text, NULL::boolean, NULL::text, NULL::text, NULL::text,
       NULL::text, NULL::bigint, NULL::boolean, NULL::text, NULL::integer, NULL::bigint
FROM guard)SQL";

  // Prepared once per connection and group signature: parsing and analysing this statement is a
  // third of its cost at small batches. (Plans stay custom: see conn().)
  std::string signature;
  for (const auto& group : groups) signature += group.table + '\n' + group.columns + '\n';
  auto [prepared, inserted] = fast_path_statements.try_emplace(signature);
  if (inserted) {
    prepared->second = "dedup_fast_" + std::to_string(fast_path_statements.size());
    txn.conn().prepare(prepared->second, statement_sql(sql, options.schema));
  }
  pqxx::result rows;
  try {
    rows = txn.exec_prepared(prepared->second, input, now_text, expires_text);
  } catch (const pqxx::sql_error& e) {
    const auto state = pg::sqlstate_of(e);
    if (state == kFastPathRefusedState || may_be_records(state)) throw FastPathRefused{};
    throw;
  }
  // The guard's own row. Its presence proves that the guard ran, whatever plan Postgres chose:
  // the statement's result includes it, so the statement cannot complete without evaluating it.
  // (Reading the guard only through joins with the claimed and existing rows let a plan skip it
  // when both were empty: an entity committed for a key another batch had claimed.)
  const auto guard_rows = std::count_if(rows.begin(), rows.end(),
                                        [](const auto& row) { return row[0].is_null(); });
  if (guard_rows != 1) {
    throw PermanentDatabaseError("the fast path's guard row is missing: not running it again", "");
  }
  std::vector<std::size_t> claimed_leaders;
  for (const auto& row : rows) {
    if (row[0].is_null()) continue;  // the guard's row
    const auto i = leader_of.at(key_id(row[1].c_str(), row[2].c_str()));
    const Command& command = commands[i];
    if (row[0].as<bool>()) {
      if (row[3].as<bool>()) cross_scope.insert(ids[i]);
      claimed_leaders.push_back(i);
      known.emplace(ids[i], StoredKey{.command_type = command.type->name,
                                      .fingerprint = command.fingerprint,
                                      .status = Status::created,
                                      .entity = parse_stored_json(row[7].c_str()),
                                      .error = json(),
                                      .first_processed_at = now,
                                      .source = command.source});
      continue;
    }
    known.emplace(ids[i], stored_key_from_row(row));
  }
  mark_cross_scope_in_batch(commands, claimed_leaders, ids, cross_scope);
}

std::vector<CommandResult> PostgresKeyStore::Impl::run(pqxx::transaction_base& txn,
                                                       std::span<const Command> commands,
                                                       Timestamp now, bool fast) {
  const auto now_text = pg::to_pg_timestamp(now);
  const auto expires_text = pg::to_pg_timestamp(now + options.key_ttl);

  std::vector<std::optional<CommandResult>> results(commands.size());
  std::vector<std::string> ids(commands.size());
  for (std::size_t i = 0; i < commands.size(); ++i) ids[i] = key_id(commands[i]);

  std::unordered_map<std::string, StoredKey> known;  // key rows settled in this transaction
  std::unordered_set<std::string> cross_scope;       // keys claimed here that another scope uses
  std::vector<std::size_t> pending(commands.size());
  std::iota(pending.begin(), pending.end(), std::size_t{0});

  int idle_rounds = 0;  // consecutive rounds that answered no command (concurrent re-claims)
  for (int round = 0; !pending.empty(); ++round) {
    if (idle_rounds == kMaxRounds) {
      throw TransientDatabaseError("key rows kept changing under the batch; retrying", "");
    }
    // Leaders: the first pending command of every key that is not settled yet.
    std::vector<std::size_t> leaders;
    std::unordered_map<std::string, std::size_t> leader_of;
    for (auto i : pending) {
      if (!known.contains(ids[i]) && leader_of.try_emplace(ids[i], i).second) leaders.push_back(i);
    }

    std::vector<std::size_t> claimed;
    if (fast && round > 0) {
      // Cannot happen: the guard makes the fast path settle every key of the batch in round 0
      // or nothing at all. Were it to, a retry is safe (each record finds its own claim), and a
      // second round must not run outside the one statement.
      throw TransientDatabaseError("the fast path left keys unsettled; retrying the batch", "");
    }
    if (fast) {
      run_fast_path(txn, commands, leaders, leader_of, ids, known, cross_scope, now_text,
                    expires_text, now);
    } else if (!leaders.empty()) {
      std::unordered_set<std::size_t> claimed_set;
      std::unordered_set<std::size_t> settled;  // claimed, found live, or found expired
      std::vector<std::size_t> reclaim;  // leaders whose row expired
      // A key row as the claim and lookup statements return it: claimed by us, or committed.
      auto take_row = [&](const pqxx::row& row) {
        const auto i = leader_of.at(key_id(row[1].c_str(), row[2].c_str()));
        settled.insert(i);
        if (row[0].as<bool>()) {
          claimed_set.insert(i);
          if (row[3].as<bool>()) cross_scope.insert(ids[i]);
          return;
        }
        if (row[9].as<bool>()) {  // expired: absent, unless someone re-claims it first
          reclaim.push_back(i);
          return;
        }
        known.emplace(ids[i], stored_key_from_row(row));
      };

      // 1. claim the new keys, read the known ones
      for (const auto& row :
           txn.exec_prepared(kClaim, claim_array(commands, leaders), now_text, expires_text)) {
        take_row(row);
      }

      // 2. keys a concurrent batch committed while we waited: read them with a new snapshot
      std::vector<std::size_t> lost;
      for (auto i : leaders) {
        if (!settled.contains(i)) lost.push_back(i);
      }
      if (!lost.empty()) {
        for (const auto& row : txn.exec_prepared(kLookup, key_array(commands, lost), now_text)) {
          take_row(row);
        }
      }
      if (!reclaim.empty()) {
        for (const auto& row : txn.exec_prepared(kReclaim, claim_array(commands, reclaim), now_text,
                                                 expires_text)) {
          const auto i = leader_of.at(key_id(row[0].c_str(), row[1].c_str()));
          claimed_set.insert(i);
          if (row[2].as<bool>()) cross_scope.insert(ids[i]);
        }
      }
      for (auto i : leaders) {
        if (claimed_set.contains(i)) claimed.push_back(i);
      }
      mark_cross_scope_in_batch(commands, claimed, ids, cross_scope);
    }

    if (!claimed.empty()) {
      // 3. write the entities, 4. store the final results
      // The claim-first protocol always runs in a pqxx::work (apply()).
      const auto outcomes = write_entities(dynamic_cast<pqxx::dbtransaction&>(txn), commands, claimed);
      verify_deployment(outcomes);
      json stored_rows = json::array();
      std::vector<std::size_t> forgotten;  // claimed keys whose payload Postgres refused
      for (std::size_t slot = 0; slot < claimed.size(); ++slot) {
        const auto i = claimed[slot];
        const Command& command = commands[i];
        const auto& outcome = outcomes[slot];
        if (outcome.kind == EntityOutcome::Kind::invalid) {
          forgotten.push_back(i);
          results[i] = rejected_by_postgres(command, outcome, now);
          continue;
        }
        const bool already_stored = outcome.stored;
        StoredKey stored{.command_type = command.type->name,
                         .fingerprint = command.fingerprint,
                         .status = outcome.kind == EntityOutcome::Kind::created ? Status::created
                                                                                : Status::conflict,
                         .entity = outcome.entity,
                         .error = outcome.error,
                         .first_processed_at = now,
                         .source = command.source};
        if (!already_stored) {
          stored_rows.push_back({{"s", command.scope},
                                 {"k", command.idempotency_key},
                                 {"st", to_string(stored.status)},
                                 {"r", {{"entity", stored.entity}, {"error", stored.error}}}});
        }
        known.emplace(ids[i], std::move(stored));
      }
      if (!stored_rows.empty()) txn.exec_prepared0(kStoreResults, to_json_text(stored_rows));
      if (!forgotten.empty()) txn.exec_prepared0(kForget, key_array(commands, forgotten));
    }

    // 5. answer every pending command whose key is settled
    std::vector<std::size_t> still_pending;
    for (auto i : pending) {
      if (results[i]) continue;  // refused by Postgres above
      const auto it = known.find(ids[i]);
      if (it == known.end()) {
        still_pending.push_back(i);
        continue;
      }
      results[i] = resolve_stored(commands[i], it->second, now);
      // Only the claimant of a key new in this transaction reports cross-scope reuse, and only
      // for a key the client sent: the same natural key in two tenants is two tenants having the
      // same field values, not a key leaking between them.
      results[i]->cross_scope_key_reuse = !commands[i].natural_key &&
                                          it->second.source == commands[i].source &&
                                          cross_scope.contains(ids[i]);
    }
    // A round in which a leader was refused answers it: such rounds always make progress and
    // may be as many as the batch has commands of one key (a client resending a refused command).
    idle_rounds = still_pending.size() < pending.size() ? 0 : idle_rounds + 1;
    pending = std::move(still_pending);
  }

  std::vector<CommandResult> answered;
  answered.reserve(results.size());
  for (auto& result : results) answered.push_back(std::move(*result));
  return answered;
}

PostgresKeyStore::PostgresKeyStore(PostgresOptions options, const CommandCatalog& catalog,
                                   Observer* observer)
    : impl_(std::make_unique<Impl>(std::move(options), catalog, observer)) {
  if (impl_->options.key_ttl <= std::chrono::seconds::zero()) {
    throw ConfigError("--key-ttl", "must be positive");
  }
  // now + key_ttl must stay a timestamp (microseconds since 1970 overflow int64 after ~292,000
  // years; Postgres stops at year 294276): an overflowed expires_at can lie in the past, and
  // every key would be born expired.
  if (impl_->options.key_ttl > std::chrono::days(36500)) {
    throw ConfigError("--key-ttl", "must be at most 36500d (100 years)");
  }
  if (impl_->options.max_attempts < 1) throw ConfigError("max_attempts", "must be at least 1");
  impl_->check_schema_and_tables();
}

PostgresKeyStore::~PostgresKeyStore() = default;

std::size_t PostgresKeyStore::retried_attempts() const noexcept { return impl_->retried; }

std::size_t PostgresKeyStore::fast_path_fallbacks() const noexcept {
  return impl_->fast_path_fallbacks;
}

std::vector<CommandResult> PostgresKeyStore::Impl::apply_with_retries(
    std::span<const Command> commands, Timestamp now) {
  per_row_groups.clear();
  bool fast = fast_path_cooldown == 0 && fast_path_applies(commands);
  if (fast_path_cooldown > 0) --fast_path_cooldown;
  for (int attempt = 1;; ++attempt) {
    try {
      try {
        std::vector<CommandResult> results;
        if (fast) {
          // The fast path is one statement, atomic by itself: run without BEGIN/COMMIT, two
          // round trips fewer. (An in-doubt implicit commit is retried like any other: each
          // record then finds its own claim and gets its result back.)
          pqxx::nontransaction txn(conn());
          results = run(txn, commands, now, /*fast=*/true);
        } else {
          pqxx::work txn(conn());
          results = run(txn, commands, now, /*fast=*/false);
          txn.commit();
        }
        reject_refused_reuses(commands, results, now);
        return results;
      } catch (const FastPathRefused&) {
        // Not a failure: redone with the claim-first protocol (the statement left no trace).
        fast = false;
        fast_path_cooldown = kFastPathCooldownBatches;
        ++fast_path_fallbacks;
        --attempt;
        continue;
      } catch (const BulkRefused& refused) {
        // Not a failure: the transaction rolled back (pqxx::work's destructor) and is redone
        // with that group row by row. Each group can be refused once, so this ends.
        if (!per_row_groups.insert(refused.identity).second) {
          throw PermanentDatabaseError("bulk insert of " + refused.identity + " refused twice", "");
        }
        --attempt;
        continue;
      } catch (...) {
        pg::rethrow_classified("applying a batch");
      }
    } catch (const TransientDatabaseError&) {
      if (observer) observer->on_db_error(DbErrorKind::transient);
      if (connection && !connection->is_open()) connection.reset();
      if (attempt >= options.max_attempts) throw;
      ++retried;
      backoff(attempt);
    }
  }
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
      EntityOutcome refused;
      refused.kind = EntityOutcome::Kind::invalid;
      refused.reason = truncate_utf8(e.what(), kQuotedMessageBytes);
      return {rejected_by_postgres(command, refused, now)};
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
