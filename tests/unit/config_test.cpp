// CommandCatalog::from_yaml / from_file, identifiers (SPEC §5).
#include "dedup/config.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <ostream>
#include <string>
#include <vector>

#include "dedup/errors.hpp"

namespace dedup {
namespace {

constexpr std::string_view kValidYaml = R"(
commands:
  todo.create:
    table: public.todos            # INSERT the payload's fields into this table
  appointment.create:
    sql: |
      INSERT INTO appointments (professional_id, starts_at)
      SELECT professional_id, starts_at FROM jsonb_to_record($1)
        AS x(professional_id int, starts_at timestamptz)
      RETURNING *;
  conversation.create:
    table: conversations
    key_from: [context_type, context_id, created_by]
)";

TEST(CommandCatalogTest, LoadsEveryModeSortedByName) {
  const auto catalog = CommandCatalog::from_yaml(kValidYaml);
  EXPECT_EQ(catalog.type_names(),
            (std::vector<std::string>{"appointment.create", "conversation.create", "todo.create"}));
}

TEST(CommandCatalogTest, TableModeWithSchema) {
  const auto catalog = CommandCatalog::from_yaml(kValidYaml);
  const auto* todo = catalog.find("todo.create");
  ASSERT_NE(todo, nullptr);
  ASSERT_TRUE(todo->table.has_value());
  EXPECT_EQ(todo->table->schema, "public");
  EXPECT_EQ(todo->table->name, "todos");
  EXPECT_EQ(todo->table->quoted(), R"("public"."todos")");
  EXPECT_TRUE(todo->sql.empty());
  EXPECT_TRUE(todo->key_from.empty());
}

TEST(CommandCatalogTest, BareTableIsInSchemaPublicAndKeyFromKeepsItsOrder) {
  const auto catalog = CommandCatalog::from_yaml(kValidYaml);
  const auto* conversation = catalog.find("conversation.create");
  ASSERT_NE(conversation, nullptr);
  ASSERT_TRUE(conversation->table.has_value());
  EXPECT_EQ(conversation->table->schema, "public");
  EXPECT_EQ(conversation->table->name, "conversations");
  EXPECT_EQ(conversation->key_from,
            (std::vector<std::string>{"context_type", "context_id", "created_by"}));
}

TEST(CommandCatalogTest, SqlModeKeepsTheStatementWithoutTrailingSemicolon) {
  const auto catalog = CommandCatalog::from_yaml(kValidYaml);
  const auto* appointment = catalog.find("appointment.create");
  ASSERT_NE(appointment, nullptr);
  EXPECT_FALSE(appointment->table.has_value());
  EXPECT_EQ(appointment->sql,
            "INSERT INTO appointments (professional_id, starts_at)\n"
            "SELECT professional_id, starts_at FROM jsonb_to_record($1)\n"
            "  AS x(professional_id int, starts_at timestamptz)\n"
            "RETURNING *");
}

TEST(CommandCatalogTest, SchemaQualifiedNameIsSplitAtTheDot) {
  const auto catalog = CommandCatalog::from_yaml("commands:\n  a:\n    table: app_1._Todos2\n");
  ASSERT_TRUE(catalog.find("a")->table.has_value());
  EXPECT_EQ(catalog.find("a")->table->schema, "app_1");
  EXPECT_EQ(catalog.find("a")->table->name, "_Todos2");
}

struct SqlCase {
  std::string yaml_sql;  // as written after "sql: "
  std::string stored;

