// parse_command: every rule of the command envelope (SPEC §1), one case at a time.
#include "dedup/command.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <string>
#include <variant>
#include <vector>

#include "dedup/config.hpp"
#include "dedup/fingerprint.hpp"
#include "dedup/result.hpp"
#include "support/records.hpp"

namespace dedup {
namespace {

using json = nlohmann::json;
using test::command_body;
using test::header;
using test::record;
using test::record_raw;

constexpr std::string_view kCatalogYaml = R"(
commands:
  todo.create:
    table: public.todos
  appointment.create:
    sql: INSERT INTO appointments (a) SELECT a FROM jsonb_to_record($1) AS x(a int) RETURNING *
  conversation.create:
    table: conversations
    key_from: [context_type, context_id, created_by]
)";

const CommandCatalog& catalog() {
  static const CommandCatalog instance = CommandCatalog::from_yaml(kCatalogYaml);
  return instance;
}

// A valid todo.create body; cases change or erase one field.
json valid_body() { return command_body("k-1", "org-1", "todo.create", {{"title", "Buy milk"}}); }

json with(json body, const std::string& field, json value) {
  body[field] = std::move(value);
  return body;
}

json without(json body, const std::string& field) {
  body.erase(field);
  return body;
}

json conversation_payload() {
  return {{"context_type", "ticket"}, {"context_id", 42}, {"created_by", "u-7"}, {"title", "Hi"}};
}

// A conversation.create body without a key: the natural key applies.
json keyless_conversation(json payload = conversation_payload()) {
  return without(command_body("unused", "org-1", "conversation.create", std::move(payload)),
                 "idempotency_key");
}

ParsedCommand parse(const InboundRecord& input, const ParseOptions& options = {}) {
  return parse_command(input, catalog(), options);
}

Command expect_command(const ParsedCommand& parsed) {
  if (const auto* rejected = std::get_if<RejectedCommand>(&parsed)) {
    ADD_FAILURE() << "rejected: " << to_string(rejected->rejection.code) << ": "
                  << rejected->rejection.message;
    return {};
  }
  return std::get<Command>(parsed);
}

RejectedCommand expect_rejected(const ParsedCommand& parsed) {
  if (!std::holds_alternative<RejectedCommand>(parsed)) {
    ADD_FAILURE() << "accepted, expected a rejection";
    return {};
  }
  return std::get<RejectedCommand>(parsed);
}

// --- rejections, table-driven ------------------------------------------------------------------

struct RejectCase {
  std::string name;
  InboundRecord input;
  RejectCode code;
  std::vector<std::string> message_names;  // substrings the message must contain (the field)
  ParseOptions options = {};

