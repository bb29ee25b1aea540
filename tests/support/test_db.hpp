// Real Postgres for integration tests: every test gets a private schema holding the dedup tables
// (migrated with the production code) and the example entity tables, dropped afterwards.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "dedup/config.hpp"

namespace dedup::test {

// The connection string from DEDUP_TEST_DB (scripts/test sets it). Throws std::runtime_error when
// unset, so an integration test FAILS rather than skips when there is no database.
std::string test_db();

class TestSchema {
 public:
  // Creates schema "dedup_test_<pid>_<n>", migrates it, creates todos, appointments (no overlap
  // per professional: exclusion constraint "appointments_no_overlap") and conversations (unique
  // natural key "conversations_natural_key"), and the catalog mapping the three command types:
  //   todo.create         -> table <schema>.todos
  //   appointment.create  -> explicit SQL into <schema>.appointments
  //   conversation.create -> table <schema>.conversations, key_from [context_type, context_id, created_by]
  TestSchema();
  ~TestSchema();
  TestSchema(const TestSchema&) = delete;
  TestSchema& operator=(const TestSchema&) = delete;

  const std::string& name() const { return name_; }
  const std::string& conninfo() const { return conninfo_; }
  const std::string& config_yaml() const { return config_yaml_; }
  const CommandCatalog& catalog() const { return *catalog_; }
  // The catalog above plus the hostile fixtures (tests/fixtures/hostile.sql):
  //   specimen.create -> table <schema>.specimens
  //   specimen.sql    -> explicit SQL into <schema>.specimens (label, amount, n)
  //   specimen.nested -> explicit SQL into <schema>.specimens whose row carries JSON nested
  //                      payload.depth levels deep
  const std::string& hostile_config_yaml() const { return hostile_config_yaml_; }

  // Runs SQL in which "{schema}" stands for the quoted schema name.
  void exec(std::string_view sql) const;
  // First column of the first row of a query, as integer.
  long long scalar(std::string_view sql) const;

 private:
  std::string name_;
  std::string conninfo_;
  std::string config_yaml_;
  std::string hostile_config_yaml_;
  std::unique_ptr<CommandCatalog> catalog_;
};

}  // namespace dedup::test
