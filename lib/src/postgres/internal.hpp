// Private helpers shared by the Postgres component.
#pragma once

#include <pqxx/pqxx>

#include <exception>
#include <memory>
#include <string>
#include <string_view>

#include "dedup/clock.hpp"
#include "dedup/errors.hpp"

namespace dedup::pg {

// Who is at fault when Postgres raises an error (docs/design.md, "Errors by SQLSTATE"):
//   transient      the infrastructure, for now (connection, deadlock, serialization, timeouts,
//                  shutdown, resources): the batch is retried, nothing is stored;
//   record         the record being written (its values, its size, a constraint, a trigger that
//                  refuses it): once isolated to one record, a final outcome of that record;
//   configuration  the deployment (a missing table or function, no privilege, a corrupt index,
//                  the worker's own misuse of a transaction): the worker stops, nothing is lost.
enum class FailureKind { transient, record, configuration };

// Classifies by SQLSTATE class, exhaustively (unknown classes, e.g. codes a user's trigger
// raises, count as the record's). No SQLSTATE at all means the connection was lost: transient.
FailureKind classify_sqlstate(std::string_view sqlstate) noexcept;

// Not transient: a statement over many records that fails so is redone in a way that pins the
// error on one record. A configuration-class error can be one record's too (a row-level security
// WITH CHECK: 42501; a regclass value naming no table: 42P01); the deployment is re-checked then.
bool may_be_records(std::string_view sqlstate) noexcept;

// e.sqlstate(), or the SQLSTATE libpqxx 6.4 leaves out: it throws insufficient_privilege (42501)
// without it, and an empty SQLSTATE reads as "connection lost" (transient: retried forever).
std::string sqlstate_of(const pqxx::sql_error& e);

// Rethrows the exception in flight (must be called from a catch block) as TransientDatabaseError
// or PermanentDatabaseError (record and configuration faults: the caller tells them apart with
// classify_sqlstate(e.sqlstate())), keeping the message and SQLSTATE. pqxx::broken_connection and
// pqxx::in_doubt_error are transient: a batch whose commit is in doubt is safe to retry, because a
// record that already claimed its key gets its stored result back (docs/design.md).
[[noreturn]] void rethrow_classified(std::string_view context);

// "YYYY-MM-DD HH:MM:SS.uuuuuu+00", for timestamptz parameters.
std::string to_pg_timestamp(Timestamp t);

// Replaces every "{schema}" in `sql` with the quoted schema name (sql.hpp's render_sql).
std::string with_schema(std::string_view sql, std::string_view schema);

// Opens a connection; throws TransientDatabaseError if it cannot (server down, bad host) and
// PermanentDatabaseError for errors that a retry will not cure (bad credentials, no database).
std::unique_ptr<pqxx::connection> connect(const std::string& conninfo);

}  // namespace dedup::pg
