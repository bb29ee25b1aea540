#include "sql.hpp"

#include <algorithm>

#include "internal.hpp"

namespace dedup::pg {
namespace {

// The claim, lookup and fast-path statements return key rows in one layout, read by column name
// (key_rows.hpp): claimed, scope, idempotency_key, cross_scope, then, for a row that exists,
// command_type, fingerprint (bytea), status, result, created_at_us, expired, source_topic,
// source_partition, source_offset. In a UNION the first branch names the columns, so each
// statement's first branch spells the names out.
// {stored_row} is that projection of an existing row aliased k; $2 is now.
constexpr std::string_view kStoredRowColumns = R"SQL(false AS claimed, k.scope, k.idempotency_key,
  false AS cross_scope, k.command_type, k.fingerprint, k.status, k.result::text AS result,
  (extract(epoch FROM k.created_at) * 1000000)::bigint AS created_at_us,
  k.expires_at <= $2::timestamptz AS expired, k.source_topic, k.source_partition,
  k.source_offset)SQL";

//
// Claim or look up, in one round trip: `existing` reads the committed rows of the batch's keys
// (the statement's snapshot); the others are INSERTed, sorted, ON CONFLICT DO NOTHING. A key that
// is in neither result was committed by a concurrent batch after our snapshot (we waited for it
// in the INSERT): kLookup reads it with a new snapshot. RETURNING's subquery sees the snapshot too:
// rows of other scopes committed before, not the rows inserted by this statement.
// $1: [{s, k, t, f, tp, p, o}], $2: now, $3: expires_at.
constexpr std::string_view kClaimSql = R"SQL(
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
SELECT true AS claimed, c.scope, c.idempotency_key, c.cross_scope, NULL::text AS command_type,
       NULL::bytea AS fingerprint, NULL::text AS status, NULL::text AS result,
       NULL::bigint AS created_at_us, NULL::boolean AS expired, NULL::text AS source_topic,
       NULL::integer AS source_partition, NULL::bigint AS source_offset
FROM claimed c
UNION ALL
SELECT {stored_row} FROM existing k)SQL";

// $1: [{s, k}], $2: now.
constexpr std::string_view kLookupSql = R"SQL(
SELECT {stored_row}
FROM jsonb_to_recordset($1::jsonb) AS x(s text, k text)
JOIN {schema}.idempotency_keys k ON k.scope = x.s AND k.idempotency_key = x.k)SQL";

// $1: [{s, k, t, f, tp, p, o}], $2: now, $3: expires_at. Takes over keys that expired; a row that a
// concurrent batch re-claimed first no longer matches the WHERE after we waited for it.
constexpr std::string_view kReclaimSql = R"SQL(
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
constexpr std::string_view kStoreResultsSql = R"SQL(
UPDATE {schema}.idempotency_keys AS k SET status = x.st, result = x.r
FROM jsonb_to_recordset($1::jsonb) AS x(s text, k text, st text, r jsonb)
WHERE k.scope = x.s AND k.idempotency_key = x.k)SQL";

// $1: [{s, k}]: claimed keys whose payload Postgres refused.
constexpr std::string_view kForgetSql = R"SQL(
DELETE FROM {schema}.idempotency_keys AS k
USING jsonb_to_recordset($1::jsonb) AS x(s text, k text)
WHERE k.scope = x.s AND k.idempotency_key = x.k)SQL";

// $1: [payload, ...], $2: the statement for one group. Rows are evaluated in array order.
constexpr std::string_view kWriteEachSql = R"SQL(
SELECT e.ord, {schema}.write_entity($2, e.payload)::text
FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(payload, ord))SQL";

// $1: one payload, $2: its statement.
constexpr std::string_view kWriteOneSql =
    R"SQL(SELECT {schema}.write_entity($2, $1::jsonb)::text)SQL";

// Rows come back from INSERT ... RETURNING in input order (as ORMs' bulk inserts rely on), so row
// n of $1 is key n of $2. The count is checked: a trigger that skips a row would break the
// pairing, and the group then goes row by row.
constexpr std::string_view kBulkInsertSql =
    "WITH entity AS (INSERT INTO {table} ({columns}) SELECT {columns} FROM "
    "jsonb_populate_recordset(NULL::{table}, $1::jsonb) RETURNING *), "
    "numbered AS (SELECT row_number() OVER () AS n, to_jsonb(entity) AS row FROM entity), "
    "stored AS (UPDATE {schema}.idempotency_keys AS k SET status = 'created', "
    "result = jsonb_build_object('entity', numbered.row, 'error', NULL) "
    "FROM ROWS FROM (jsonb_to_recordset($2::jsonb) AS (s text, k text)) "
    "WITH ORDINALITY AS x(s, k, n) JOIN numbered ON numbered.n = x.n "
    "WHERE k.scope = x.s AND k.idempotency_key = x.k RETURNING 1) "
    "SELECT row::text, (SELECT count(*) FROM stored) FROM numbered ORDER BY n";

constexpr std::string_view kSingleInsertSql =
    "WITH entity AS (INSERT INTO {table} ({columns}) SELECT {columns} FROM "
    "jsonb_populate_record(NULL::{table}, $1) RETURNING *) SELECT to_jsonb(entity) FROM entity";