  friend void PrintTo(const RejectCase& c, std::ostream* os) { *os << c.name; }
};

class RejectTest : public ::testing::TestWithParam<RejectCase> {};

TEST_P(RejectTest, RejectsWithCodeAndNamesTheField) {
  const auto& c = GetParam();
  const auto rejected = expect_rejected(parse(c.input, c.options));
  EXPECT_EQ(to_string(rejected.rejection.code), to_string(c.code)) << rejected.rejection.message;
  for (const auto& name : c.message_names) {
    EXPECT_NE(rejected.rejection.message.find(name), std::string::npos)
        << "message does not name '" << name << "': " << rejected.rejection.message;
  }
  EXPECT_EQ(rejected.source, c.input.source);
}

std::vector<RejectCase> value_cases() {
  return {
      {"NullValue", record_raw(std::nullopt), RejectCode::invalid_json, {"value"}},
      {"EmptyValue", record_raw(""), RejectCode::invalid_json, {"JSON"}},
      {"BadJson", record_raw(R"({"idempotency_key": "k-1",)"), RejectCode::invalid_json, {"JSON"}},
      {"TrailingGarbage", record_raw(R"({"a":1} x)"), RejectCode::invalid_json, {"JSON"}},
      {"InvalidUtf8",
       record_raw("{\"idempotency_key\":\"k\xff\"}"),
       RejectCode::invalid_json,
       {"JSON"}},
      // Nesting is bounded (serialization recurses per level): 65 levels are refused...
      {"NestingTooDeep",
       record_raw(R"({"idempotency_key":"k-1","scope":"org-1","type":"todo.create","payload":{"n":)" +
                  std::string(64, '[') + std::string(64, ']') + "}}"),
       RejectCode::invalid_json,
       {"nesting", "64"}},
      {"ArrayValue",
       record_raw(R"([{"idempotency_key":"k-1"}])"),
       RejectCode::not_an_object,
       {"array"}},
      {"StringValue", record_raw(R"("k-1")"), RejectCode::not_an_object, {"string"}},
      {"NumberValue", record_raw("42"), RejectCode::not_an_object, {"number"}},
      {"NullJsonValue", record_raw("null"), RejectCode::not_an_object, {"null"}},
  };
}

std::vector<RejectCase> key_cases() {
  const auto body_key = [](json key) {
    return record(with(valid_body(), "idempotency_key", std::move(key)));
  };
  const auto header_key = [](std::string key) {
    return record(without(valid_body(), "idempotency_key"), {"commands", 0, 0},
                  {header("idempotency-key", std::move(key))});
  };
  return {
      {"KeyEmpty", body_key(""), RejectCode::invalid_key, {"idempotency_key", "empty"}},
      {"Key256Chars",
       body_key(std::string(256, 'k')),
       RejectCode::invalid_key,
       {"idempotency_key", "256"}},
      {"KeyNewline", body_key("k\n1"), RejectCode::invalid_key, {"idempotency_key"}},
      {"KeyTab", body_key("k\t1"), RejectCode::invalid_key, {"idempotency_key"}},
      {"KeyDel",
       body_key("k\x7f"
                "1"),
       RejectCode::invalid_key,
       {"idempotency_key"}},
      {"KeyNonAscii", body_key("clé"), RejectCode::invalid_key, {"idempotency_key"}},
      {"KeyLeadingSpace",
       body_key(" k-1"),
       RejectCode::invalid_key,
       {"idempotency_key", "whitespace"}},
      {"KeyTrailingSpace",
       body_key("k-1 "),
       RejectCode::invalid_key,
       {"idempotency_key", "whitespace"}},
      {"KeyNumber", body_key(42), RejectCode::invalid_key, {"idempotency_key", "string"}},
      {"KeyObject",
       body_key(json::object()),
       RejectCode::invalid_key,
       {"idempotency_key", "string"}},
      {"KeyBool", body_key(true), RejectCode::invalid_key, {"idempotency_key", "string"}},
      {"HeaderKeyEmpty", header_key(""), RejectCode::invalid_key, {"idempotency-key", "empty"}},
      {"HeaderKeyNonAscii", header_key("k\xc3\xa9"), RejectCode::invalid_key, {"idempotency-key"}},
      {"HeaderKeyTrailingSpace", header_key("k-1 "), RejectCode::invalid_key, {"idempotency-key"}},
      {"KeyMismatch",
       record(valid_body(), {"commands", 0, 0}, {header("idempotency-key", "k-2")}),
       RejectCode::key_mismatch,
       {"idempotency_key", "idempotency-key"}},
      {"MissingKeyWithoutKeyFrom",
       record(without(valid_body(), "idempotency_key")),
       RejectCode::missing_key,
       {"idempotency_key", "idempotency-key", "todo.create"}},
      {"NullKeyWithoutKeyFrom",
       record(with(valid_body(), "idempotency_key", nullptr)),
       RejectCode::missing_key,
       {"idempotency_key"}},
  };
}

std::vector<RejectCase> scope_cases() {
  const auto body_scope = [](json scope) {
    return record(with(valid_body(), "scope", std::move(scope)));
  };
  const auto header_scope = [](std::string scope) {
    return record(without(valid_body(), "scope"), {"commands", 0, 0},
                  {header("idempotency-scope", std::move(scope))});
  };
  std::string scope_256;
  for (int i = 0; i < 256; ++i) scope_256 += "é";
  return {
      {"ScopeEmpty", body_scope(""), RejectCode::invalid_scope, {"scope", "empty"}},
      {"Scope256Codepoints", body_scope(scope_256), RejectCode::invalid_scope, {"scope", "256"}},
      {"ScopeNewline", body_scope("org\n1"), RejectCode::invalid_scope, {"scope"}},
      {"ScopeDel", body_scope("org\x7f"), RejectCode::invalid_scope, {"scope"}},
      {"ScopeTrailingSpace",
       body_scope("org-1 "),
       RejectCode::invalid_scope,
       {"scope", "whitespace"}},
      {"ScopeNumber", body_scope(7), RejectCode::invalid_scope, {"scope", "string"}},
      {"HeaderScopeInvalidUtf8",
       header_scope("org\xff"),
       RejectCode::invalid_scope,
       {"idempotency-scope", "UTF-8"}},
      {"HeaderScopeTruncatedUtf8",
       header_scope("org\xc3"),
       RejectCode::invalid_scope,
       {"idempotency-scope", "UTF-8"}},
      // Not UTF-8 either, though each byte looks like a lead or continuation byte: an overlong '/'
      // (C0 AF), a UTF-16 surrogate (ED A0 80), a code point above U+10FFFF (F4 90 80 80). Postgres
      // refuses such text and nlohmann::json cannot serialize it in the result.
      {"HeaderScopeOverlongUtf8",
       header_scope("org\xc0\xaf"),
       RejectCode::invalid_scope,
       {"idempotency-scope", "UTF-8"}},
      {"HeaderScopeSurrogateUtf8",
       header_scope("org\xed\xa0\x80"),
       RejectCode::invalid_scope,
       {"idempotency-scope", "UTF-8"}},
      {"HeaderScopeBeyondUnicode",
       header_scope("org\xf4\x90\x80\x80"),
       RejectCode::invalid_scope,
       {"idempotency-scope", "UTF-8"}},
      {"ScopeMismatch",
       record(valid_body(), {"commands", 0, 0}, {header("idempotency-scope", "org-2")}),
       RejectCode::scope_mismatch,
       {"scope", "idempotency-scope"}},
      {"MissingScopeWithoutDefault",
       record(without(valid_body(), "scope")),
       RejectCode::missing_scope,
       {"scope", "--default-scope"}},
  };
}

std::vector<RejectCase> type_and_payload_cases() {
  const auto payload = [](json value) {
    return record(with(valid_body(), "payload", std::move(value)));
  };
  return {
      {"MissingType", record(without(valid_body(), "type")), RejectCode::missing_type, {"type"}},
      {"NullType", record(with(valid_body(), "type", nullptr)), RejectCode::missing_type, {"type"}},
      {"NumberType",
       record(with(valid_body(), "type", 3)),
       RejectCode::unknown_type,
       {"type", "string"}},
      {"UnknownType",
       record(with(valid_body(), "type", "todo.delete")),
       RejectCode::unknown_type,
       {"todo.delete"}},
      {"TypeCaseMatters",
       record(with(valid_body(), "type", "Todo.Create")),
       RejectCode::unknown_type,
       {"Todo.Create"}},
      {"MissingPayload",
       record(without(valid_body(), "payload")),
       RejectCode::invalid_payload,
       {"payload"}},
      {"NullPayload", payload(nullptr), RejectCode::invalid_payload, {"payload"}},
      {"ArrayPayload",
       payload(json::array({1})),
       RejectCode::invalid_payload,
       {"payload", "array"}},
      {"StringPayload", payload("title"), RejectCode::invalid_payload, {"payload", "string"}},
      {"TableModeEmptyPayload", payload(json::object()), RejectCode::invalid_payload, {"payload"}},
      {"TableModeHyphenField",
       payload({{"title", "x"}, {"due-date", "x"}}),
       RejectCode::invalid_payload,
       {"due-date"}},
      {"TableModeQuoteField", payload({{"a\"b", 1}}), RejectCode::invalid_payload, {"a\"b"}},
      {"TableModeDigitFirstField", payload({{"1st", 1}}), RejectCode::invalid_payload, {"1st"}},
      {"TableModeEmptyField",
       payload({{"", 1}}),
       RejectCode::invalid_payload,
       {"payload field ''"}},
      {"TableModeSqlField",
       payload({{"a; drop table todos", 1}}),
       RejectCode::invalid_payload,
       {"a; drop table todos"}},
      {"TableModeLongField",
       payload({{std::string(64, 'c'), 1}}),
       RejectCode::invalid_payload,
       {std::string(64, 'c')}},
      {"NaturalKeyFieldMissing",
       record(keyless_conversation(without(conversation_payload(), "created_by"))),
       RejectCode::missing_key,
       {"created_by", "conversation.create"}},
      {"NaturalKeyFieldNull",
       record(keyless_conversation(with(conversation_payload(), "context_id", nullptr))),
       RejectCode::missing_key,
       {"context_id"}},
  };
}

INSTANTIATE_TEST_SUITE_P(Value, RejectTest, ::testing::ValuesIn(value_cases()),
                         [](const auto& info) { return info.param.name; });
INSTANTIATE_TEST_SUITE_P(Key, RejectTest, ::testing::ValuesIn(key_cases()),
                         [](const auto& info) { return info.param.name; });
INSTANTIATE_TEST_SUITE_P(Scope, RejectTest, ::testing::ValuesIn(scope_cases()),
                         [](const auto& info) { return info.param.name; });
INSTANTIATE_TEST_SUITE_P(TypeAndPayload, RejectTest, ::testing::ValuesIn(type_and_payload_cases()),
                         [](const auto& info) { return info.param.name; });

// --- size limit --------------------------------------------------------------------------------

// A valid body serialized to exactly `bytes` bytes (padding the title).
std::string body_of_size(std::size_t bytes) {
  auto body = valid_body();
  body["payload"]["title"] = "";
  const auto base = body.dump().size();
  body["payload"]["title"] = std::string(bytes - base, 'x');
  auto text = body.dump();
  EXPECT_EQ(text.size(), bytes);
  return text;
}

TEST(ParseCommandSizeTest, ValueOfExactlyMaxBytesIsAccepted) {
  ParseOptions options;
  options.max_message_bytes = 200;
  expect_command(parse(record_raw(body_of_size(200)), options));
}

TEST(ParseCommandSizeTest, ValueOneByteOverMaxIsRejectedAsTooLarge) {
  ParseOptions options;
  options.max_message_bytes = 200;
  const auto rejected = expect_rejected(parse(record_raw(body_of_size(201)), options));
  EXPECT_EQ(rejected.rejection.code, RejectCode::too_large);
  EXPECT_NE(rejected.rejection.message.find("201"), std::string::npos)
      << rejected.rejection.message;
  EXPECT_NE(rejected.rejection.message.find("200"), std::string::npos)
      << rejected.rejection.message;
}

TEST(ParseCommandSizeTest, DefaultLimitIsOneMebibyte) {
  EXPECT_EQ(ParseOptions{}.max_message_bytes, 1024u * 1024u);
  const auto rejected = expect_rejected(parse(record_raw(body_of_size(1024 * 1024 + 1))));
  EXPECT_EQ(rejected.rejection.code, RejectCode::too_large);
  expect_command(parse(record_raw(body_of_size(1024 * 1024))));
}

// A value within the size limit can nest arrays ~500,000 deep. Parsing it must not crash the worker
// (a stack overflow would be a poison pill: the record is redelivered after every restart). Either
// outcome is acceptable, a rejection or a command; the child process must simply survive.
TEST(ParseCommandDeathTest, DeeplyNestedPayloadWithinSizeLimitDoesNotCrash) {
  const std::size_t depth = 400'000;
  auto text = valid_body().dump();
  const std::string nested = std::string(depth, '[') + std::string(depth, ']');
  text.replace(text.find(R"("Buy milk")"), 10, nested);
  ASSERT_LE(text.size(), ParseOptions{}.max_message_bytes);
  EXPECT_EXIT(
      {
        const auto parsed = parse(record_raw(text));
        if (const auto* rejected = std::get_if<RejectedCommand>(&parsed)) {
          (void)make_rejected_result(*rejected, Timestamp{}).to_json().dump();
        }
        std::exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

// --- accepted commands -------------------------------------------------------------------------

TEST(ParseCommandTest, ValidCommandCarriesEveryField) {
  const SourcePosition position{"commands", 3, 1234};
  const auto command = expect_command(parse(record(valid_body(), position)));
  EXPECT_EQ(command.source, position);
  EXPECT_EQ(command.scope, "org-1");
  EXPECT_EQ(command.idempotency_key, "k-1");
  EXPECT_EQ(command.type, catalog().find("todo.create"));
  EXPECT_EQ(command.payload, json({{"title", "Buy milk"}}));
  EXPECT_EQ(command.fingerprint, command_fingerprint("todo.create", json({{"title", "Buy milk"}})));
  EXPECT_FALSE(command.natural_key);
}

TEST(ParseCommandTest, KeyOf255PrintableCharactersIsAccepted) {
  std::string key;
  for (int i = 0; i < 255; ++i) key += static_cast<char>(0x20 + 1 + i % 94);  // '!'..'~'
  EXPECT_EQ(
      expect_command(parse(record(with(valid_body(), "idempotency_key", key)))).idempotency_key,
      key);
}

TEST(ParseCommandTest, KeyWithInnerSpaceIsAccepted) {
  EXPECT_EQ(
      expect_command(parse(record(with(valid_body(), "idempotency_key", "a b")))).idempotency_key,
      "a b");
}

TEST(ParseCommandTest, HeaderOnlyKeyIsAccepted) {
  const auto command =
      expect_command(parse(record(without(valid_body(), "idempotency_key"), {"commands", 0, 0},
                                  {header("idempotency-key", "k-h")})));
  EXPECT_EQ(command.idempotency_key, "k-h");
  EXPECT_FALSE(command.natural_key);
}

TEST(ParseCommandTest, EqualBodyAndHeaderKeysAreAccepted) {
  const auto command = expect_command(
      parse(record(valid_body(), {"commands", 0, 0}, {header("idempotency-key", "k-1")})));
  EXPECT_EQ(command.idempotency_key, "k-1");
}

TEST(ParseCommandTest, NullBodyKeyFallsBackToHeader) {
  const auto command =
      expect_command(parse(record(with(valid_body(), "idempotency_key", nullptr),
                                  {"commands", 0, 0}, {header("idempotency-key", "k-h")})));
  EXPECT_EQ(command.idempotency_key, "k-h");
}

TEST(ParseCommandTest, HeaderWithNullValueIsIgnored) {
  const auto command = expect_command(
      parse(record(valid_body(), {"commands", 0, 0}, {header("idempotency-key", std::nullopt)})));
  EXPECT_EQ(command.idempotency_key, "k-1");
}

TEST(ParseCommandTest, HeaderOnlyScopeIsAccepted) {
  const auto command = expect_command(parse(record(
      without(valid_body(), "scope"), {"commands", 0, 0}, {header("idempotency-scope", "org-h")})));
  EXPECT_EQ(command.scope, "org-h");
}

TEST(ParseCommandTest, EqualBodyAndHeaderScopesAreAccepted) {
  const auto command = expect_command(
      parse(record(valid_body(), {"commands", 0, 0}, {header("idempotency-scope", "org-1")})));
  EXPECT_EQ(command.scope, "org-1");
}

TEST(ParseCommandTest, DefaultScopeIsUsedWhenScopeIsMissing) {
  ParseOptions options;
  options.default_scope = "default-org";
  EXPECT_EQ(expect_command(parse(record(without(valid_body(), "scope")), options)).scope,
            "default-org");
}

TEST(ParseCommandTest, SentScopeWinsOverDefaultScope) {
  ParseOptions options;
  options.default_scope = "default-org";
  EXPECT_EQ(expect_command(parse(record(valid_body()), options)).scope, "org-1");
}

TEST(ParseCommandTest, ScopeOf255MultibyteCharactersIsAccepted) {
  std::string scope;
  for (int i = 0; i < 255; ++i) scope += "é";  // 510 bytes, 255 characters
  EXPECT_EQ(expect_command(parse(record(with(valid_body(), "scope", scope)))).scope, scope);
}

TEST(ParseCommandTest, SqlModeAcceptsAnyFieldNamesAndAnEmptyPayload) {
  const auto odd = expect_command(parse(
      record(command_body("k-1", "org-1", "appointment.create", {{"due-date", 1}, {"", 2}}))));
  EXPECT_EQ(odd.payload, json({{"due-date", 1}, {"", 2}}));
  const auto empty = expect_command(
      parse(record(command_body("k-1", "org-1", "appointment.create", json::object()))));
  EXPECT_EQ(empty.payload, json::object());
}

TEST(ParseCommandTest, TableModeAccepts63CharacterFieldName) {
  const std::string field(63, 'c');
  expect_command(parse(record(with(valid_body(), "payload", {{field, 1}}))));
}

TEST(ParseCommandTest, UnknownEnvelopeFieldsAreIgnored) {
  expect_command(parse(record(with(valid_body(), "trace_id", "abc"))));
}

// --- natural key (key_from) --------------------------------------------------------------------

TEST(NaturalKeyTest, KeyIsDerivedWhenNoKeyIsSent) {
  const auto command = expect_command(parse(record(keyless_conversation())));
  EXPECT_TRUE(command.natural_key);
  EXPECT_EQ(command.idempotency_key.rfind("nk:", 0), 0u) << command.idempotency_key;
  EXPECT_EQ(command.idempotency_key.size(), 3u + 64u);
  EXPECT_EQ(command.scope, "org-1");
}

TEST(NaturalKeyTest, KeyIsHashOfTypeAndKeyFromValuesInConfigOrder) {
  const auto command = expect_command(parse(record(keyless_conversation())));
  const json material = json::array({"conversation.create", "ticket", 42, "u-7"});
  EXPECT_EQ(command.idempotency_key, "nk:" + to_hex(sha256(canonical_json(material))));
}

TEST(NaturalKeyTest, SamePayloadGivesSameKey) {
  const auto one = expect_command(parse(record(keyless_conversation(), {"commands", 0, 1})));
  const auto two = expect_command(parse(record(keyless_conversation(), {"commands", 1, 7})));
  EXPECT_EQ(one.idempotency_key, two.idempotency_key);
}

TEST(NaturalKeyTest, KeyOrderOfPayloadDoesNotMatter) {
  // The body text is written by hand: nlohmann::json would sort the keys before we send them.
  const std::string text =
      R"({"scope":"org-1","type":"conversation.create","payload":{"title":"Hi",)"
      R"("created_by":"u-7","context_id":42,"context_type":"ticket"}})";
  EXPECT_EQ(expect_command(parse(record_raw(text))).idempotency_key,
            expect_command(parse(record(keyless_conversation()))).idempotency_key);
}

TEST(NaturalKeyTest, OtherKeyFromValueGivesOtherKey) {
  const auto base = expect_command(parse(record(keyless_conversation())));
  for (const char* field : {"context_type", "context_id", "created_by"}) {
    const auto changed = expect_command(
        parse(record(keyless_conversation(with(conversation_payload(), field, "other")))));
    EXPECT_NE(changed.idempotency_key, base.idempotency_key) << field;
  }
}

TEST(NaturalKeyTest, ValueTypeOfKeyFromFieldMatters) {
  const auto number = expect_command(parse(record(keyless_conversation())));
  const auto text = expect_command(
      parse(record(keyless_conversation(with(conversation_payload(), "context_id", "42")))));
  EXPECT_NE(number.idempotency_key, text.idempotency_key);
}

TEST(NaturalKeyTest, FieldsOutsideKeyFromDoNotChangeTheKey) {
  const auto base = expect_command(parse(record(keyless_conversation())));
  const auto retitled = expect_command(
      parse(record(keyless_conversation(with(conversation_payload(), "title", "Hello")))));
  EXPECT_EQ(retitled.idempotency_key, base.idempotency_key);
  EXPECT_NE(retitled.fingerprint, base.fingerprint);  // but it is not the same command
}

TEST(NaturalKeyTest, ClientKeyInBodyWinsOverKeyFrom) {
  auto body = keyless_conversation();
  body["idempotency_key"] = "client-key";
  const auto command = expect_command(parse(record(body)));
  EXPECT_EQ(command.idempotency_key, "client-key");
  EXPECT_FALSE(command.natural_key);
}

TEST(NaturalKeyTest, ClientKeyInHeaderWinsOverKeyFrom) {
  const auto command = expect_command(parse(
      record(keyless_conversation(), {"commands", 0, 0}, {header("idempotency-key", "h-key")})));
  EXPECT_EQ(command.idempotency_key, "h-key");
  EXPECT_FALSE(command.natural_key);
}

TEST(NaturalKeyTest, DeriveNaturalKeyNamesTheFirstMissingField) {
  const auto* type = catalog().find("conversation.create");
  ASSERT_NE(type, nullptr);
  const auto derived = derive_natural_key(*type, json({{"created_by", "u"}}));
  ASSERT_TRUE(std::holds_alternative<Rejection>(derived));
  EXPECT_EQ(std::get<Rejection>(derived).code, RejectCode::missing_key);
  EXPECT_NE(std::get<Rejection>(derived).message.find("'context_type'"), std::string::npos)
      << std::get<Rejection>(derived).message;
}

// --- what a rejected command keeps -------------------------------------------------------------

TEST(RejectedCommandTest, KeepsKeyScopeAndTypeThatCouldBeRead) {
  const SourcePosition position{"commands", 2, 77};
  const auto rejected =
      expect_rejected(parse(record(with(valid_body(), "type", "todo.delete"), position)));
  EXPECT_EQ(rejected.rejection.code, RejectCode::unknown_type);
  EXPECT_EQ(rejected.idempotency_key, "k-1");
  EXPECT_EQ(rejected.scope, "org-1");
  EXPECT_EQ(rejected.type, "todo.delete");
  EXPECT_FALSE(rejected.missing_key);
  EXPECT_EQ(rejected.source, position);
}

TEST(RejectedCommandTest, KeepsHeaderKeyAndScope) {
  auto body = without(without(valid_body(), "idempotency_key"), "scope");
  const auto rejected = expect_rejected(
      parse(record(without(body, "payload"), {"commands", 0, 0},
                   {header("idempotency-key", "k-h"), header("idempotency-scope", "org-h")})));
  EXPECT_EQ(rejected.rejection.code, RejectCode::invalid_payload);
  EXPECT_EQ(rejected.idempotency_key, "k-h");
  EXPECT_EQ(rejected.scope, "org-h");
  EXPECT_EQ(rejected.type, "todo.create");
}

TEST(RejectedCommandTest, InvalidKeyIsNotKept) {
  const auto rejected =
      expect_rejected(parse(record(with(valid_body(), "idempotency_key", "k\n"))));
  EXPECT_EQ(rejected.rejection.code, RejectCode::invalid_key);
  EXPECT_EQ(rejected.idempotency_key, std::nullopt);
  EXPECT_EQ(rejected.scope, "org-1");
  EXPECT_EQ(rejected.type, "todo.create");
  EXPECT_FALSE(rejected.missing_key);  // a key was sent, it was just invalid
}

TEST(RejectedCommandTest, InvalidScopeIsNotKept) {
  const auto rejected = expect_rejected(parse(record(with(valid_body(), "scope", ""))));
  EXPECT_EQ(rejected.rejection.code, RejectCode::invalid_scope);
  EXPECT_EQ(rejected.scope, std::nullopt);
  EXPECT_EQ(rejected.idempotency_key, "k-1");
}

// The default scope stands in for a *missing* scope. A record that sent an invalid (or
// contradictory) scope did not ask for the default tenant, and its result must not be published
// under "<default-scope>/<key>".
TEST(RejectedCommandTest, InvalidScopeIsNotReplacedByDefaultScope) {
  ParseOptions options;
  options.default_scope = "default-org";
  const auto rejected = expect_rejected(parse(record(with(valid_body(), "scope", "")), options));
  EXPECT_EQ(rejected.rejection.code, RejectCode::invalid_scope);
  EXPECT_EQ(rejected.scope, std::nullopt);
}

TEST(RejectedCommandTest, MismatchedScopeIsNotReplacedByDefaultScope) {
  ParseOptions options;
  options.default_scope = "default-org";
  const auto rejected = expect_rejected(parse(
      record(valid_body(), {"commands", 0, 0}, {header("idempotency-scope", "org-2")}), options));
  EXPECT_EQ(rejected.rejection.code, RejectCode::scope_mismatch);
  EXPECT_EQ(rejected.scope, std::nullopt);
}

TEST(RejectedCommandTest, DefaultScopeIsKeptWhenScopeIsMissing) {
  ParseOptions options;
  options.default_scope = "default-org";
  const auto rejected =
      expect_rejected(parse(record(with(without(valid_body(), "scope"), "type", "nope")), options));
  EXPECT_EQ(rejected.rejection.code, RejectCode::unknown_type);
  EXPECT_EQ(rejected.scope, "default-org");
}

TEST(RejectedCommandTest, NonStringTypeIsNotKept) {
  const auto rejected = expect_rejected(parse(record(with(valid_body(), "type", 3))));
  EXPECT_EQ(rejected.type, std::nullopt);
  EXPECT_EQ(rejected.idempotency_key, "k-1");
}

TEST(RejectedCommandTest, NothingIsKeptFromInvalidJson) {
  const auto rejected = expect_rejected(parse(record_raw(R"({"idempotency_key":"k-1")")));
  EXPECT_EQ(rejected.idempotency_key, std::nullopt);
  EXPECT_EQ(rejected.scope, std::nullopt);
  EXPECT_EQ(rejected.type, std::nullopt);
}

TEST(RejectedCommandTest, MissingKeyFlagIsSetWhenNoKeyWasSent) {
  const auto rejected = expect_rejected(parse(record(without(valid_body(), "idempotency_key"))));
  EXPECT_TRUE(rejected.missing_key);
  EXPECT_EQ(rejected.idempotency_key, std::nullopt);
  EXPECT_EQ(rejected.type, "todo.create");
}

TEST(RejectedCommandTest, NaturalKeyFailureKeepsMissingKeyFlag) {
  const auto rejected = expect_rejected(
      parse(record(keyless_conversation(without(conversation_payload(), "context_id")))));
  EXPECT_EQ(rejected.rejection.code, RejectCode::missing_key);
  EXPECT_TRUE(rejected.missing_key);
  EXPECT_EQ(rejected.scope, "org-1");
  EXPECT_EQ(rejected.type, "conversation.create");
}

// --- stable codes ------------------------------------------------------------------------------

TEST(RejectCodeTest, EveryCodeHasItsDocumentedName) {
  const std::vector<std::pair<RejectCode, std::string_view>> names = {
      {RejectCode::too_large, "too_large"},
      {RejectCode::invalid_json, "invalid_json"},
      {RejectCode::not_an_object, "not_an_object"},
      {RejectCode::missing_key, "missing_key"},
      {RejectCode::invalid_key, "invalid_key"},
      {RejectCode::key_mismatch, "key_mismatch"},
      {RejectCode::missing_scope, "missing_scope"},
      {RejectCode::invalid_scope, "invalid_scope"},
      {RejectCode::scope_mismatch, "scope_mismatch"},
      {RejectCode::missing_type, "missing_type"},
      {RejectCode::unknown_type, "unknown_type"},
      {RejectCode::invalid_payload, "invalid_payload"},
  };
  for (const auto& [code, name] : names) EXPECT_EQ(to_string(code), name);
}

}  // namespace
}  // namespace dedup

namespace dedup {
namespace {

// Regression (issue 8, defect 3): "\u0000" in a text column failed the whole batch (22P05) and
// stopped the worker on every restart. Postgres can store no U+0000; refused here, naming where.
TEST(ParseCommandHostileTest, NulAnywhereInThePayloadIsRejected) {
  for (const std::string& payload : std::vector<std::string>{
           R"({"title":"a\u0000b"})", R"({"title":"x","tags":["ok","\u0000"]})",
        R"({"title":"x","meta":{"k\u0000":1}})"}) {
    SCOPED_TRACE(payload);
    const auto rejected = expect_rejected(parse(record_raw(
        R"({"idempotency_key":"k-1","scope":"org-1","type":"todo.create","payload":)" + payload +
        "}")));
    EXPECT_EQ(rejected.rejection.code, RejectCode::invalid_payload);
    EXPECT_NE(rejected.rejection.message.find("U+0000"), std::string::npos);
  }
  // Elsewhere in the envelope (an ignored field) it does no harm.
  expect_command(parse(record_raw(
      R"({"idempotency_key":"k-1","scope":"org-1","type":"todo.create","note":"\u0000","payload":{"title":"t"}})")));
}

// Issue 8, point 6: two idempotency-key headers with different values were resolved to the
// first, while other clients read the last. Repeats must agree.
TEST(ParseCommandHostileTest, RepeatedHeadersMustAgree) {
  auto body = without(valid_body(), "idempotency_key");
  auto rejected = expect_rejected(parse(
      record(body, {"commands", 0, 0}, {header("idempotency-key", "a"), header("idempotency-key", "b")})));
  EXPECT_EQ(rejected.rejection.code, RejectCode::key_mismatch);
  EXPECT_NE(rejected.rejection.message.find("more than once"), std::string::npos);

  auto scoped = without(valid_body(), "scope");
  rejected = expect_rejected(parse(record(
      scoped, {"commands", 0, 0}, {header("idempotency-scope", "x"), header("idempotency-scope", "y")})));
  EXPECT_EQ(rejected.rejection.code, RejectCode::scope_mismatch);

  const auto command = expect_command(parse(
      record(body, {"commands", 0, 0}, {header("idempotency-key", "a"), header("idempotency-key", "a")})));
  EXPECT_EQ(command.idempotency_key, "a");
  // A null-valued repeat does not count.
  expect_command(parse(record(body, {"commands", 0, 0},
                              {header("idempotency-key", std::nullopt), header("idempotency-key", "a")})));
}

// Regression (issue 8, defect 4): numbers are taken as written, for Postgres and the fingerprint.
TEST(ParseCommandHostileTest, NumbersAreKeptAsWritten) {
  const auto command = expect_command(parse(record_raw(
      R"({"idempotency_key":"k-1","scope":"org-1","type":"todo.create","payload":{"a":12345678901234567.89,"b":1e400,"c":1e-400,"d":100000000000000000001,"e":1e2}})")));
  EXPECT_EQ(command.canonical_payload,
            R"({"a":12345678901234567.89,"b":1e400,"c":1e-400,"d":100000000000000000001,"e":1e2})");
  const auto other = expect_command(parse(record_raw(
      R"({"idempotency_key":"k-1","scope":"org-1","type":"todo.create","payload":{"a":12345678901234567.80,"b":1e400,"c":1e-400,"d":100000000000000000001,"e":1e2}})")));
  EXPECT_NE(command.fingerprint, other.fingerprint);
}

TEST(ParseCommandHostileTest, MessagesQuotingInputAreBounded) {
  const std::string field(100000, 'f');
  const auto rejected = expect_rejected(parse(record_raw(
      R"({"idempotency_key":"k-1","scope":"org-1","type":"todo.create","payload":{")" + field +
      R"(-":1}})")));
  EXPECT_EQ(rejected.rejection.code, RejectCode::invalid_payload);
  EXPECT_LE(rejected.rejection.message.size(), kMaxRejectionMessageBytes);
}

}  // namespace
}  // namespace dedup
