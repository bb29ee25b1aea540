#include "support/test_db.hpp"

#include <unistd.h>

#include <atomic>
#include <fstream>
#include <sstream>
#include <cstdlib>
#include <pqxx/pqxx>
#include <stdexcept>

#include "dedup/postgres.hpp"

namespace dedup::test {
namespace {

std::string substitute(std::string_view sql, const std::string& schema, bool quote = true) {
  std::string out(sql);
  const std::string quoted = quote ? "\"" + schema + "\"" : schema;
  for (std::size_t pos = 0; (pos = out.find("{schema}", pos)) != std::string::npos;) {
    out.replace(pos, 8, quoted);
    pos += quoted.size();
  }
  return out;
}

std::string read_source_file(const std::string& relative) {
  const std::string path = std::string(DEDUP_SOURCE_DIR) + "/" + relative;
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

std::string test_db() {
  const char* conninfo = std::getenv("DEDUP_TEST_DB");
  if (!conninfo || !*conninfo) {
    throw std::runtime_error(
        "DEDUP_TEST_DB is not set: integration tests need a real Postgres; run scripts/test");
  }
  return conninfo;
}

TestSchema::TestSchema() {
  static std::atomic<int> counter{0};
  name_ = "dedup_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
  conninfo_ = test_db();
  {
    pqxx::connection connection(conninfo_);
    pqxx::work txn(connection);
    // Parallel test processes would race on CREATE EXTENSION; serialize them.
    txn.exec("SELECT pg_advisory_xact_lock(4242)");
    txn.exec("CREATE EXTENSION IF NOT EXISTS btree_gist");
    txn.exec("DROP SCHEMA IF EXISTS \"" + name_ + "\" CASCADE");
    txn.commit();
  }
  migrate(conninfo_, name_);
  // The example entity tables, shared with the demo, and the hostile ones.
  exec("SET LOCAL search_path TO {schema}, public; " + read_source_file("scripts/demo.d/schema.sql"));
  exec("SET LOCAL search_path TO {schema}, public; " + read_source_file("tests/fixtures/hostile.sql"));
  config_yaml_ = substitute(R"YAML(
commands:
  todo.create:
    table: {schema}.todos
  appointment.create:
    sql: |
      INSERT INTO {schema}.appointments (professional_id, starts_at, ends_at)
      SELECT professional_id, starts_at, ends_at FROM jsonb_to_record($1)
        AS x(professional_id int, starts_at timestamptz, ends_at timestamptz)
      RETURNING *
  conversation.create:
    table: {schema}.conversations
    key_from: [context_type, context_id, created_by]
)YAML", name_, /*quote=*/false);
  catalog_ = std::make_unique<CommandCatalog>(CommandCatalog::from_yaml(config_yaml_));
  hostile_config_yaml_ = config_yaml_ + substitute(R"YAML(
  specimen.create:
    table: {schema}.specimens
  specimen.sql:
    sql: |
      INSERT INTO {schema}.specimens (label, amount, n)
      SELECT label, amount, n FROM jsonb_to_record($1) AS x(label text, amount numeric, n int)
      RETURNING *
  specimen.nested:
    sql: |
      INSERT INTO {schema}.specimens (label)
      SELECT label FROM jsonb_to_record($1) AS x(label text)
      RETURNING *, (repeat('[', ($1->>'depth')::int) || repeat(']', ($1->>'depth')::int))::jsonb
                   AS nested
)YAML", name_, /*quote=*/false);
}

TestSchema::~TestSchema() {
  try {
    exec("DROP SCHEMA IF EXISTS {schema} CASCADE");
  } catch (...) {
    // Destructors never throw; a leftover schema in a throwaway cluster is harmless.
  }
}

void TestSchema::exec(std::string_view sql) const {
  pqxx::connection connection(conninfo_);
  pqxx::work txn(connection);
  txn.exec(substitute(sql, name_));
  txn.commit();
}

long long TestSchema::scalar(std::string_view sql) const {
  pqxx::connection connection(conninfo_);
  pqxx::read_transaction txn(connection);
  return txn.exec(substitute(sql, name_))[0][0].as<long long>();
}

}  // namespace dedup::test
