#include "key_rows.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>

#include "dedup/errors.hpp"
#include "dedup/json_text.hpp"

namespace dedup::pg {

std::string key_id(const Command& command) {
  return key_id(command.scope, command.idempotency_key);
}

std::string key_id(std::string_view scope, std::string_view key) {
  std::string id;
  id.reserve(scope.size() + key.size() + 1);
  id += scope;
  id += '\0';
  id += key;
  return id;
}

void append_claim_fields(std::string& out, const Command& command) {
  out += R"("s":)";
  write_json_string(out, command.scope);
  out += R"(,"k":)";
  write_json_string(out, command.idempotency_key);
  out += R"(,"t":)";
  write_json_string(out, command.type->name);
  out += R"(,"f":")";
  out += to_hex(command.fingerprint);
  out += R"(","tp":)";
  write_json_string(out, command.source.topic);
  out += R"(,"p":)";
  out += std::to_string(command.source.partition);
  out += R"(,"o":)";
  out += std::to_string(command.source.offset);
}

namespace {

// "[e1,e2,...]": one element per index, appended by `append_element(out, index)`.
template <typename AppendElement>
std::string json_array(const std::vector<std::size_t>& indices, AppendElement append_element) {
  std::string out = "[";
  for (const auto i : indices) {
    if (out.size() > 1) out += ',';
    append_element(out, i);
  }
  return out + ']';
}

}  // namespace

std::string claim_array(std::span<const Command> commands,
                        const std::vector<std::size_t>& indices) {
  return json_array(indices, [&](std::string& out, std::size_t i) {
    out += '{';
    append_claim_fields(out, commands[i]);
    out += '}';
  });
}

std::string key_array(std::span<const Command> commands, const std::vector<std::size_t>& indices) {
  return json_array(indices, [&](std::string& out, std::size_t i) {
    out += R"({"s":)";
    write_json_string(out, commands[i].scope);
    out += R"(,"k":)";
    write_json_string(out, commands[i].idempotency_key);
    out += '}';
  });
}

std::string payload_array(std::span<const Command> commands,
                          const std::vector<std::size_t>& indices) {
  return json_array(indices,
                    [&](std::string& out, std::size_t i) { out += commands[i].canonical_payload; });
}

std::string column_list(const nlohmann::json& payload) {
  std::string columns;
  for (const auto& [field, value] : payload.items()) {
    if (!columns.empty()) columns += ", ";
    columns += quote_identifier(field);
  }
  return columns;
}

// Payloads nest at most 64 levels, so a table-mode entity stays far below this bound; only an SQL
// statement that builds deeper JSON reaches it, and that command is then refused (a record fault:
// SQLSTATE DD002, our own), rather than recursing without bound.
constexpr std::size_t kStoredJsonDepth = 512;

nlohmann::json parse_stored_json(const char* text) {
  auto parsed = parse_json(text, JsonParseLimits{.max_depth = kStoredJsonDepth});
  if (std::holds_alternative<std::string>(parsed)) {
    // No byte offset in the message: it would change with the row (a longer id) and a replayed
    // rejection must be identical.
    throw PermanentDatabaseError(
        fmt::format("Postgres returned JSON nested deeper than {} levels (SQLSTATE DD002)",
                    kStoredJsonDepth),
        "DD002");
  }
  return std::move(std::get<nlohmann::json>(parsed));
}

Fingerprint fingerprint_from_bytea(const pqxx::field& field) {
  const pqxx::binarystring bytes(field);
  Fingerprint fingerprint{};
  if (bytes.size() != fingerprint.size()) throw Error("stored fingerprint has a bad length");
  std::copy(bytes.begin(), bytes.end(), fingerprint.begin());
  return fingerprint;
}

std::string key_id_of_row(const pqxx::row& row) {
  return key_id(row["scope"].c_str(), row["idempotency_key"].c_str());
}

StoredKey stored_key_from_row(const pqxx::row& row) {
  const std::string_view status = row["status"].c_str();
  if (status == "pending") {
    throw TransientDatabaseError("found an uncommitted key row; retrying", "");
  }
  StoredKey stored;
  stored.command_type = row["command_type"].c_str();
  stored.fingerprint = fingerprint_from_bytea(row["fingerprint"]);
  stored.status = status == "created" ? Status::created : Status::conflict;
  const auto result = parse_stored_json(row["result"].c_str());
  stored.entity = result.value("entity", nlohmann::json());
  stored.error = result.value("error", nlohmann::json());
  stored.first_processed_at =
      Timestamp(std::chrono::microseconds(row["created_at_us"].as<std::int64_t>()));
  stored.source = {row["source_topic"].c_str(), row["source_partition"].as<std::int32_t>(),
                   row["source_offset"].as<std::int64_t>()};
  return stored;
}

}  // namespace dedup::pg