  friend void PrintTo(const SqlCase& c, std::ostream* os) { *os << c.yaml_sql; }
};

class SqlNormalizationTest : public ::testing::TestWithParam<SqlCase> {};

TEST_P(SqlNormalizationTest, StripsTrailingSemicolonsAndSurroundingWhitespace) {
  const auto catalog =
      CommandCatalog::from_yaml("commands:\n  a:\n    sql: " + GetParam().yaml_sql + "\n");
  EXPECT_EQ(catalog.find("a")->sql, GetParam().stored);
}

INSTANTIATE_TEST_SUITE_P(
    Sql, SqlNormalizationTest,
    ::testing::Values(SqlCase{"SELECT $1", "SELECT $1"}, SqlCase{"SELECT $1;", "SELECT $1"},
                      SqlCase{"\"SELECT $1 ; \\n\"", "SELECT $1"},
                      SqlCase{"\"  SELECT $1;;\"", "SELECT $1"},
                      SqlCase{"\"\\n\\tSELECT $1::jsonb\"", "SELECT $1::jsonb"}));

TEST(CommandCatalogTest, FindHitsAndMisses) {
  const auto catalog = CommandCatalog::from_yaml(kValidYaml);
  for (const char* name : {"appointment.create", "conversation.create", "todo.create"}) {
    const auto* type = catalog.find(name);
    ASSERT_NE(type, nullptr) << name;
    EXPECT_EQ(type->name, name);
  }
  for (const char* name : {"", "todo", "todo.create.x", "Todo.create", "todo.creat", "zzz", "a"}) {
    EXPECT_EQ(catalog.find(name), nullptr) << name;
  }
}

TEST(CommandCatalogTest, FromFileReadsTheFile) {
  const auto path = std::filesystem::path(::testing::TempDir()) / "dedup_config_test.yaml";
  {
    std::ofstream out(path);
    out << kValidYaml;
  }
  const auto catalog = CommandCatalog::from_file(path);
  std::filesystem::remove(path);
  EXPECT_EQ(catalog.types().size(), 3u);
  EXPECT_NE(catalog.find("todo.create"), nullptr);
}

TEST(CommandCatalogTest, FromFileOnMissingPathNamesConfigFlag) {
  const auto path =
      std::filesystem::path(::testing::TempDir()) / "dedup_no_such_dir" / "config.yaml";
  try {
    CommandCatalog::from_file(path);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), "--config");
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  }
}

// --- errors, table-driven ----------------------------------------------------------------------

struct BadConfig {
  std::string name;
  std::string yaml;
  std::string field;  // ConfigError::field() expected

  friend void PrintTo(const BadConfig& c, std::ostream* os) { *os << c.name; }
};

class BadConfigTest : public ::testing::TestWithParam<BadConfig> {};

TEST_P(BadConfigTest, ThrowsConfigErrorNamingTheField) {
  try {
    CommandCatalog::from_yaml(GetParam().yaml);
    FAIL() << "expected ConfigError for:\n" << GetParam().yaml;
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), GetParam().field) << e.what();
    // The message starts with the field, so the user sees where to look.
    EXPECT_EQ(std::string(e.what()).rfind(GetParam().field + ": ", 0), 0u) << e.what();
  } catch (const std::exception& e) {
    FAIL() << "expected ConfigError, got another exception: " << e.what();
  }
}

// One command "x" in otherwise valid YAML.
std::string command_x(const std::string& settings) { return "commands:\n  x:\n" + settings; }

INSTANTIATE_TEST_SUITE_P(
    Document, BadConfigTest,
    ::testing::Values(BadConfig{"InvalidYaml", "commands: [unclosed\n", "--config"},
                      BadConfig{"InvalidYamlIndentation",
                                "commands:\n  x:\n    table: t\n   sql: y\n", "--config"},
                      BadConfig{"EmptyDocument", "", "--config"},
                      BadConfig{"TopLevelList", "- commands\n", "--config"},
                      BadConfig{"TopLevelScalar", "commands\n", "--config"},
                      BadConfig{"TopLevelUnknownKey", "version: 1\ncommands:\n  x:\n    table: t\n",
                                "version"},
                      BadConfig{"MissingCommands", "{}\n", "commands"},
                      BadConfig{"NullCommands", "commands:\n", "commands"},
                      BadConfig{"EmptyCommands", "commands: {}\n", "commands"},
                      BadConfig{"CommandsIsAList", "commands: [x]\n", "commands"},
                      BadConfig{"TypeNameWithSpace", "commands:\n  todo create:\n    table: t\n",
                                "commands.todo create"},
                      BadConfig{"TypeNameWithSlash", "commands:\n  todo/create:\n    table: t\n",
                                "commands.todo/create"},
                      BadConfig{"CommandNotAMapping", command_x("    - table\n"), "commands.x"},
                      BadConfig{"CommandIsAScalar", "commands:\n  x: public.todos\n", "commands.x"},
                      BadConfig{"UnknownSetting", command_x("    table: t\n    colums: [a]\n"),
                                "commands.x.colums"}),
    [](const auto& info) { return info.param.name; });

