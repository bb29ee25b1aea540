// Every statement the key store sends, and the one templating scheme that fills them in.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "dedup/config.hpp"

namespace dedup::pg {

// Names of the statements prepared once per connection (Session prepares them).
inline constexpr const char* kClaim = "dedup_claim";
inline constexpr const char* kLookup = "dedup_lookup";
inline constexpr const char* kReclaim = "dedup_reclaim";
inline constexpr const char* kStoreResults = "dedup_store_results";
inline constexpr const char* kForget = "dedup_forget";
inline constexpr const char* kWriteEach = "dedup_write_each";
inline constexpr const char* kWriteOne = "dedup_write_one";

// SQLSTATE raised by fast_path_guard() (migration 2).
inline constexpr std::string_view kFastPathRefusedState = "DD001";

// One "{name}" of a template and its text.
struct SqlValue {
  std::string_view name;
  std::string_view text;
};

// Replaces each "{name}" of `sql` that `values` names by its text, in one pass: an inserted text
// (a quoted identifier, a configured statement) is never searched for placeholders itself. Any
// other brace is left as it is.
std::string render_sql(std::string_view sql, std::initializer_list<SqlValue> values);

struct NamedStatement {
  const char* name;
  std::string sql;
};

// The statements prepared on every connection, for `schema`.
std::vector<NamedStatement> fixed_statements(std::string_view schema);

// An SQL-mode type's statement as the store runs it (write_entity's $1 is the payload): the
// configured statement, its row returned as jsonb.
std::string sql_mode_statement(const CommandType& type);

// Table mode, one group of rows with the same columns: all rows and their key rows' results in
// one statement ($1 the payloads, $2 the keys), and one row alone ($1 the payload).
std::string bulk_insert_sql(std::string_view table, std::string_view columns,
                            std::string_view schema);
std::string single_insert_sql(std::string_view table, std::string_view columns);

// One entity INSERT of the fast path: group `g` into `table` (`columns`).
struct FastPathGroup {
  std::string table;
  std::string columns;
};

// The fast path's single statement for these groups ($1 the input, $2 now, $3 expires_at).
std::string fast_path_sql(const std::vector<FastPathGroup>& groups, std::string_view schema);

}  // namespace dedup::pg
