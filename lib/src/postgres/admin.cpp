// Operations on the keys table outside the hot path: cleanup of expired keys and inspection.
#include <fmt/format.h>

#include "dedup/postgres.hpp"
#include "dedup/json_text.hpp"
#include "internal.hpp"

namespace dedup {

std::size_t cleanup_expired_keys(const std::string& conninfo, const std::string& schema,
                                 Timestamp now, CleanupOptions options) {
  if (options.batch_size == 0) throw ConfigError("cleanup batch size", "must be positive");
  // Short transactions of at most batch_size rows: no long lock, no long-running snapshot holding
  // back vacuum. SKIP LOCKED steps around rows a worker is re-claiming right now.
  const auto sql = pg::with_schema(R"SQL(
    WITH doomed AS (
      SELECT scope, idempotency_key FROM {schema}.idempotency_keys
      WHERE expires_at <= $1::timestamptz
      ORDER BY expires_at
      LIMIT $2
      FOR UPDATE SKIP LOCKED)
    DELETE FROM {schema}.idempotency_keys k USING doomed d
    WHERE k.scope = d.scope AND k.idempotency_key = d.idempotency_key)SQL", schema);
  auto connection = pg::connect(conninfo);
  const auto now_text = pg::to_pg_timestamp(now);
  std::size_t deleted = 0;
  try {
    for (std::size_t batch = 0; options.max_batches == 0 || batch < options.max_batches; ++batch) {
      pqxx::work txn(*connection);
      const auto result = txn.exec_params(sql, now_text, options.batch_size);
      txn.commit();
      const auto rows = static_cast<std::size_t>(result.affected_rows());
      deleted += rows;
      if (rows < options.batch_size) break;
    }
  } catch (...) {
    pg::rethrow_classified("cleanup");
  }
  return deleted;
}

std::optional<nlohmann::json> inspect_key(const std::string& conninfo, const std::string& schema,
                                          const std::string& scope, const std::string& key) {
  auto connection = pg::connect(conninfo);
  try {
    pqxx::read_transaction txn(*connection);
    const auto rows = txn.exec_params(pg::with_schema(R"SQL(
      SELECT jsonb_build_object(
        'scope', scope, 'idempotency_key', idempotency_key, 'command_type', command_type,
        'fingerprint', encode(fingerprint, 'hex'), 'status', status, 'result', result,
        'created_at', created_at, 'expires_at', expires_at, 'expired', expires_at <= now(),
        'source', jsonb_build_object('topic', source_topic, 'partition', source_partition,
                                     'offset', source_offset))::text
      FROM {schema}.idempotency_keys WHERE scope = $1 AND idempotency_key = $2)SQL", schema),
                                      scope, key);
    if (rows.empty()) return std::nullopt;
    auto parsed = parse_json(rows[0][0].c_str(), JsonParseLimits{.max_depth = 512});
    if (auto* problem = std::get_if<std::string>(&parsed)) {
      throw PermanentDatabaseError("inspect: stored row is not readable JSON: " + *problem, "");
    }
    return std::move(std::get<nlohmann::json>(parsed));
  } catch (...) {
    pg::rethrow_classified("inspect");
  }
}

}  // namespace dedup