INSTANTIATE_TEST_SUITE_P(
    Mode, BadConfigTest,
    ::testing::Values(
        BadConfig{"BothTableAndSql", command_x("    table: t\n    sql: SELECT $1\n"), "commands.x"},
        BadConfig{"NeitherTableNorSql", command_x("    key_from: [a]\n"), "commands.x"},
        BadConfig{"EmptyMapping", "commands:\n  x: {}\n", "commands.x"},
        BadConfig{"TableInjection", command_x("    table: \"public.todos; drop table x\"\n"),
                  "commands.x.table"},
        BadConfig{"TableThreeParts", command_x("    table: a.b.c\n"), "commands.x.table"},
        BadConfig{"TableQuoted", command_x("    table: '\"public\".\"todos\"'\n"),
                  "commands.x.table"},
        BadConfig{"TableQuotedBare", command_x("    table: '\"todos\"'\n"), "commands.x.table"},
        BadConfig{"TableEmpty", command_x("    table: ''\n"), "commands.x.table"},
        BadConfig{"TableNull", command_x("    table:\n"), "commands.x.table"},
        BadConfig{"TableEmptySchema", command_x("    table: .todos\n"), "commands.x.table"},
        BadConfig{"TableEmptyName", command_x("    table: public.\n"), "commands.x.table"},
        BadConfig{"TableDigitFirst", command_x("    table: 1todos\n"), "commands.x.table"},
        BadConfig{"TableHyphen", command_x("    table: my-todos\n"), "commands.x.table"},
        BadConfig{"TableTooLong", command_x("    table: " + std::string(64, 't') + "\n"),
                  "commands.x.table"},
        BadConfig{"TableIsAList", command_x("    table: [todos]\n"), "commands.x.table"},
        BadConfig{"SqlEmpty", command_x("    sql: ''\n"), "commands.x.sql"},
        BadConfig{"SqlOnlySemicolons", command_x("    sql: ' ; ;\t'\n"), "commands.x.sql"},
        BadConfig{"SqlIsAMapping", command_x("    sql: {a: b}\n"), "commands.x.sql"},
        BadConfig{"SqlWithoutParameter",
                  command_x("    sql: INSERT INTO t DEFAULT VALUES RETURNING *\n"),
                  "commands.x.sql"},
        BadConfig{"SqlWithSecondParameter", command_x("    sql: SELECT $1, $2\n"),
                  "commands.x.sql"},
        // "$1 is the payload": only one parameter exists, whichever number a second one has.
        BadConfig{"SqlWithThirdParameter", command_x("    sql: SELECT $1, $3\n"), "commands.x.sql"},
        BadConfig{"SqlTwoStatements",
                  command_x("    sql: \"INSERT INTO t SELECT $1; DELETE FROM t\"\n"),
                  "commands.x.sql"},
        BadConfig{"SqlTwoStatementsBothTerminated",
                  command_x("    sql: \"SELECT $1; SELECT $1;\"\n"), "commands.x.sql"}),
    [](const auto& info) { return info.param.name; });

