// What both benchmark programs share: flags, a fresh schema per measurement, the command body.
#pragma once

#include <fmt/format.h>

#include <cstdlib>
#include <functional>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <stdexcept>
#include <string>

#include "dedup/postgres.hpp"

namespace dedup::bench {

// Parses `--flag value` pairs: `on_flag(flag, value)` returns false for a flag it does not know.
// --db (or DEDUP_BENCH_DB) is handled here and required. Throws std::runtime_error on bad usage.
inline std::string parse_flags(int argc, char** argv,
                               const std::function<bool(const std::string&, const std::string&)>& on_flag) {
  std::string db;
  if (const char* env = std::getenv("DEDUP_BENCH_DB")) db = env;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) throw std::runtime_error(flag + " needs a value");
    const std::string value = argv[++i];
    if (flag == "--db") {
      db = value;
    } else if (!on_flag(flag, value)) {
      throw std::runtime_error("unknown argument " + flag);
    }
  }
  if (db.empty()) throw std::runtime_error("--db (or DEDUP_BENCH_DB) is required");
  return db;
}

inline void exec(const std::string& db, const std::string& sql) {
  pqxx::connection connection(db);
  pqxx::work txn(connection);
  txn.exec(sql);
  txn.commit();
}

// A fresh, migrated schema with a todos table, statistics up to date.
inline void reset_schema(const std::string& db, const std::string& schema) {
  exec(db, "DROP SCHEMA IF EXISTS " + schema + " CASCADE");
  migrate(db, schema);
  exec(db, "CREATE TABLE " + schema +
               ".todos (id bigserial PRIMARY KEY, title text NOT NULL, description text)");
  pqxx::connection connection(db);
  pqxx::nontransaction(connection).exec("VACUUM ANALYZE");
}

inline std::string key_of(int i) { return fmt::format("bench-key-{:08}", i); }

// Command i of the benchmark stream: key i, one of 100 scopes, a todo.
inline nlohmann::json command_body(int i) {
  return {{"idempotency_key", key_of(i)},
          {"scope", fmt::format("org-{}", i % 100)},
          {"type", "todo.create"},
          {"payload", {{"title", fmt::format("Todo number {}", i)}, {"description", "From the benchmark"}}}};
}

inline std::string todo_catalog_yaml(const std::string& schema) {
  return "commands:\n  todo.create:\n    table: " + schema + ".todos\n";
}

}  // namespace dedup::bench
