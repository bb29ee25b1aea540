// The input formats of the config's `input:` (docs/contract.md §1): our envelope, CloudEvents
// (binary and structured mode) and mapped messages; every place kind and rejection reason.
#include <gtest/gtest.h>

#include <string>
#include <variant>
#include <vector>

#include "dedup/command.hpp"
#include "dedup/config.hpp"
#include "dedup/errors.hpp"
#include "dedup/outbound.hpp"
#include "dedup/result.hpp"
#include "support/records.hpp"

namespace dedup {
namespace {

using test::header;
using test::record_raw;

constexpr std::string_view kCommands = R"(
commands:
  todo.create:
    table: public.todos
  conversation.create:
    table: conversations
    key_from: [context_type, context_id]
)";

CommandCatalog catalog_with(std::string_view input) {
  return CommandCatalog::from_yaml(std::string(kCommands) + std::string(input));
}

Command accepted(const ParsedCommand& parsed) {
  if (const auto* rejected = std::get_if<RejectedCommand>(&parsed)) {
    ADD_FAILURE() << "rejected: " << to_string(rejected->rejection.code) << ": "
                  << rejected->rejection.message;
    return {};
  }
  return std::get<Command>(parsed);
}

RejectedCommand refused(const ParsedCommand& parsed, RejectCode code, std::string_view says) {
  if (!std::holds_alternative<RejectedCommand>(parsed)) {
    ADD_FAILURE() << "accepted, expected " << to_string(code);
    return {};
  }
  const auto& rejected = std::get<RejectedCommand>(parsed);
  EXPECT_EQ(rejected.rejection.code, code) << rejected.rejection.message;
  EXPECT_NE(rejected.rejection.message.find(says), std::string::npos) << rejected.rejection.message;
  return rejected;
}

// --- config ----------------------------------------------------------------------------------

TEST(InputConfigTest, DefaultsToTheEnvelope) {
  EXPECT_EQ(catalog_with("").input().format, InputFormat::envelope);
}

TEST(InputConfigTest, RefusesWhatCannotWorkNamingTheField) {
  struct Case {
    std::string yaml;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"input: {format: protobuf}", "input.format"},
      {"input: {format: envelope, key: [/k]}", "input.key"},
      {"input: {format: cloudevents, payload: /data}", "input.payload"},
      {"input: {format: envelope, types: {a: todo.create}}", "input.types"},
      {"input: {format: mapped, payload: /data}", "input.type"},
      {"input: {format: mapped, type: [/t]}", "input.payload"},
      {"input: {format: mapped, type: [/t], payload: data}", "input.payload"},
      {"input: {format: mapped, type: ['header:'], payload: /d}", "input.type[0]"},
      {"input: {format: mapped, type: [/t], key: [no-slash], payload: /d}", "input.key[0]"},
      {"input: {format: mapped, type: [/t], key: [], payload: /d}", "input.key"},
      {"input: {format: cloudevents, types: {com.x: nope.create}}", "input.types.com.x"},
      {"input: {format: cloudevents, colour: red}", "input.colour"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.yaml);
    try {
      catalog_with(c.yaml);
      ADD_FAILURE() << "accepted";
    } catch (const ConfigError& e) {
      EXPECT_EQ(e.field(), c.field) << e.what();
    }
  }
}

// --- mapped ----------------------------------------------------------------------------------

const CommandCatalog& mapped() {
  static const auto instance = catalog_with(R"(
input:
  format: mapped
  key: [header:Idempotency-Key, /meta/request_id]
  scope: [/tenant_id]
  type: [header:event-type, /kind]
  payload: /data
  types: {TodoCreated: todo.create}
)");
  return instance;
}

TEST(MappedInputTest, HeaderNamesAreCaseInsensitiveAndTheFirstPresentPlaceWins) {
  const auto value = R"({"meta":{"request_id":"from-body"},"tenant_id":"t-1","data":{"title":"x"}})";
  auto command = accepted(parse_command(
      record_raw(value, {"orders", 0, 0},
                 {header("IDEMPOTENCY-KEY", "from-header"), header("EVENT-TYPE", "todo.create")}),
      mapped(), {}));
  EXPECT_EQ(command.idempotency_key, "from-header");
  EXPECT_EQ(command.scope, "t-1");
  EXPECT_EQ(command.type->name, "todo.create");
  EXPECT_EQ(command.canonical_payload, R"({"title":"x"})");
  command = accepted(parse_command(record_raw(value, {"orders", 0, 1}, {header("event-type", "TodoCreated")}),
                                   mapped(), {}));
  EXPECT_EQ(command.idempotency_key, "from-body");  // no header: the pointer
  EXPECT_EQ(command.type->name, "todo.create");     // renamed by `types`
}

