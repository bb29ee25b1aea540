#include "dedup/config.hpp"

#include <yaml-cpp/yaml.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "dedup/errors.hpp"

namespace dedup {
namespace {

constexpr std::size_t kMaxIdentifierLength = 63;  // NAMEDATALEN - 1

// "table" may be "name" or "schema.name"; each part must be a plain identifier. We do not accept
// quoted identifiers in config: plain ones are what users write, and they cannot smuggle SQL.
QualifiedName parse_table_name(const std::string& text, const std::string& field) {
  const auto dot = text.find('.');
  QualifiedName name;
  if (dot == std::string::npos) {
    name = {"public", text};
  } else {
    name = {text.substr(0, dot), text.substr(dot + 1)};
  }
  if (!is_valid_identifier(name.schema) || !is_valid_identifier(name.name)) {
    throw ConfigError(field, "'" + text +
                                 "' is not a table name: expected name or schema.name, each "
                                 "[A-Za-z_][A-Za-z0-9_]* of at most 63 characters");
  }
  return name;
}

// Config SQL runs as `WITH entity AS (<sql>) SELECT ...`, so a trailing semicolon must go, and a
// second statement is refused rather than silently truncated.
std::string normalize_sql(std::string sql, const std::string& field) {
  while (!sql.empty() && (std::isspace(static_cast<unsigned char>(sql.back())) || sql.back() == ';')) {
    sql.pop_back();
  }
  const auto first = sql.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) throw ConfigError(field, "SQL is empty");
  sql.erase(0, first);
  if (sql.find(';') != std::string::npos) {
    throw ConfigError(field, "SQL must be a single statement (found ';' before the end)");
  }
  if (sql.find("$1") == std::string::npos) {
    throw ConfigError(field, "SQL must use $1 (the payload as jsonb)");
  }
  for (auto pos = sql.find('$'); pos != std::string::npos; pos = sql.find('$', pos + 1)) {
    std::size_t end = pos + 1;
    while (end < sql.size() && std::isdigit(static_cast<unsigned char>(sql[end]))) ++end;
    if (end > pos + 1 && sql.substr(pos, end - pos) != "$1") {
      throw ConfigError(field, "SQL may use only one parameter, $1 (the payload as jsonb); found " +
                                   sql.substr(pos, end - pos));
    }
  }
  return sql;
}

std::string scalar_string(const YAML::Node& node, const std::string& field) {
  if (!node.IsScalar()) throw ConfigError(field, "expected a string");
  return node.as<std::string>();
}

CommandType parse_command_type(const std::string& name, const YAML::Node& node) {
  const std::string base = "commands." + name;
  if (!node.IsMap()) throw ConfigError(base, "expected a mapping with 'table' or 'sql'");
  static const std::set<std::string> kKnownKeys = {"table", "sql", "key_from"};
  for (const auto& entry : node) {
    const auto key = entry.first.as<std::string>();
    if (!kKnownKeys.contains(key)) {
      throw ConfigError(std::string(base).append(".").append(key),
                        "unknown setting (expected table, sql or key_from)");
    }
  }
  CommandType type;
  type.name = name;
  const bool has_table = static_cast<bool>(node["table"]);
  const bool has_sql = static_cast<bool>(node["sql"]);
  if (has_table == has_sql) {
    throw ConfigError(base, "set exactly one of 'table' and 'sql'");
  }
  if (has_table) {
    type.table = parse_table_name(scalar_string(node["table"], base + ".table"), base + ".table");
  } else {
    type.sql = normalize_sql(scalar_string(node["sql"], base + ".sql"), base + ".sql");
  }
  if (const auto key_from = node["key_from"]) {
    const std::string field = base + ".key_from";
    if (!key_from.IsSequence() || key_from.size() == 0) {
      throw ConfigError(field, "expected a non-empty list of payload field names");
    }
    std::set<std::string> seen;
    for (std::size_t i = 0; i < key_from.size(); ++i) {
      auto item = scalar_string(key_from[i], field + "[" + std::to_string(i) + "]");
      if (item.empty()) throw ConfigError(field + "[" + std::to_string(i) + "]", "empty field name");
      if (!seen.insert(item).second) {
        throw ConfigError(field, "field '" + item + "' is listed twice");
      }
      type.key_from.push_back(std::move(item));
    }
  }
  return type;
}

bool is_valid_type_name(const std::string& name) {
  if (name.empty() || name.size() > 255) return false;
  return std::all_of(name.begin(), name.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '.' || c == '_' || c == '-';
  });
}

