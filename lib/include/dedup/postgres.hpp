// The Postgres key store and the administrative operations on the keys table (SPEC §4–5).
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "dedup/clock.hpp"
#include "dedup/config.hpp"
#include "dedup/key_store.hpp"
#include "dedup/observer.hpp"

namespace dedup {

struct PostgresOptions {
  std::string conninfo;                 // libpq connection string or URI
  std::string schema = "dedup";         // --db-schema
  std::chrono::seconds key_ttl = std::chrono::hours(24 * 7);  // --key-ttl
  int max_attempts = 8;                 // per batch, for deadlocks/serialization/lost connection
};

// The key store of docs/design.md. Owns one connection; not thread-safe (one per worker thread).
class PostgresKeyStore final : public KeyStore {
 public:
  // Connects, checks that the schema is migrated to the version this build expects and that every
  // configured table exists. Throws ConfigError("--db-schema"/"commands.<type>.table", ...) for a
  // schema or table that is missing, TransientDatabaseError when the server cannot be reached.
  // `observer` (optional, borrowed) is told about every failed database attempt.
  PostgresKeyStore(PostgresOptions options, const CommandCatalog& catalog,
                   Observer* observer = nullptr);
  ~PostgresKeyStore() override;
  PostgresKeyStore(const PostgresKeyStore&) = delete;
  PostgresKeyStore& operator=(const PostgresKeyStore&) = delete;

  std::vector<CommandResult> apply(std::span<const Command> commands, Timestamp now) override;

  // Number of transaction attempts that were retried since construction (deadlock, serialization
  // failure, lost connection). For tests and metrics.
  std::size_t retried_attempts() const noexcept;

  // Number of batches whose single-statement fast path did not apply (a key claimed concurrently,
  // a constraint, an expired key) and that were redone with the claim-first protocol.
  std::size_t fast_path_fallbacks() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Creates or upgrades the schema to the latest version. Idempotent; concurrent callers serialize
// on an advisory lock. Returns the number of migrations applied (0 when up to date).
// Throws TransientDatabaseError / PermanentDatabaseError.
int migrate(const std::string& conninfo, const std::string& schema);

// The schema version this build expects.
int latest_schema_version() noexcept;

struct CleanupOptions {
  std::size_t batch_size = 1000;  // rows deleted per short transaction
  std::size_t max_batches = 0;    // 0: until no expired row is left
};

// Deletes keys whose expires_at <= now, in batches of `batch_size` rows, each in its own short
// transaction that skips rows locked by workers (FOR UPDATE SKIP LOCKED). Returns rows deleted.
std::size_t cleanup_expired_keys(const std::string& conninfo, const std::string& schema,
                                 Timestamp now, CleanupOptions options = {});

// The stored row of (scope, key) as JSON (all columns, fingerprint in hex), or nullopt.
std::optional<nlohmann::json> inspect_key(const std::string& conninfo, const std::string& schema,
                                          const std::string& scope, const std::string& key);

}  // namespace dedup