TEST(MappedInputTest, PointersFollowRfc6901Escapes) {
  const auto catalog = catalog_with(R"(
input:
  format: mapped
  key: ["/m/a~1b~0c"]
  scope: [/s]
  type: [/t]
  payload: ""
)");
  const auto command = accepted(parse_command(
      record_raw(R"({"m":{"a/b~c":"k-9"},"s":"org","t":"todo.create","title":"whole value"})"),
      catalog, {}));
  EXPECT_EQ(command.idempotency_key, "k-9");
  // payload "" is the whole value
  EXPECT_NE(command.canonical_payload.find(R"("title":"whole value")"), std::string::npos);
}

TEST(MappedInputTest, EveryRejectionNamesThePlaces) {
  const auto full = R"({"meta":{"request_id":"k"},"tenant_id":"t","kind":"todo.create","data":{"title":"x"}})";
  refused(parse_command(record_raw(R"({"tenant_id":"t","kind":"todo.create","data":{"title":"x"}})"),
                        mapped(), {}),
          RejectCode::missing_key, "header 'Idempotency-Key', field '/meta/request_id'");
  refused(parse_command(record_raw(R"({"meta":{"request_id":"k"},"kind":"todo.create","data":{"title":"x"}})"),
                        mapped(), {}),
          RejectCode::missing_scope, "field '/tenant_id'");
  EXPECT_EQ(accepted(parse_command(
                         record_raw(R"({"meta":{"request_id":"k"},"kind":"todo.create","data":{"title":"x"}})"),
                         mapped(), {.default_scope = "dflt"}))
                .scope,
            "dflt");
  refused(parse_command(record_raw(R"({"meta":{"request_id":"k"},"tenant_id":"t","data":{}})"), mapped(), {}),
          RejectCode::missing_type, "header 'event-type', field '/kind'");
  refused(parse_command(record_raw(R"({"meta":{"request_id":7},"tenant_id":"t","kind":"todo.create","data":{"title":"x"}})"),
                        mapped(), {}),
          RejectCode::invalid_key, "field '/meta/request_id' must be a string");
  refused(parse_command(record_raw(R"({"meta":{"request_id":"k"},"tenant_id":"t","kind":"todo.create","data":[1]})"),
                        mapped(), {}),
          RejectCode::invalid_payload, "field '/data' must be a JSON object");
  refused(parse_command(record_raw(R"({"meta":{"request_id":"k"},"tenant_id":"t","kind":"todo.create"})"),
                        mapped(), {}),
          RejectCode::invalid_payload, "field '/data' is missing");
  refused(parse_command(record_raw(full, {"o", 0, 0},
                                   {header("idempotency-key", "a"), header("Idempotency-Key", "b")}),
                        mapped(), {}),
          RejectCode::key_mismatch, "more than once");
  refused(parse_command(record_raw(full, {"o", 0, 0}, {header("event-type", "nope")}), mapped(), {}),
          RejectCode::unknown_type, "'nope' is not configured");
}

TEST(MappedInputTest, NaturalKeyAppliesWhenNoPlaceHasAKey) {
  const auto command = accepted(parse_command(
      record_raw(R"({"tenant_id":"t","kind":"conversation.create","data":{"context_type":"a","context_id":"b"}})"),
      mapped(), {}));
  EXPECT_TRUE(command.natural_key);
}

// --- CloudEvents -----------------------------------------------------------------------------

const CommandCatalog& cloudevents() {
  static const auto instance = catalog_with(R"(
input:
  format: cloudevents
  types: {com.example.todo.created: todo.create}
)");
  return instance;
}

InboundRecord binary_event(std::string id, std::string source, std::string type, std::string data,
                           std::vector<RecordHeader> extra = {}) {
  std::vector<RecordHeader> headers = {header("ce_specversion", "1.0"), header("ce_id", id),
                                       header("ce_source", source), header("ce_type", type)};
  headers.insert(headers.end(), extra.begin(), extra.end());
  return record_raw(std::move(data), {"events", 0, 0}, std::move(headers));
}

InboundRecord structured_event(std::string body) {
  return record_raw(std::move(body), {"events", 0, 1},
                    {header("content-type", "application/cloudevents+json; charset=utf-8")});
}

