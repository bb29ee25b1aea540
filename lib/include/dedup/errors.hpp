// Exception types of the dedup library.
//
// Exceptions are for configuration mistakes and for failures the caller cannot treat as business as
// usual. Per-command outcomes (rejected, duplicate, conflict, ...) are values (see result.hpp), never
// exceptions.
#pragma once

#include <stdexcept>
#include <string>

namespace dedup {

// Base of every exception thrown by the library.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Invalid configuration: a flag, an environment variable or a field of the config file. `field()`
// names it the way the user wrote it (e.g. "commands.todo.create.table" or "--key-ttl"), so the
// message can point at it. The worker exits with code 2 on this error.
class ConfigError : public Error {
 public:
  ConfigError(std::string field, const std::string& problem)
      : Error(field + ": " + problem), field_(std::move(field)) {}
  const std::string& field() const noexcept { return field_; }

 private:
  std::string field_;
};

// A database failure, classified the way libpqxx classifies SQLSTATEs.
class DatabaseError : public Error {
 public:
  DatabaseError(const std::string& what, std::string sqlstate)
      : Error(what), sqlstate_(std::move(sqlstate)) {}
  // Five-character SQLSTATE, or empty when the failure did not come from the server (lost
  // connection, failed connect).
  const std::string& sqlstate() const noexcept { return sqlstate_; }

 private:
  std::string sqlstate_;
};

// A failure that a later retry of the same batch may cure: lost connection, server shutting down,
// serialization failure or deadlock that persisted through the store's own retries, lock or
// statement timeout. Nothing of the batch is committed (or, for an in-doubt commit, a retry is safe:
// see docs/design.md), so the caller retries the batch with backoff and does not commit offsets.
class TransientDatabaseError : public DatabaseError {
 public:
  using DatabaseError::DatabaseError;
};

// A failure that retrying will not cure: missing schema, permission denied, a configured table that
// does not exist, a bug in a configured SQL statement. The worker stops (exit 1) so a human can look.
class PermanentDatabaseError : public DatabaseError {
 public:
  using DatabaseError::DatabaseError;
};

}  // namespace dedup