INSTANTIATE_TEST_SUITE_P(
    KeyFrom, BadConfigTest,
    ::testing::Values(
        BadConfig{"KeyFromScalar", command_x("    table: t\n    key_from: a\n"),
                  "commands.x.key_from"},
        BadConfig{"KeyFromMapping", command_x("    table: t\n    key_from: {a: 1}\n"),
                  "commands.x.key_from"},
        BadConfig{"KeyFromEmpty", command_x("    table: t\n    key_from: []\n"),
                  "commands.x.key_from"},
        BadConfig{"KeyFromNull", command_x("    table: t\n    key_from:\n"), "commands.x.key_from"},
        BadConfig{"KeyFromDuplicate", command_x("    table: t\n    key_from: [a, b, a]\n"),
                  "commands.x.key_from"},
        BadConfig{"KeyFromNestedList", command_x("    table: t\n    key_from: [a, [b]]\n"),
                  "commands.x.key_from[1]"},
        BadConfig{"KeyFromEmptyName", command_x("    table: t\n    key_from: ['']\n"),
                  "commands.x.key_from[0]"}),
    [](const auto& info) { return info.param.name; });

// YAML allows non-scalar mapping keys ("? [a]"). They are a config mistake like any other: the
// worker must report ConfigError (exit 2), not a yaml-cpp conversion exception.
TEST(CommandCatalogTest, NonScalarMappingKeyIsConfigError) {
  for (const char* yaml : {"? [a]\n: 1\n", "commands:\n  ? [a]\n  : {table: t}\n",
                           "commands:\n  x:\n    table: t\n    ? [a]\n    : 1\n"}) {
    EXPECT_THROW(CommandCatalog::from_yaml(yaml), ConfigError) << yaml;
  }
}

// --- identifiers -------------------------------------------------------------------------------

struct IdentifierCase {
  std::string name;
  bool valid;

  friend void PrintTo(const IdentifierCase& c, std::ostream* os) { *os << '\'' << c.name << '\''; }
};

class IdentifierTest : public ::testing::TestWithParam<IdentifierCase> {};

TEST_P(IdentifierTest, IsValidIdentifier) {
  EXPECT_EQ(is_valid_identifier(GetParam().name), GetParam().valid)
      << "'" << GetParam().name << "'";
}

INSTANTIATE_TEST_SUITE_P(
    Identifiers, IdentifierTest,
    ::testing::Values(IdentifierCase{"a", true}, IdentifierCase{"_", true},
                      IdentifierCase{"Z", true}, IdentifierCase{"todo_items2", true},
                      IdentifierCase{"_1", true}, IdentifierCase{std::string(63, 'a'), true},
                      IdentifierCase{std::string(64, 'a'), false}, IdentifierCase{"", false},
                      IdentifierCase{"1a", false}, IdentifierCase{"a-b", false},
                      IdentifierCase{"a b", false}, IdentifierCase{"a.b", false},
                      IdentifierCase{"a;", false}, IdentifierCase{"a\"b", false},
                      IdentifierCase{"$1", false}, IdentifierCase{"é", false},
                      IdentifierCase{"aé", false}, IdentifierCase{std::string("a\0b", 3), false},
                      IdentifierCase{"a\n", false}));

TEST(QuoteIdentifierTest, WrapsInDoubleQuotesAndDoublesEmbeddedQuotes) {
  EXPECT_EQ(quote_identifier("todos"), R"("todos")");
  EXPECT_EQ(quote_identifier("Todos"), R"("Todos")");
  EXPECT_EQ(quote_identifier(""), R"("")");
  EXPECT_EQ(quote_identifier("a\"b"), R"("a""b")");
  EXPECT_EQ(quote_identifier("\""), R"("""")");
  EXPECT_EQ(quote_identifier("a.b"), R"("a.b")");
}

TEST(QuoteIdentifierTest, QualifiedNameQuotesEachPart) {
  EXPECT_EQ((QualifiedName{"my schema", "a\"b"}.quoted()), R"("my schema"."a""b")");
}

}  // namespace
}  // namespace dedup