// A pointer place: its text parsed once, here, so records never pay for it.
InputPlace pointer_place(const std::string& text, const std::string& field,
                         std::string_view expected) {
  try {
    return {InputPlace::Kind::pointer, text, nlohmann::json::json_pointer(text)};
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(field, "'" + text + "' is not " + std::string(expected) + ": " + e.what());
  }
}

std::vector<InputPlace> parse_places(const YAML::Node& node, const std::string& field) {
  if (!node.IsSequence() || node.size() == 0) {
    throw ConfigError(field, "expected a non-empty list of places (header:NAME or a JSON pointer)");
  }
  std::vector<InputPlace> places;
  for (std::size_t i = 0; i < node.size(); ++i) {
    const std::string item_field = field + "[" + std::to_string(i) + "]";
    const auto text = scalar_string(node[i], item_field);
    constexpr std::string_view kHeader = "header:";
    if (text.rfind(kHeader, 0) == 0) {
      const auto name = text.substr(kHeader.size());
      const bool token = !name.empty() && std::all_of(name.begin(), name.end(), [](unsigned char c) {
        return c > 0x20 && c < 0x7f && c != ':';
      });
      if (!token) throw ConfigError(item_field, "'" + text + "' names no header");
      InputPlace header;
      header.kind = InputPlace::Kind::header;
      header.text = name;
      places.push_back(std::move(header));
      continue;
    }
    places.push_back(pointer_place(text, item_field, "header:NAME or a JSON pointer"));
  }
  return places;
}

InputSpec parse_input(const YAML::Node& node, const std::vector<CommandType>& types) {
  if (!node.IsMap()) throw ConfigError("input", "expected a mapping with 'format'");
  static const std::set<std::string> kKnownKeys = {"format", "key", "scope", "type", "payload",
                                                   "types"};
  for (const auto& entry : node) {
    const auto key = entry.first.as<std::string>();
    if (!kKnownKeys.contains(key)) {
      throw ConfigError("input." + key,
                        "unknown setting (expected format, key, scope, type, payload or types)");
    }
  }
  InputSpec spec;
  const auto format = node["format"] ? scalar_string(node["format"], "input.format") : "envelope";
  if (format == "envelope") {
    spec.format = InputFormat::envelope;
  } else if (format == "cloudevents") {
    spec.format = InputFormat::cloudevents;
  } else if (format == "mapped") {
    spec.format = InputFormat::mapped;
  } else {
    throw ConfigError("input.format",
                      "'" + format + "' is not a format (expected envelope, cloudevents or mapped)");
  }
  for (const char* setting : {"key", "scope", "type", "payload"}) {
    if (node[setting] && spec.format != InputFormat::mapped) {
      throw ConfigError(std::string("input.") + setting, "applies to format: mapped only");
    }
  }
  if (node["types"] && spec.format == InputFormat::envelope) {
    throw ConfigError("input.types", "applies to formats cloudevents and mapped only");
  }
  if (spec.format == InputFormat::mapped) {
    if (!node["type"]) throw ConfigError("input.type", "format mapped needs the places of the type");
    if (!node["payload"]) throw ConfigError("input.payload", "format mapped needs the payload's place");
    if (node["key"]) spec.key = parse_places(node["key"], "input.key");
    if (node["scope"]) spec.scope = parse_places(node["scope"], "input.scope");
    spec.type = parse_places(node["type"], "input.type");
    spec.payload = pointer_place(scalar_string(node["payload"], "input.payload"), "input.payload",
                                 "a JSON pointer");
  }
  if (const auto renames = node["types"]) {
    if (!renames.IsMap()) throw ConfigError("input.types", "expected a mapping of type names");
    for (const auto& entry : renames) {
      const auto incoming = entry.first.as<std::string>();
      const auto field = "input.types." + incoming;
      auto target = scalar_string(entry.second, field);
      const bool known = std::any_of(types.begin(), types.end(),
                                     [&](const CommandType& t) { return t.name == target; });
      if (!known) throw ConfigError(field, "'" + target + "' is not a configured command type");
      spec.types.emplace_back(incoming, std::move(target));
    }
  }
  return spec;
}

}  // namespace

