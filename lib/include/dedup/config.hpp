// The command catalog: which command types exist and how each one writes its entity (SPEC §5).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace dedup {

// A schema-qualified Postgres identifier, validated at load.
struct QualifiedName {
  std::string schema;  // "public" when the config names a bare table
  std::string name;

  // "\"schema\".\"name\"", safe to splice into SQL.
  std::string quoted() const;
};

struct CommandType {
  std::string name;                    // e.g. "todo.create"
  std::optional<QualifiedName> table;  // table mode: INSERT the payload's fields into this table
  std::string sql;                     // sql mode: $1 is the payload (jsonb); returns one row
  std::vector<std::string> key_from;   // natural-key mode: derive the key from these payload fields
};

// Which format the commands topic carries (docs/contract.md §1, the config's `input:`).
enum class InputFormat { envelope, cloudevents, mapped };

// Where a mapped input finds a field: a header (its name compared case-insensitively) or a JSON
// pointer (RFC 6901) into the record's value.
struct InputPlace {
  enum class Kind { header, pointer } kind = Kind::pointer;
  std::string text;                      // the header name, or the pointer as written
  nlohmann::json::json_pointer pointer;  // Kind::pointer: parsed once, at load ("" = the whole value)
};

struct InputSpec {
  InputFormat format = InputFormat::envelope;
  // mapped: the places of each field, the first present one wins.
  std::vector<InputPlace> key;    // absent everywhere: the type's key_from, else rejected
  std::vector<InputPlace> scope;  // absent everywhere: --default-scope, else rejected
  std::vector<InputPlace> type;
  InputPlace payload;             // a JSON pointer to the payload object; "" = the whole value
  // cloudevents and mapped: incoming type name -> configured command type.
  std::vector<std::pair<std::string, std::string>> types;

  // The command type an incoming type name stands for (itself when not renamed).
  std::string_view command_type(std::string_view incoming) const noexcept;
};

class CommandCatalog {
 public:
  // Parses the YAML config. Throws ConfigError naming the offending field (e.g.
  // "commands.todo.create.table") for a missing section, an unknown key, a bad identifier, both or
  // neither of table/sql, empty SQL, an SQL statement without $1, or a bad key_from list.
  static CommandCatalog from_yaml(std::string_view yaml_text);
  // As from_yaml; also throws ConfigError("--config", ...) when the file cannot be read.
  static CommandCatalog from_file(const std::filesystem::path& path);

  // nullptr when the type is not configured.
  const CommandType* find(std::string_view type_name) const noexcept;
  const std::vector<CommandType>& types() const noexcept { return types_; }
  // The types' names, sorted (what Metrics takes as its command types).
  std::vector<std::string> type_names() const;
  const InputSpec& input() const noexcept { return input_; }

 private:
  static CommandCatalog from_yaml_unchecked(std::string_view yaml_text);
  std::vector<CommandType> types_;  // sorted by name
  InputSpec input_;
};

// True for an identifier we accept from config or payload field names: [A-Za-z_][A-Za-z0-9_]*,
// at most 63 bytes (Postgres's NAMEDATALEN - 1).
bool is_valid_identifier(std::string_view name) noexcept;

// Double-quotes an identifier for SQL (embedded quotes doubled).
std::string quote_identifier(std::string_view name);

}  // namespace dedup
