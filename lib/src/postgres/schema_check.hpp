// The start-up verification of the deployment: schema version, privileges, configured tables and
// statements. Run again when a write is refused in a way that may be the deployment's fault.
#pragma once

#include <pqxx/pqxx>

#include <string>
#include <vector>

#include "dedup/config.hpp"
#include "entity_writer.hpp"

namespace dedup::pg {

struct Deployment {
  std::string conninfo;
  std::string schema;
  const CommandCatalog& catalog;
};

// Checks that the schema is migrated to latest_schema_version(), that the role may use the keys
// table, and that every configured table and SQL statement is usable. Throws ConfigError naming
// the option at fault, TransientDatabaseError / PermanentDatabaseError when Postgres fails.
void check_deployment(pqxx::connection& connection, const Deployment& deployment);

// A write was refused with a configuration-class SQLSTATE: if the start-up checks still pass (on a
// connection of their own: the caller's is mid-transaction), the record is at fault and its
// refusal stands; if not, the deployment changed: PermanentDatabaseError (exit 1). Does nothing
// when no outcome is a deployment suspect.
void recheck_deployment_if_suspect(const Deployment& deployment,
                                   const std::vector<EntityOutcome>& outcomes);

}  // namespace dedup::pg
