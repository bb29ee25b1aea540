#include "input_formats.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "dedup/json_text.hpp"

namespace dedup::input {
namespace {

using json = nlohmann::json;

// The envelope's headers (SPEC §1) and the CloudEvents Kafka binding's (binary mode).
constexpr std::string_view kKeyHeader = "idempotency-key";
constexpr std::string_view kScopeHeader = "idempotency-scope";
constexpr std::string_view kContentType = "content-type";
constexpr std::string_view kStructuredContentType = "application/cloudevents";

bool equal_ignoring_case(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

// The value of the headers named `name` (compared as given, or ignoring case). A header may be
// repeated, and clients disagree on which one counts (some read the first, others the last):
// repeats must agree. Null-valued headers do not count.
FieldRead header_value(const InboundRecord& record, std::string_view name, bool ignore_case,
                       RejectCode mismatch) {
  FieldRead found;
  for (const auto& header : record.headers) {
    const bool match = ignore_case ? equal_ignoring_case(header.name, name) : header.name == name;
    if (!match || !header.value) continue;
    if (auto* earlier = std::get_if<Found>(&found)) {
      if (earlier->value != *header.value) {
        return reject(mismatch, fmt::format("header '{}' appears more than once, with different "
                                            "values",
                                            name));
      }
      continue;
    }
    found = Found{*header.value, {"header", name}};
  }
  return found;
}

// A string value found in the record's value: absent when missing or null.
FieldRead string_value(const json* value, Where where, RejectCode invalid) {
  if (value == nullptr || value->is_null()) return {};
  if (!value->is_string()) {
    return reject(invalid, fmt::format("{} must be a string, got {}", describe(where),
                                       value->type_name()));
  }
  return Found{value->get<std::string>(), where};
}

json* member(json& body, std::string_view name) {
  const auto it = body.find(name);
  return it == body.end() ? nullptr : &*it;
}

json* at_pointer(json& body, const json::json_pointer& pointer) {
  return body.contains(pointer) ? &body.at(pointer) : nullptr;
}

// Envelope: body field and header both count, and must agree.
FieldRead envelope_field(const InboundRecord& record, json& body, std::string_view field,
                         std::string_view header, RejectCode invalid, RejectCode mismatch) {
  auto from_body = string_value(member(body, field), {"body field", field}, invalid);
  auto from_header = header_value(record, header, /*ignore_case=*/false, mismatch);
  if (std::holds_alternative<Rejection>(from_body)) return from_body;
  if (std::holds_alternative<Rejection>(from_header)) return from_header;
  auto* body_found = std::get_if<Found>(&from_body);
  auto* header_found = std::get_if<Found>(&from_header);
  if (body_found && header_found && body_found->value != header_found->value) {
    return reject(mismatch, fmt::format("body field '{}' and header '{}' disagree", field, header));
  }
  return body_found ? from_body : from_header;
}

Fields read_envelope(const InboundRecord& record, json& body) {
  Fields fields;
  fields.key = envelope_field(record, body, "idempotency_key", kKeyHeader, RejectCode::invalid_key,
                              RejectCode::key_mismatch);
  fields.scope = envelope_field(record, body, "scope", kScopeHeader, RejectCode::invalid_scope,
                                RejectCode::scope_mismatch);
  fields.type = string_value(member(body, "type"), {"body field", "type"}, RejectCode::unknown_type);
  fields.key_places.text = "body field 'idempotency_key' or header 'idempotency-key'";
  fields.scope_places.text = "body field 'scope' or header 'idempotency-scope'";
  fields.type_places.text = "body field 'type'";
  fields.payload_place.text = "body field 'payload'";
  fields.payload = member(body, "payload");
  return fields;
}

// Mapped: the first place where a field is present wins.
FieldRead first_present(const InboundRecord& record, json& body,
                        const std::vector<InputPlace>& places, RejectCode invalid,
                        RejectCode mismatch) {
  for (const auto& place : places) {
    FieldRead read =
        place.kind == InputPlace::Kind::header
            ? header_value(record, place.text, /*ignore_case=*/true, mismatch)
            : string_value(at_pointer(body, place.pointer), {"field", place.text}, invalid);
    if (!std::holds_alternative<std::monostate>(read)) return read;
  }
  return {};
}

Fields read_mapped(const InboundRecord& record, json& body, const InputSpec& spec) {
  Fields fields;
  fields.key = first_present(record, body, spec.key, RejectCode::invalid_key, RejectCode::key_mismatch);
  fields.scope = first_present(record, body, spec.scope, RejectCode::invalid_scope,
                               RejectCode::scope_mismatch);
  fields.type = first_present(record, body, spec.type, RejectCode::unknown_type,
                              RejectCode::unknown_type);
  fields.key_places.list = spec.key;
  fields.scope_places.list = spec.scope;
  fields.type_places.list = spec.type;
  fields.payload_place.list = std::span(&spec.payload, 1);
  fields.payload = at_pointer(body, spec.payload.pointer);
  return fields;
}

bool is_json_media_type(std::string_view type) {
  const auto end = type.find(';');
  const auto bare = type.substr(0, end);
  return equal_ignoring_case(bare, "application/json") ||
         (bare.size() > 5 && equal_ignoring_case(bare.substr(bare.size() - 5), "+json"));
}

// CloudEvents 1.0, Kafka protocol binding. Binary mode: ce_* headers, the value is the data.
// Structured mode: content-type application/cloudevents+json, the value is the event.
Fields read_cloudevent(const InboundRecord& record, json& body) {
  Fields fields;
  const bool binary = is_binary_cloudevent(record);
  const auto content_type = header_value(record, kContentType, /*ignore_case=*/true,
                                         RejectCode::invalid_event);
  // An attribute: the header ce_<name> in binary mode, the member <name> in structured mode.
  struct Attribute {
    std::string_view name;
    std::string_view header;
    std::string_view place;  // for "missing" messages
  };
  auto read = [&](const Attribute& attribute) -> FieldRead {
    if (binary) {
      return header_value(record, attribute.header, /*ignore_case=*/false, RejectCode::invalid_event);
    }
    return string_value(member(body, attribute.name), {"CloudEvent attribute", attribute.name},
                        RejectCode::invalid_event);
  };
  constexpr Attribute kId{"id", "ce_id", "header 'ce_id' or attribute 'id'"};
  constexpr Attribute kSource{"source", "ce_source", "header 'ce_source' or attribute 'source'"};
  constexpr Attribute kType{"type", "ce_type", "header 'ce_type' or attribute 'type'"};
  constexpr Attribute kSpecversion{"specversion", "ce_specversion", ""};
  fields.key = read(kId);
  fields.scope = read(kSource);
  fields.type = read(kType);
  fields.key_places.text = kId.place;
  fields.scope_places.text = kSource.place;
  fields.type_places.text = kType.place;
  fields.payload_place.text = binary ? "the record value (binary mode)" : "attribute 'data'";

  if (!binary) {
    const auto* structured = std::get_if<Found>(&content_type);
    if (!structured || structured->value.rfind(kStructuredContentType, 0) != 0) {
      fields.event_problem = reject(
          RejectCode::invalid_event,
          "not a CloudEvent: neither a ce_specversion header (binary mode) nor content-type "
          "application/cloudevents+json (structured mode)");
      return fields;
    }
  }
  const auto specversion = read(kSpecversion);
  if (auto* bad = std::get_if<Rejection>(&specversion)) {
    fields.event_problem = *bad;
  } else if (auto* found = std::get_if<Found>(&specversion); !found || found->value != "1.0") {
    fields.event_problem = reject(
        RejectCode::invalid_event,
        found ? fmt::format("CloudEvent specversion '{}' is not supported (only 1.0)",
                            truncate_utf8(found->value, 64))
              : std::string("CloudEvent attribute 'specversion' is missing"));
  }
  for (const auto& [attribute, name] :
       {std::pair{&fields.key, "id"}, std::pair{&fields.scope, "source"},
        std::pair{&fields.type, "type"}}) {
    if (!fields.event_problem && std::holds_alternative<std::monostate>(*attribute)) {
      fields.event_problem = reject(RejectCode::invalid_event,
                                    fmt::format("CloudEvent attribute '{}' is missing", name));
    }
  }
  auto found_string = [](const FieldRead& field) {
    const auto* found = std::get_if<Found>(&field);
    return found ? found->value : std::string();
  };
  fields.cloudevent = CloudEventIdentity{truncate_utf8(found_string(fields.key), 255),
                                         truncate_utf8(found_string(fields.scope), 255),
                                         truncate_utf8(found_string(fields.type), 255)};

  if (binary) {
    // The data: JSON by content-type, or with none (the binding's default for our use).
    if (const auto* declared = std::get_if<Found>(&content_type);
        declared && !is_json_media_type(declared->value)) {
      fields.payload_problem = reject(
          RejectCode::invalid_payload,
          fmt::format("CloudEvent data has content-type '{}', not JSON",
                      truncate_utf8(declared->value, 128)));
    }
    fields.payload = &body;
    return fields;
  }
  if (body.contains("data_base64")) {
    fields.payload_problem = reject(RejectCode::invalid_payload,
                                    "CloudEvent carries data_base64: the data must be a JSON object");
  } else if (const auto it = body.find("datacontenttype");
             it != body.end() && it->is_string() && !is_json_media_type(it->get_ref<const std::string&>())) {
    fields.payload_problem = reject(
        RejectCode::invalid_payload,
        fmt::format("CloudEvent datacontenttype '{}' is not JSON",
                    truncate_utf8(it->get_ref<const std::string&>(), 128)));
  }
  fields.payload = member(body, "data");
  return fields;
}

}  // namespace

Rejection reject(RejectCode code, std::string_view message) {
  return {code, truncate_utf8(message, kMaxRejectionMessageBytes)};
}

std::string describe(const Where& where) {
  return fmt::format("{} '{}'", where.kind, truncate_utf8(printable(where.name), 128));
}

std::string describe(const Places& places) {
  if (places.list.empty()) return places.text.empty() ? "no configured place" : std::string(places.text);
  std::string out;
  for (const auto& place : places.list) {
    if (!out.empty()) out += ", ";
    out += describe(Where{place.kind == InputPlace::Kind::header ? "header" : "field", place.text});
  }
  return out;
}

bool is_binary_cloudevent(const InboundRecord& record) {
  return std::any_of(record.headers.begin(), record.headers.end(),
                     [](const RecordHeader& h) { return h.name == "ce_specversion"; });
}

Fields read_fields(const InboundRecord& record, json& body, const InputSpec& spec) {
  switch (spec.format) {
    case InputFormat::envelope: return read_envelope(record, body);
    case InputFormat::mapped: return read_mapped(record, body, spec);
    case InputFormat::cloudevents: return read_cloudevent(record, body);
  }
  return read_envelope(record, body);
}

}  // namespace dedup::input
