// What both benchmark programs share: the --db flag and command-line parsing (CLI11), a fresh
// schema per measurement, the command body, and the raw Postgres limit the figures are compared
// with.
#pragma once

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "dedup/fingerprint.hpp"
#include "dedup/postgres.hpp"

namespace dedup::bench {

// --db (or DEDUP_BENCH_DB), which every benchmark requires.
inline void add_db_flag(CLI::App& app, std::string& db) {
  app.add_option("--db", db, "libpq connection string or URI")
      ->envname("DEDUP_BENCH_DB")
      ->required();
}

// Parses the command line into what `app`'s options point at. Returns the exit code when the
// program is done (0 after --help; 2 after bad usage, which CLI11 has explained on stderr).
inline std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  }
  return std::nullopt;
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

// The raw limit: per batch, one multi-row INSERT ... ON CONFLICT DO NOTHING of the final key rows
// (with their result) and one of the entity rows, in one transaction. Statements are built before
// the clock starts, so only Postgres (and the wire) is measured.
inline std::vector<std::string> raw_statements(const std::string& schema, int count, int batch,
                                               pqxx::connection& c) {
  std::vector<std::string> statements;
  pqxx::nontransaction quoter(c);
  for (int start = 0; start < count; start += batch) {
    std::string keys = "INSERT INTO " + schema +
                       ".idempotency_keys (scope, idempotency_key, command_type, fingerprint, status, "
                       "result, created_at, expires_at, source_topic, source_partition, "
                       "source_offset) VALUES ";
    std::string todos = "INSERT INTO " + schema + ".todos (id, title, description) VALUES ";
    for (int i = start; i < std::min(count, start + batch); ++i) {
      const auto body = command_body(i);
      const auto fingerprint = dedup::to_hex(dedup::command_fingerprint("todo.create", body["payload"]));
      nlohmann::json entity = body["payload"];
      entity["id"] = i + 1;
      const char* sep = i == start ? "" : ",";
      keys += fmt::format(
          "{}({},{},'todo.create',decode('{}','hex'),'created',{}::jsonb,now(),"
          "now()+interval '7 days','commands',0,{})",
          sep, quoter.quote(body["scope"].get<std::string>()), quoter.quote(key_of(i)), fingerprint,
          quoter.quote(nlohmann::json{{"entity", entity}, {"error", nullptr}}.dump()), i);
      todos += fmt::format("{}({},{},{})", sep, i + 1, quoter.quote(entity["title"].get<std::string>()),
                           quoter.quote(entity["description"].get<std::string>()));
    }
    statements.push_back(keys + " ON CONFLICT DO NOTHING; " + todos + " ON CONFLICT DO NOTHING");
  }
  return statements;
}

// Seconds raw Postgres takes for statements[from, to), one transaction each.
inline double time_raw(pqxx::connection& c, const std::vector<std::string>& statements, std::size_t from,
                       std::size_t to) {
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t i = from; i < to; ++i) {
    pqxx::work txn(c);
    txn.exec(statements[i]);
    txn.commit();
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace dedup::bench