std::string_view InputSpec::command_type(std::string_view incoming) const noexcept {
  for (const auto& [from, to] : types) {
    if (from == incoming) return to;
  }
  return incoming;
}

bool is_valid_identifier(std::string_view name) noexcept {
  if (name.empty() || name.size() > kMaxIdentifierLength) return false;
  const auto head = static_cast<unsigned char>(name.front());
  if (!(std::isalpha(head) || head == '_')) return false;
  return std::all_of(name.begin(), name.end(), [](unsigned char c) {
    return (c < 0x80 && std::isalnum(c)) || c == '_';
  });
}

std::string quote_identifier(std::string_view name) {
  std::string quoted = "\"";
  for (char c : name) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  quoted += '"';
  return quoted;
}

std::string QualifiedName::quoted() const {
  return quote_identifier(schema) + "." + quote_identifier(name);
}

CommandCatalog CommandCatalog::from_yaml(std::string_view yaml_text) {
  // yaml-cpp throws its own exceptions for shapes we did not anticipate (a mapping key that is a
  // sequence, say): they are configuration errors too, and must exit with code 2.
  try {
    return from_yaml_unchecked(yaml_text);
  } catch (const YAML::Exception& e) {
    throw ConfigError("--config", "invalid YAML at line " + std::to_string(e.mark.line + 1) + ": " +
                                      e.msg);
  }
}

CommandCatalog CommandCatalog::from_yaml_unchecked(std::string_view yaml_text) {
  const YAML::Node root = YAML::Load(std::string(yaml_text));
  if (!root.IsMap()) throw ConfigError("--config", "expected a mapping with a 'commands' section");
  for (const auto& entry : root) {
    const auto key = entry.first.as<std::string>();
    if (key != "commands" && key != "input") {
      throw ConfigError(key, "unknown top-level setting (expected 'commands' or 'input')");
    }
  }
  const auto commands = root["commands"];
  if (!commands || !commands.IsMap() || commands.size() == 0) {
    throw ConfigError("commands", "expected a non-empty mapping of command types");
  }
  CommandCatalog catalog;
  for (const auto& entry : commands) {
    const auto name = entry.first.as<std::string>();
    if (!is_valid_type_name(name)) {
      throw ConfigError("commands." + name,
                        "a command type name is 1-255 characters of [A-Za-z0-9._-]");
    }
    catalog.types_.push_back(parse_command_type(name, entry.second));
  }
  std::sort(catalog.types_.begin(), catalog.types_.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  if (const auto input = root["input"]) catalog.input_ = parse_input(input, catalog.types_);
  return catalog;
}

CommandCatalog CommandCatalog::from_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError("--config", "cannot read '" + path.string() + "'");
  std::stringstream text;
  text << in.rdbuf();
  return from_yaml(text.str());
}

std::vector<std::string> CommandCatalog::type_names() const {
  std::vector<std::string> names;
  names.reserve(types_.size());
  for (const auto& type : types_) names.push_back(type.name);
  return names;
}

const CommandType* CommandCatalog::find(std::string_view type_name) const noexcept {
  const auto it = std::lower_bound(types_.begin(), types_.end(), type_name,
                                   [](const CommandType& t, std::string_view n) { return t.name < n; });
  return it != types_.end() && it->name == type_name ? &*it : nullptr;
}

}  // namespace dedup
