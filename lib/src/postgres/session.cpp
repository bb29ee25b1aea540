#include "session.hpp"

#include "dedup/errors.hpp"
#include "internal.hpp"
#include "sql.hpp"

namespace dedup::pg {

std::unique_ptr<pqxx::connection> connect(const std::string& conninfo) {
  try {
    return std::make_unique<pqxx::connection>(conninfo);
  } catch (const pqxx::broken_connection& e) {
    // libpq reports every connect failure the same way; tell a retryable one (server not up yet,
    // refused, timed out) from one a retry cannot cure (authentication, missing database).
    const std::string what = e.what();
    const bool permanent = what.find("authentication failed") != std::string::npos ||
                           what.find("does not exist") != std::string::npos ||
                           what.find("invalid connection option") != std::string::npos ||
                           what.find("missing \"=\"") != std::string::npos;
    if (permanent) throw PermanentDatabaseError("cannot connect to Postgres: " + what, "08001");
    throw TransientDatabaseError("cannot connect to Postgres: " + what, "08001");
  } catch (...) {
    rethrow_classified("connect");
  }
}

Session::Session(std::string conninfo, std::string schema)
    : conninfo_(std::move(conninfo)), schema_(std::move(schema)) {}

pqxx::connection& Session::connection() {
  if (connection_ && connection_->is_open()) return *connection_;
  connection_.reset();
  auto fresh = connect(conninfo_);
  // Plan every execution for its input: a generic plan cached while the keys table was small
  // (seq scans) would otherwise stay in use as the table grows to millions of rows.
  pqxx::nontransaction(*fresh).exec("SET plan_cache_mode = force_custom_plan");
  prepared_.clear();  // prepared statements belong to the old connection
  for (const auto& statement : fixed_statements(schema_)) {
    fresh->prepare(statement.name, statement.sql);
  }
  connection_ = std::move(fresh);
  return *connection_;
}

void Session::drop_if_broken() {
  if (connection_ && !connection_->is_open()) connection_.reset();
}

const std::string& Session::prepared(pqxx::connection_base& current,
                                     const std::string& signature,
                                     const std::function<std::string()>& render) {
  auto [it, inserted] = prepared_.try_emplace(signature);
  if (inserted) {
    it->second = "dedup_fast_" + std::to_string(prepared_.size());
    current.prepare(it->second, render());
  }
  return it->second;
}

}  // namespace dedup::pg
