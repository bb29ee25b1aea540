// Versioned, idempotent schema migrations (`dedup-worker migrate`). Each migration runs once, in
// order, inside one transaction that holds an advisory lock, so concurrent `migrate` runs (two
// pods starting, the Helm hook and a human) serialize and the loser finds nothing left to do.
// Migrations are append-only: never edit a released one, add the next version.
#include <fmt/format.h>

#include <array>

#include "dedup/postgres.hpp"
#include "internal.hpp"

namespace dedup {
namespace {

struct Migration {
  int version;
  const char* description;
  const char* sql;  // "{schema}" is replaced by the quoted schema name
};

constexpr std::array kMigrations = {
    Migration{1, "idempotency keys table and entity-writing function", R"SQL(
-- One row per (scope, idempotency_key). COLLATE "C": keys are opaque bytes, compared and sorted
-- bytewise, the same on every server whatever its locale.
CREATE TABLE {schema}.idempotency_keys (
  scope            text COLLATE "C" NOT NULL,
  idempotency_key  text COLLATE "C" NOT NULL,
  command_type     text NOT NULL,
  fingerprint      bytea NOT NULL CHECK (octet_length(fingerprint) = 32),
  -- 'pending' exists only inside the claiming transaction, never committed.
  status           text NOT NULL CHECK (status IN ('pending', 'created', 'conflict')),
  -- {"entity": <row> | null, "error": <conflict> | null}
  result           jsonb,
  created_at       timestamptz NOT NULL,
  expires_at       timestamptz NOT NULL,
  -- The record that claimed the key: reading it again republishes its original result.
  source_topic     text NOT NULL,
  source_partition integer NOT NULL,
  source_offset    bigint NOT NULL,
  PRIMARY KEY (scope, idempotency_key)
) WITH (fillfactor = 80);  -- room for the HOT update that stores the result

COMMENT ON TABLE {schema}.idempotency_keys IS
  'dedup-worker: one row per (scope, idempotency_key); see docs/design.md';

-- Cleanup deletes the oldest expired keys first.
CREATE INDEX idempotency_keys_expires_at_idx ON {schema}.idempotency_keys (expires_at);
-- Cross-scope reuse detection looks a key up across scopes.
CREATE INDEX idempotency_keys_key_idx ON {schema}.idempotency_keys (idempotency_key);

-- Writes one entity with its own subtransaction, so that one command's constraint violation or
-- bad value does not abort the batch. `statement` returns the new row as jsonb; $1 is the payload.
-- Transient errors (deadlock, serialization, lock timeout) and errors in the configured SQL itself
-- are not caught: they abort the transaction and are handled by the caller.
CREATE FUNCTION {schema}.write_entity(statement text, payload jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $fn$
DECLARE
  entity jsonb;
  v_state text;
  v_constraint text;
  v_message text;
BEGIN
  EXECUTE statement INTO STRICT entity USING payload;
  RETURN jsonb_build_object('ok', true, 'entity', entity);
EXCEPTION
  WHEN integrity_constraint_violation THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_constraint = CONSTRAINT_NAME,
                            v_message = MESSAGE_TEXT;
    RETURN jsonb_build_object('ok', false, 'kind', 'conflict', 'sqlstate', v_state,
                              'constraint', NULLIF(v_constraint, ''), 'message', v_message);
  WHEN data_exception OR undefined_column OR no_data_found OR too_many_rows THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT;
    RETURN jsonb_build_object('ok', false, 'kind', 'invalid', 'sqlstate', v_state,
                              'message', v_message);
END
$fn$;
)SQL"},
    Migration{2, "guard of the single-statement fast path", R"SQL(
-- The fast path writes entities and key rows in one statement, assuming every key it saw as new
-- can be claimed. This guard, evaluated at the end of that statement, aborts it when the
-- assumption failed (a concurrent batch claimed a key meanwhile, an entity went missing, an
-- expired key needs re-claiming); the store then redoes the batch with the claim-first protocol.
CREATE FUNCTION {schema}.fast_path_guard(claimed bigint, fresh bigint, entities bigint,
                                         expired bigint) RETURNS boolean
LANGUAGE plpgsql AS $fn$
BEGIN
  IF claimed <> fresh OR entities <> fresh OR expired > 0 THEN
    RAISE EXCEPTION 'dedup fast path does not apply (claimed %, new %, entities %, expired %)',
      claimed, fresh, entities, expired USING ERRCODE = 'DD001';
  END IF;
  RETURN true;
END
$fn$;
)SQL"},
    Migration{3, "write_entity() reports every refusal with its SQLSTATE", R"SQL(
-- Version 1 caught only some classes of errors; any other error a record's values provoke (a
-- generated column, an index row too large, a trigger's RAISE) aborted the whole batch. Now every
-- error of the one write comes back with its SQLSTATE, and the worker decides whose fault it is
-- (docs/design.md, "Errors by SQLSTATE"): a constraint is a conflict, a bad value a rejection, a
-- deadlock or lost lock a retry of the batch. (WHEN OTHERS does not catch query_canceled, so a
-- statement timeout still aborts the batch, as it must.)
CREATE OR REPLACE FUNCTION {schema}.write_entity(statement text, payload jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $fn$
DECLARE
  entity jsonb;
  v_state text;
  v_constraint text;
  v_message text;
BEGIN
  EXECUTE statement INTO STRICT entity USING payload;
  RETURN jsonb_build_object('ok', true, 'entity', entity);
EXCEPTION
  WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_constraint = CONSTRAINT_NAME,
                            v_message = MESSAGE_TEXT;
    RETURN jsonb_build_object('ok', false, 'sqlstate', v_state,
                              'constraint', NULLIF(v_constraint, ''), 'message', v_message);
END
$fn$;
)SQL"},
};

}  // namespace

int latest_schema_version() noexcept { return kMigrations.back().version; }

int migrate(const std::string& conninfo, const std::string& schema) {
  auto connection = pg::connect(conninfo);
  try {
    pqxx::work txn(*connection);
    txn.exec_params("SELECT pg_advisory_xact_lock(hashtext($1))", "dedup-worker migrate " + schema);
    txn.exec(pg::with_schema("CREATE SCHEMA IF NOT EXISTS {schema}", schema));
    txn.exec(pg::with_schema(R"SQL(
      CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
        version     integer PRIMARY KEY,
        description text NOT NULL,
        applied_at  timestamptz NOT NULL DEFAULT now()))SQL", schema));
    const int current =
        txn.exec(pg::with_schema("SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations",
                                 schema))[0][0]
            .as<int>();
    int applied = 0;
    for (const auto& migration : kMigrations) {
      if (migration.version <= current) continue;
      txn.exec(pg::with_schema(migration.sql, schema));
      txn.exec_params(
          pg::with_schema("INSERT INTO {schema}.schema_migrations (version, description) "
                          "VALUES ($1, $2)", schema),
          migration.version, migration.description);
      ++applied;
    }
    txn.commit();
    return applied;
  } catch (...) {
    pg::rethrow_classified("migrate");
  }
}

}  // namespace dedup
