// Reading a command's fields out of a record, in each input format (docs/contract.md §1): our
// envelope, CloudEvents (Kafka protocol binding, binary and structured mode), and mapped messages.
// Internal to the core: parse_command() validates what these read.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>

#include <nlohmann/json.hpp>

#include "dedup/command.hpp"
#include "dedup/config.hpp"
#include "dedup/record.hpp"

namespace dedup::input {

// Messages may quote input (a field name, a parser's last token): bounded, so that a result or a
// dead-letter header can never grow with the record.
Rejection reject(RejectCode code, std::string_view message);

// Where a value came from, for messages ("body field 'scope'", "header 'idempotency-key'"). Views
// of literals or of the catalog's configured places: this runs for every record, and the happy
// path must not pay for error text.
struct Where {
  std::string_view kind;
  std::string_view name;
};
std::string describe(const Where& where);

// Where a field was looked for, described only when a message needs it: a fixed text, or the
// configured places of a mapped input.
struct Places {
  std::string_view text;
  std::span<const InputPlace> list;
};
std::string describe(const Places& places);

// A string field read from a record: absent, found (with where), or refused (not a string,
// places that disagree).
struct Found {
  std::string value;
  Where where;
};
using FieldRead = std::variant<std::monostate, Found, Rejection>;

struct Fields {
  FieldRead key;
  FieldRead scope;
  FieldRead type;
  // The payload object inside the record's value: absent (nullptr and no problem), or refused.
  // Points into the caller's value, which parse_command then moves the payload out of.
  nlohmann::json* payload = nullptr;
  std::optional<Rejection> payload_problem;
  Places key_places;
  Places scope_places;
  Places type_places;
  Places payload_place;
  // The record is a CloudEvent; and what about it is wrong (specversion, a missing attribute),
  // reported after key, scope and type were read, so a rejected result still names them.
  std::optional<CloudEventIdentity> cloudevent;
  std::optional<Rejection> event_problem;
};

// Reads the fields of `record`, whose value parsed to the object `body`, as `spec` says. Values are
// not validated here; repeated or doubled places that disagree are (mismatch codes).
Fields read_fields(const InboundRecord& record, nlohmann::json& body, const InputSpec& spec);

// For the CloudEvents binary mode: the value is the event's data. True when `record` is one.
bool is_binary_cloudevent(const InboundRecord& record);

}  // namespace dedup::input