TEST(CloudEventsInputTest, BinaryAndStructuredModeOfOneEventAreTheSameCommand) {
  const auto binary = accepted(parse_command(
      binary_event("e-1", "/orders", "com.example.todo.created", R"({"title":"x","n":1.50})",
                   {header("content-type", "application/json")}),
      cloudevents(), {}));
  const auto structured = accepted(parse_command(
      structured_event(R"({"specversion":"1.0","id":"e-1","source":"/orders","type":"com.example.todo.created",
                          "time":"2026-12-02T10:00:00Z","datacontenttype":"application/json","data":{"n":1.50,"title":"x"}})"),
      cloudevents(), {}));
  EXPECT_EQ(binary.idempotency_key, "e-1");
  EXPECT_EQ(binary.scope, "/orders");
  EXPECT_EQ(binary.type->name, "todo.create");
  EXPECT_EQ(binary.idempotency_key, structured.idempotency_key);
  EXPECT_EQ(binary.scope, structured.scope);
  EXPECT_EQ(binary.fingerprint, structured.fingerprint);  // `time` never makes a retry differ
  ASSERT_TRUE(binary.cloudevent);
  EXPECT_EQ(*binary.cloudevent, (CloudEventIdentity{"e-1", "/orders", "com.example.todo.created"}));
  EXPECT_EQ(binary.cloudevent, structured.cloudevent);
}

TEST(CloudEventsInputTest, EveryRejectionNamesTheAttribute) {
  refused(parse_command(record_raw(R"({"title":"x"})"), cloudevents(), {}), RejectCode::invalid_event,
          "not a CloudEvent");
  refused(parse_command(structured_event(R"({"specversion":"0.3","id":"e","source":"s","type":"todo.create","data":{}})"),
                        cloudevents(), {}),
          RejectCode::invalid_event, "specversion '0.3'");
  for (const std::string missing : {"id", "source", "type"}) {
    nlohmann::json event = {{"specversion", "1.0"}, {"id", "e"}, {"source", "s"},
                            {"type", "todo.create"}, {"data", {{"title", "x"}}}};
    event.erase(missing);
    const auto rejected = refused(parse_command(structured_event(event.dump()), cloudevents(), {}),
                                  RejectCode::invalid_event, "'" + missing + "' is missing");
    ASSERT_TRUE(rejected.cloudevent);  // what could be read is kept for the result
  }
  refused(parse_command(structured_event(R"({"specversion":"1.0","id":"e","source":"s","type":"todo.create","data_base64":"eyJ9"})"),
                        cloudevents(), {}),
          RejectCode::invalid_payload, "data_base64");
  refused(parse_command(binary_event("e", "s", "todo.create", R"({"a":1})", {header("content-type", "text/plain")}),
                        cloudevents(), {}),
          RejectCode::invalid_payload, "text/plain");
  refused(parse_command(binary_event("e", "s", "todo.create", "[1,2]"), cloudevents(), {}),
          RejectCode::invalid_payload, "data");
  refused(parse_command(binary_event(std::string(256, 'i'), "s", "todo.create", R"({"title":"x"})"),
                        cloudevents(), {}),
          RejectCode::invalid_key, "ce_id");
  refused(parse_command(binary_event("e", "s", "com.other", R"({"title":"x"})"), cloudevents(), {}),
          RejectCode::unknown_type, "com.other");
}

TEST(CloudEventsInputTest, TheSameIdFromTwoSourcesIsTwoCommands) {
  const auto a = accepted(parse_command(binary_event("e-1", "/a", "todo.create", R"({"title":"x"})"),
                                        cloudevents(), {}));
  const auto b = accepted(parse_command(binary_event("e-1", "/b", "todo.create", R"({"title":"x"})"),
                                        cloudevents(), {}));
  EXPECT_NE(a.scope, b.scope);
}

TEST(CloudEventsInputTest, TheResultIsACloudEventNamingTheOneItAnswers) {
  CommandResult result;
  result.status = Status::created;
  result.scope = "/orders";
  result.idempotency_key = "e-1";
  result.type = "todo.create";
  result.source = {"events", 2, 41};
  result.cloudevent = CloudEventIdentity{"e-1", "/orders", "com.example.todo.created"};
  const auto record = make_result_record(result, "events.results", {1 << 20, false});
  auto header_value = [&](std::string_view name) {
    const auto* header = record.find_header(name);
    return header ? header->value.value_or("<null>") : std::string("<missing>");
  };
  EXPECT_EQ(header_value("ce_specversion"), "1.0");
  EXPECT_EQ(header_value("ce_id"), "events:2:41");
  EXPECT_EQ(header_value("ce_source"), "dedup-worker");
  EXPECT_EQ(header_value("ce_type"), "dedup.result");
  EXPECT_EQ(header_value("ce_subject"), "e-1");
  const auto document = nlohmann::json::parse(*record.value);
  EXPECT_EQ(document["cloudevent"]["type"], "com.example.todo.created");
  EXPECT_EQ(document["cloudevent"]["id"], "e-1");
}

}  // namespace
}  // namespace dedup
