#include "schema_check.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "dedup/errors.hpp"
#include "dedup/postgres.hpp"
#include "internal.hpp"
#include "sql.hpp"

namespace dedup::pg {
namespace {

void check_schema_version(pqxx::transaction_base& txn, const std::string& schema) {
  const auto table = with_schema("{schema}.schema_migrations", schema);
  if (txn.exec_params("SELECT to_regclass($1) IS NULL", table)[0][0].as<bool>()) {
    throw ConfigError("--db-schema", fmt::format("schema '{}' has no dedup tables: run "
                                                 "`dedup-worker migrate` first",
                                                 schema));
  }
  const int version = txn.exec("SELECT coalesce(max(version), 0) FROM " + table)[0][0].as<int>();
  if (version != latest_schema_version()) {
    throw ConfigError("--db-schema",
                      fmt::format("schema '{}' is at version {}, this build expects {}: {}",
                                  schema, version, latest_schema_version(),
                                  version < latest_schema_version()
                                      ? "run `dedup-worker migrate`"
                                      : "the schema is newer than this worker; upgrade it"));
  }
}

// Privileges are checked here because at run time their absence is not a record's fault:
// without them every batch would fail (docs/design.md, "Errors by SQLSTATE").
void check_privileges(pqxx::transaction_base& txn, const Deployment& deployment) {
  const auto keys_table = with_schema("{schema}.idempotency_keys", deployment.schema);
  for (const char* privilege : {"SELECT", "INSERT", "UPDATE", "DELETE"}) {
    if (!txn.exec_params("SELECT has_table_privilege($1, $2)", keys_table, privilege)[0][0]
             .as<bool>()) {
      throw ConfigError("--db",
                        fmt::format("the database role may not {} {}", privilege, keys_table));
    }
  }
  for (const auto& type : deployment.catalog.types()) {
    if (!type.table) continue;
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

// Configured SQL is checked by preparing it: syntax, tables and columns are validated without
// running it. Each check in its own transaction, so one failure names its own command type.
void check_configured_statements(pqxx::connection& connection, const CommandCatalog& catalog) {
  for (const auto& type : catalog.types()) {
    if (type.table) continue;
    try {
      pqxx::work txn(connection);
      // As it runs: wrapped. A statement that prepares alone can still be refused wrapped (a
      // data-modifying WITH must be at the top level), and would then refuse every command.
      txn.exec("PREPARE dedup_config_check(jsonb) AS " + sql_mode_statement(type));
      txn.exec("DEALLOCATE dedup_config_check");
    } catch (const pqxx::sql_error& e) {
      if (classify_sqlstate(sqlstate_of(e)) != FailureKind::transient) {
        throw ConfigError("commands." + type.name + ".sql",
                          fmt::format("Postgres refuses the statement: {}", e.what()));
      }
      rethrow_classified("checking commands." + type.name + ".sql");
    } catch (...) {
      rethrow_classified("checking commands." + type.name + ".sql");
    }
  }
}

}  // namespace

void check_deployment(pqxx::connection& connection, const Deployment& deployment) {
  try {
    pqxx::read_transaction txn(connection);
    check_schema_version(txn, deployment.schema);
    check_privileges(txn, deployment);
  } catch (const ConfigError&) {
    throw;
  } catch (...) {
    rethrow_classified("checking the schema");
  }
  check_configured_statements(connection, deployment.catalog);
}

void recheck_deployment_if_suspect(const Deployment& deployment,
                                   const std::vector<EntityOutcome>& outcomes) {
  const auto suspect = std::find_if(outcomes.begin(), outcomes.end(), [](const EntityOutcome& o) {
    return !o.deployment_suspect.empty();
  });
  if (suspect == outcomes.end()) return;
  auto fresh = connect(deployment.conninfo);
  try {
    check_deployment(*fresh, deployment);
  } catch (const ConfigError& e) {
    throw PermanentDatabaseError(std::string("the deployment changed: ") + e.what(),
                                 suspect->deployment_suspect);
  }
}

}  // namespace dedup::pg