constexpr std::string_view kSqlModeSql =
    "WITH entity AS ({statement}) SELECT to_jsonb(entity) FROM entity";

// input: the leaders in batch order; existing: their committed rows (this statement's snapshot);
// fresh: the others, numbered per group in batch order; e<g>: each group's entities, inserted in
// that order (RETURNING keeps it, so row n of e<g> is fresh row n of group g); claimed: the key
// rows with their final result, sorted, ON CONFLICT DO NOTHING; guard: aborts the whole statement
// unless every fresh key was claimed and got its entity.
constexpr std::string_view kFastPathHeadSql = R"SQL(
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

constexpr std::string_view kFastPathGroupSql =
    ",\ne{g} AS (INSERT INTO {table} ({columns}) SELECT {columns} FROM "
    "jsonb_populate_recordset(NULL::{table}, "
    "(SELECT jsonb_agg(f.pl ORDER BY f.ord) FROM fresh f WHERE f.g = {g})) RETURNING *)";

constexpr std::string_view kFastPathEntitiesSql =
    "SELECT {g} AS g, row_number() OVER () AS n, to_jsonb(r) AS row FROM e{g} r";

// The guard's own row comes last, all NULL: its presence proves that the guard ran (fast_path.cpp).
constexpr std::string_view kFastPathTailSql = R"SQL(),
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
SELECT true AS claimed, c.scope, c.idempotency_key, c.cross_scope, NULL::text AS command_type,
       NULL::bytea AS fingerprint, 'created' AS status, (c.result -> 'entity')::text AS result,
       NULL::bigint AS created_at_us, false AS expired, NULL::text AS source_topic,
       NULL::integer AS source_partition, NULL::bigint AS source_offset
FROM claimed c
UNION ALL
SELECT {stored_row} FROM existing k
UNION ALL
SELECT NULL::boolean, NULL::text, NULL::text, NULL::boolean, NULL::text, NULL::bytea, NULL::text,
       NULL::text, NULL::bigint, NULL::boolean, NULL::text, NULL::integer, NULL::bigint
FROM guard)SQL";

// A statement of this store for `schema`: {schema} and {stored_row} filled in.
std::string store_sql(std::string_view sql, std::string_view schema) {
  const auto quoted = quote_identifier(schema);
  return render_sql(sql, {{"schema", quoted}, {"stored_row", kStoredRowColumns}});
}

}  // namespace

std::string render_sql(std::string_view sql, std::initializer_list<SqlValue> values) {
  std::string out;
  out.reserve(sql.size() + 64);
  std::size_t pos = 0;
  while (pos < sql.size()) {
    const auto open = sql.find('{', pos);
    if (open == std::string_view::npos) break;
    const auto close = sql.find('}', open + 1);
    if (close == std::string_view::npos) break;
    const auto name = sql.substr(open + 1, close - open - 1);
    const auto value = std::find_if(values.begin(), values.end(),
                                    [&](const SqlValue& v) { return v.name == name; });
    out.append(sql.substr(pos, open - pos));
    if (value == values.end()) {
      out += '{';  // not ours: kept, and scanning goes on after the brace
      pos = open + 1;
      continue;
    }
    out.append(value->text);
    pos = close + 1;
  }
  out.append(sql.substr(pos));
  return out;
}

std::string with_schema(std::string_view sql, std::string_view schema) {
  const auto quoted = quote_identifier(schema);
  return render_sql(sql, {{"schema", quoted}});
}

std::vector<NamedStatement> fixed_statements(std::string_view schema) {
  std::vector<NamedStatement> statements;
  for (const auto& [name, sql] :
       {std::pair{kClaim, kClaimSql}, std::pair{kLookup, kLookupSql},
        std::pair{kReclaim, kReclaimSql}, std::pair{kStoreResults, kStoreResultsSql},
        std::pair{kForget, kForgetSql}, std::pair{kWriteEach, kWriteEachSql},
        std::pair{kWriteOne, kWriteOneSql}}) {
    statements.push_back({name, store_sql(sql, schema)});
  }
  return statements;
}

std::string sql_mode_statement(const CommandType& type) {
  return render_sql(kSqlModeSql, {{"statement", type.sql}});
}

std::string bulk_insert_sql(std::string_view table, std::string_view columns,
                            std::string_view schema) {
  const auto quoted = quote_identifier(schema);
  return render_sql(kBulkInsertSql, {{"table", table}, {"columns", columns}, {"schema", quoted}});
}

std::string single_insert_sql(std::string_view table, std::string_view columns) {
  return render_sql(kSingleInsertSql, {{"table", table}, {"columns", columns}});
}

std::string fast_path_sql(const std::vector<FastPathGroup>& groups, std::string_view schema) {
  std::string sql = store_sql(kFastPathHeadSql, schema);
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const auto number = std::to_string(g);
    sql += render_sql(kFastPathGroupSql, {{"g", number},
                                          {"table", groups[g].table},
                                          {"columns", groups[g].columns}});
  }
  sql += ",\nentities AS (";
  for (std::size_t g = 0; g < groups.size(); ++g) {
    if (g > 0) sql += " UNION ALL ";
    sql += render_sql(kFastPathEntitiesSql, {{"g", std::to_string(g)}});
  }
  return sql + store_sql(kFastPathTailSql, schema);
}

}  // namespace dedup::pg
