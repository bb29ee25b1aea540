// The key rows on the wire: the JSON inputs of the key statements, and the rows they return.
#pragma once

#include <pqxx/pqxx>

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "dedup/command.hpp"
#include "dedup/key_store.hpp"

namespace dedup::pg {

// A key's identity inside a batch: scope and key, which cannot contain NUL, joined by one.
std::string key_id(const Command& command);
std::string key_id(std::string_view scope, std::string_view key);

// The fields of a claim, "s","k","t","f","tp","p","o", appended to `out` without the braces, so
// the fast path can add its own. Written directly rather than through JSON objects: this runs
// for every command of every batch (a tenth of the client's time, measured, the other way).
void append_claim_fields(std::string& out, const Command& command);

// The claims of commands[indices] as a JSON array (the input of the claim and reclaim statements).
std::string claim_array(std::span<const Command> commands,
                        const std::vector<std::size_t>& indices);

// [{"s": scope, "k": key}, ...] of commands[indices]: the keys a statement looks up, updates or
// deletes.
std::string key_array(std::span<const Command> commands, const std::vector<std::size_t>& indices);

// [payload, ...] of commands[indices], each as its canonical text: numbers exactly as written.
std::string payload_array(std::span<const Command> commands,
                          const std::vector<std::size_t>& indices);

// The quoted column list of a table-mode command: its payload's fields, in canonical order.
std::string column_list(const nlohmann::json& payload);

// JSON that Postgres produced (to_jsonb of an entity row, a stored result): numbers kept exactly.
// Throws PermanentDatabaseError (SQLSTATE DD002, a record fault) for JSON nested too deep.
nlohmann::json parse_stored_json(const char* text);

// A bytea fingerprint column. Throws dedup::Error unless it holds exactly 32 bytes.
Fingerprint fingerprint_from_bytea(const pqxx::field& field);

// The key_id of a key row (its "scope" and "idempotency_key" columns).
std::string key_id_of_row(const pqxx::row& row);

// A committed key row, as the claim, lookup and fast-path statements return it (sql.cpp, read by
// column name). Throws TransientDatabaseError for a 'pending' row, which only an open transaction
// can see (never the case here; it would mean reading another transaction's uncommitted claim).
StoredKey stored_key_from_row(const pqxx::row& row);

}  // namespace dedup::pg
