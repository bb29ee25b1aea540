// The key store's connection: opened on first use and after it is lost, with its session settings
// and its prepared statements.
#pragma once

#include <pqxx/pqxx>

#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

namespace dedup::pg {

class Session {
 public:
  Session(std::string conninfo, std::string schema);

  // The open connection, connected anew (settings applied, statements of sql.hpp prepared) when
  // there is none or it was lost. Throws like pg::connect.
  pqxx::connection& connection();

  // Forgets a connection that was lost, so that the next connection() opens a new one.
  void drop_if_broken();

  // The name of a statement prepared for `signature` on `current`, the connection a transaction
  // of connection() runs on (never reopened here: the transaction holds on to it); `render` gives
  // the statement's text, and is called only the first time a signature is seen on a connection.
  const std::string& prepared(pqxx::connection_base& current, const std::string& signature,
                              const std::function<std::string()>& render);

  const std::string& schema() const noexcept { return schema_; }

 private:
  std::string conninfo_;
  std::string schema_;
  std::unique_ptr<pqxx::connection> connection_;
  // Statements prepared on demand on the current connection: signature -> name.
  std::unordered_map<std::string, std::string> prepared_;
};

}  // namespace dedup::pg
