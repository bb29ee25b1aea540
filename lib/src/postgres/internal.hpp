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

enum class FailureKind { transient, permanent };

// SQLSTATE classes, as libpqxx's exception hierarchy draws them: connection exceptions (08),
// transaction rollbacks (40: serialization failure, deadlock), insufficient resources (53),
// lock_not_available (55P03), query_canceled (57014: statement/lock timeout), operator
// intervention (57P01-57P05: admin shutdown, crash shutdown, cannot connect now) are transient.
// Everything else is permanent.
FailureKind classify_sqlstate(std::string_view sqlstate) noexcept;

// Rethrows the exception in flight (must be called from a catch block) as TransientDatabaseError
// or PermanentDatabaseError, keeping the message and SQLSTATE. pqxx::broken_connection and
// pqxx::in_doubt_error are transient: a batch whose commit is in doubt is safe to retry, because a
// record that already claimed its key gets its stored result back (docs/design.md).
[[noreturn]] void rethrow_classified(std::string_view context);

// "YYYY-MM-DD HH:MM:SS.uuuuuu+00", for timestamptz parameters.
std::string to_pg_timestamp(Timestamp t);

// Replaces every "{schema}" in `sql` with the quoted schema name.
std::string with_schema(std::string_view sql, std::string_view schema);

// Opens a connection; throws TransientDatabaseError if it cannot (server down, bad host) and
// PermanentDatabaseError for errors that a retry will not cure (bad credentials, no database).
std::unique_ptr<pqxx::connection> connect(const std::string& conninfo);

}  // namespace dedup::pg
