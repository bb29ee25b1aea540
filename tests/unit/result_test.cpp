// The result document of SPEC §2, timestamps, and the stored-key decision table (resolve_stored).
#include "dedup/result.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "dedup/clock.hpp"
#include "dedup/command.hpp"
#include "dedup/config.hpp"
#include "dedup/json_text.hpp"
#include "dedup/key_store.hpp"
#include "support/records.hpp"

namespace dedup {
namespace {

using json = nlohmann::json;
using namespace std::chrono;
using namespace std::chrono_literals;

// 2026-11-22T10:00:00.123456Z
const Timestamp kFirst = sys_days{2026y / November / 22} + 10h + 123456us;
// 2026-11-22T10:05:30.000999Z
const Timestamp kLater = sys_days{2026y / November / 22} + 10h + 5min + 30s + 999us;

// --- format_timestamp --------------------------------------------------------------------------

struct TimestampCase {
  Timestamp time;
  std::string text;

  friend void PrintTo(const TimestampCase& c, std::ostream* os) { *os << c.text; }
};

class FormatTimestampTest : public ::testing::TestWithParam<TimestampCase> {};

TEST_P(FormatTimestampTest, IsRfc3339UtcWithTruncatedMilliseconds) {
  EXPECT_EQ(format_timestamp(GetParam().time), GetParam().text);
}

INSTANTIATE_TEST_SUITE_P(
    Times, FormatTimestampTest,
    ::testing::Values(
        TimestampCase{kFirst, "2026-11-22T10:00:00.123Z"},
        TimestampCase{sys_days{2026y / November / 22} + 10h + 999999us, "2026-11-22T10:00:00.999Z"},
        TimestampCase{sys_days{2026y / November / 22} + 10h + 999us, "2026-11-22T10:00:00.000Z"},
        TimestampCase{sys_days{2026y / January / 2} + 3h + 4min + 5s + 6ms,
                      "2026-01-02T03:04:05.006Z"},
        TimestampCase{sys_days{2024y / February / 29} + 23h + 59min + 59s + 500ms,
                      "2024-02-29T23:59:59.500Z"},
        TimestampCase{Timestamp{}, "1970-01-01T00:00:00.000Z"},
        TimestampCase{Timestamp{-1us}, "1969-12-31T23:59:59.999Z"}));

// Each thread reuses the last millisecond's text: alternating times, a change of microseconds only,
// and the epoch as a thread's very first call (the kept millisecond starts there) must each still
// come out as their own text.
TEST(FormatTimestamp, ReusedTextNeverOutlivesItsMillisecond) {
  std::vector<std::string> texts;
  std::thread([&] {
    texts.push_back(format_timestamp(Timestamp{}));
    texts.push_back(format_timestamp(kFirst));
    texts.push_back(format_timestamp(kLater));
    texts.push_back(format_timestamp(kFirst + 543us));  // .123999: kFirst's millisecond
    texts.push_back(format_timestamp(kFirst + 544us));  // .124000: the next one
    texts.push_back(format_timestamp(Timestamp{-1us}));
    std::string appended = "x";
    append_timestamp(appended, kLater);
    texts.push_back(appended);
  }).join();
  EXPECT_EQ(texts, (std::vector<std::string>{
                       "1970-01-01T00:00:00.000Z", "2026-11-22T10:00:00.123Z",
                       "2026-11-22T10:05:30.000Z", "2026-11-22T10:00:00.123Z",
                       "2026-11-22T10:00:00.124Z", "1969-12-31T23:59:59.999Z",
                       "x2026-11-22T10:05:30.000Z"}));
}

// --- to_json / record_key ----------------------------------------------------------------------

CommandResult created_result() {
  CommandResult result;
  result.status = Status::created;
  result.replayed = false;
  result.idempotency_key = "550e8400-e29b-41d4-a716-446655440000";
  result.scope = "org-123";
  result.type = "todo.create";
  result.entity = {{"id", 42}, {"title", "Buy milk"}, {"description", "From store"}};
  result.error = nullptr;
  result.first_processed_at = kFirst;
  result.processed_at = kFirst;
  result.source = {"commands", 3, 1234};
  return result;
}

TEST(CommandResultTest, CreatedDocumentIsExactlyTheSpecExample) {
  EXPECT_EQ(created_result().to_json(), json::parse(R"({
    "idempotency_key": "550e8400-e29b-41d4-a716-446655440000", "scope": "org-123", "type": "todo.create",
    "status": "created",
    "replayed": false,
    "entity": { "id": 42, "title": "Buy milk", "description": "From store" },
    "error": null,
    "first_processed_at": "2026-11-22T10:00:00.123Z",
    "processed_at": "2026-11-22T10:00:00.123Z",
    "source": { "topic": "commands", "partition": 3, "offset": 1234 }
  })"));
}

TEST(CommandResultTest, DuplicateDocumentCarriesOriginalTimeAndReplayed) {
  auto result = created_result();
  result.status = Status::duplicate;
  result.replayed = true;
  result.processed_at = kLater;
  result.source = {"commands", 0, 9};
  EXPECT_EQ(result.to_json(), json::parse(R"({
    "idempotency_key": "550e8400-e29b-41d4-a716-446655440000", "scope": "org-123", "type": "todo.create",
    "status": "duplicate",
    "replayed": true,
    "entity": { "id": 42, "title": "Buy milk", "description": "From store" },
    "error": null,
    "first_processed_at": "2026-11-22T10:00:00.123Z",
    "processed_at": "2026-11-22T10:05:30.000Z",
    "source": { "topic": "commands", "partition": 0, "offset": 9 }
  })"));
}

TEST(CommandResultTest, RejectedDocumentHasNullKeyScopeAndTypeWhenUnknown) {
  RejectedCommand rejected;
  rejected.source = {"commands", 1, 5};
  rejected.rejection = {RejectCode::invalid_json, "value is not valid JSON"};
  const auto result = make_rejected_result(rejected, kFirst);
  EXPECT_EQ(result.to_json(), json::parse(R"({
    "idempotency_key": null, "scope": null, "type": null,
    "status": "rejected",
    "replayed": false,
    "entity": null,
    "error": { "code": "invalid_json", "message": "value is not valid JSON" },
    "first_processed_at": null,
    "processed_at": "2026-11-22T10:00:00.123Z",
    "source": { "topic": "commands", "partition": 1, "offset": 5 }
  })"));
  EXPECT_EQ(result.record_key(), std::nullopt);
}

TEST(CommandResultTest, StatusNamesAreTheDocumentedOnes) {
  EXPECT_EQ(to_string(Status::created), "created");
  EXPECT_EQ(to_string(Status::duplicate), "duplicate");
  EXPECT_EQ(to_string(Status::key_reused), "key_reused");
  EXPECT_EQ(to_string(Status::conflict), "conflict");
  EXPECT_EQ(to_string(Status::rejected), "rejected");
}

TEST(CommandResultTest, RecordKeyIsScopeSlashKey) {
  EXPECT_EQ(created_result().record_key(), "org-123/550e8400-e29b-41d4-a716-446655440000");
}

TEST(CommandResultTest, RecordKeyIsNulloptWithoutScopeOrKey) {
  auto no_scope = created_result();
  no_scope.scope.reset();
  EXPECT_EQ(no_scope.record_key(), std::nullopt);
  auto no_key = created_result();
  no_key.idempotency_key.reset();
  EXPECT_EQ(no_key.record_key(), std::nullopt);
}

TEST(MakeRejectedResultTest, CopiesWhatWasReadAndTheRejection) {
  RejectedCommand rejected;
  rejected.source = {"commands", 2, 8};
  rejected.rejection = {RejectCode::unknown_type, "command type 'x' is not configured"};
  rejected.scope = "org-1";
  rejected.idempotency_key = "k-1";
  rejected.type = "x";
  rejected.missing_key = false;
  const auto result = make_rejected_result(rejected, kLater);
  EXPECT_EQ(result.status, Status::rejected);
  EXPECT_FALSE(result.replayed);
  EXPECT_EQ(result.scope, "org-1");
  EXPECT_EQ(result.idempotency_key, "k-1");
  EXPECT_EQ(result.type, "x");
  EXPECT_EQ(result.error,
            json({{"code", "unknown_type"}, {"message", "command type 'x' is not configured"}}));
  EXPECT_TRUE(result.entity.is_null());
  EXPECT_EQ(result.first_processed_at, kLater);
  EXPECT_EQ(result.processed_at, kLater);
  EXPECT_EQ(result.source, rejected.source);
  ASSERT_TRUE(result.rejection.has_value());
  EXPECT_EQ(result.rejection->code, RejectCode::unknown_type);
  EXPECT_EQ(result.record_key(), "org-1/k-1");
}

// The document built as a value, member by member from SPEC §2, and written by write_json: the
// oracle for to_json_text(), which writes the same text straight from the fields.
json document_as_value(const CommandResult& r, const OmittedEntity* omitted) {
  auto optional_string = [](const std::optional<std::string>& v) { return v ? json(*v) : json(nullptr); };
  json document{
      {"idempotency_key", optional_string(r.idempotency_key)},
      {"scope", optional_string(r.scope)},
      {"type", optional_string(r.type)},
      {"status", to_string(r.status)},
      {"replayed", r.replayed},
      {"entity", omitted ? json(nullptr) : r.entity},
      {"error", r.error},
      {"first_processed_at",
       r.status == Status::rejected ? json(nullptr) : json(format_timestamp(r.first_processed_at))},
      {"processed_at", format_timestamp(r.processed_at)},
      {"source", {{"topic", r.source.topic}, {"partition", r.source.partition}, {"offset", r.source.offset}}},
  };
  if (omitted) document["entity_omitted"] = {{"bytes", omitted->bytes}, {"sha256", omitted->sha256}};
  if (r.cloudevent) {
    document["cloudevent"] = {{"id", r.cloudevent->id}, {"source", r.cloudevent->source}, {"type", r.cloudevent->type}};
  }
  return document;
}

TEST(CommandResultTest, TextIsTheDocumentBuiltAsAValueWrittenByWriteJson) {
  std::vector<CommandResult> cases;
  cases.push_back(created_result());
  {
    CommandResult r = created_result();  // exact numbers, nesting, escapes, NUL, non-UTF-8 bytes
    r.entity = json::parse(R"({"n":1,"z":[true,null,{"b":"\u0000\"\\\n"}],"a":"\u00e9\ud83d\ude00"})");
    r.entity["big"] = exact_number("12345678901234567890.125e-400");
    r.entity["bytes"] = std::string("x\xc3(y\0z", 7);
    r.status = Status::duplicate;
    r.replayed = true;
    r.processed_at = kLater;
    r.source = {"t\"/\\", -1, -9'223'372'036'854'775'807 - 1};
    cases.push_back(r);
  }
  {
    CommandResult r;  // rejected: unknown key, scope and type; an error; nothing stored
    r.error = {{"code", "invalid_json"}, {"message", "bad \xff byte"}};
    r.processed_at = kFirst;
    r.first_processed_at = kLater;
    r.source = {"commands", 2'147'483'647, 9'223'372'036'854'775'807};
    cases.push_back(r);
  }
  {
    CommandResult r = created_result();
    r.status = Status::key_reused;
    r.entity = nullptr;
    r.error = {{"code", "key_reused"}, {"message", "m"}, {"sqlstate", "23505"}};
    r.cloudevent = CloudEventIdentity{"id-\x01", "/src", "com.example.todo.create"};
    cases.push_back(r);
  }
  const OmittedEntity omitted{1'048'577, std::string(64, 'a')};
  for (const CommandResult& r : cases) {
    EXPECT_EQ(r.to_json_text(), to_json_text(document_as_value(r, nullptr)));
    EXPECT_EQ(r.to_json_text(&omitted), to_json_text(document_as_value(r, &omitted)));
    EXPECT_EQ(r.to_json(), std::get<json>(parse_json(to_json_text(document_as_value(r, nullptr)))));
  }
}

TEST(MakeRejectedResultTest, CarriesMissingKeyFlag) {
  RejectedCommand rejected;
  rejected.rejection = {RejectCode::missing_key, "no key"};
  rejected.missing_key = true;
  EXPECT_TRUE(make_rejected_result(rejected, kFirst).missing_key);
  rejected.missing_key = false;
  EXPECT_FALSE(make_rejected_result(rejected, kFirst).missing_key);
}

// Every result is published as JSON text, so a rejected record's result must serialize whatever
// bytes the record held. A value that is not valid UTF-8 is rejected as invalid_json, and its
// result must still be publishable (the worker writes to_json_text()).
TEST(MakeRejectedResultTest, ResultOfInvalidUtf8ValueSerializes) {
  const auto catalog = CommandCatalog::from_yaml("commands:\n  todo.create:\n    table: todos\n");
  const auto parsed = parse_command(
      test::record_raw("{\"idempotency_key\":\"k-1\",\"scope\":\"org-1\",\"type\":\"todo.create\","
                       "\"payload\":{\"title\":\"\xc3(\"}}"),
      catalog, {});
  ASSERT_TRUE(std::holds_alternative<RejectedCommand>(parsed));
  const auto result = make_rejected_result(std::get<RejectedCommand>(parsed), kFirst);
  EXPECT_EQ(result.error["code"], "invalid_json");
  EXPECT_NO_THROW((void)result.to_json_text());
  EXPECT_NO_THROW((void)result.to_json());
}

// --- resolve_stored: the decision table of SPEC §2 ---------------------------------------------

class ResolveStoredTest : public ::testing::Test {
 protected:
  CommandType type_{
      .name = "todo.create", .table = QualifiedName{"public", "todos"}, .sql = {}, .key_from = {}};
  SourcePosition claimant_{"commands", 3, 1234};

  Command command(json payload, SourcePosition source, bool natural_key = false) const {
    Command c;
    c.source = std::move(source);
    c.scope = "org-1";
    c.idempotency_key = "k-1";
    c.type = &type_;
    c.fingerprint = command_fingerprint(type_.name, payload);
    c.payload = std::move(payload);
    c.natural_key = natural_key;
    return c;
  }

  StoredKey created_row() const {
    return StoredKey{.command_type = "todo.create",
                     .fingerprint = command_fingerprint("todo.create", {{"title", "Buy milk"}}),
                     .status = Status::created,
                     .entity = {{"id", 42}, {"title", "Buy milk"}},
                     .error = nullptr,
                     .first_processed_at = kFirst,
                     .source = claimant_};
  }

  StoredKey conflict_row() const {
    auto row = created_row();
    row.status = Status::conflict;
    row.entity = nullptr;
    row.error = {{"code", "conflict"},
                 {"message", "duplicate key value"},
                 {"constraint", "todos_title_key"},
                 {"sqlstate", "23505"}};
    return row;
  }

  static void expect_identity(const CommandResult& result, const Command& command) {
    EXPECT_EQ(result.idempotency_key, command.idempotency_key);
    EXPECT_EQ(result.scope, command.scope);
    EXPECT_EQ(result.type, command.type->name);
    EXPECT_EQ(result.source, command.source);
    EXPECT_EQ(result.processed_at, kLater);
    EXPECT_FALSE(result.rejection.has_value());
  }
};

TEST_F(ResolveStoredTest, ClaimantReadAgainGetsItsOriginalCreatedResult) {
  const auto again = command({{"title", "Buy milk"}}, claimant_);
  const auto result = resolve_stored(again, created_row(), kLater);
  EXPECT_EQ(result.status, Status::created);
  EXPECT_FALSE(result.replayed);
  EXPECT_EQ(result.entity, created_row().entity);
  EXPECT_TRUE(result.error.is_null());
  EXPECT_EQ(result.first_processed_at, kFirst);
  expect_identity(result, again);
}

TEST_F(ResolveStoredTest, ClaimantReadAgainGetsItsOriginalConflictResult) {
  const auto again = command({{"title", "Buy milk"}}, claimant_);
  const auto result = resolve_stored(again, conflict_row(), kLater);
  EXPECT_EQ(result.status, Status::conflict);
  EXPECT_FALSE(result.replayed);
  EXPECT_EQ(result.error, conflict_row().error);
  EXPECT_TRUE(result.entity.is_null());
  EXPECT_EQ(result.first_processed_at, kFirst);
  expect_identity(result, again);
}

TEST_F(ResolveStoredTest, OtherRecordSameFingerprintIsDuplicateOfCreation) {
  const auto retry = command({{"title", "Buy milk"}}, {"commands", 3, 1300});
  const auto result = resolve_stored(retry, created_row(), kLater);
  EXPECT_EQ(result.status, Status::duplicate);
  EXPECT_TRUE(result.replayed);
  EXPECT_EQ(result.entity, created_row().entity);
  EXPECT_TRUE(result.error.is_null());
  EXPECT_EQ(result.first_processed_at, kFirst);
  expect_identity(result, retry);
}

TEST_F(ResolveStoredTest, SameOffsetOnOtherPartitionIsAnotherRecord) {
  const auto retry = command({{"title", "Buy milk"}}, {"commands", 4, 1234});
  EXPECT_EQ(resolve_stored(retry, created_row(), kLater).status, Status::duplicate);
  const auto other_topic = command({{"title", "Buy milk"}}, {"commands-v2", 3, 1234});
  EXPECT_EQ(resolve_stored(other_topic, created_row(), kLater).status, Status::duplicate);
}

TEST_F(ResolveStoredTest, OtherRecordSameFingerprintReplaysConflict) {
  const auto retry = command({{"title", "Buy milk"}}, {"commands", 0, 1});
  const auto result = resolve_stored(retry, conflict_row(), kLater);
  EXPECT_EQ(result.status, Status::conflict);
  EXPECT_TRUE(result.replayed);
  EXPECT_EQ(result.error, conflict_row().error);
  EXPECT_TRUE(result.entity.is_null());
  EXPECT_EQ(result.first_processed_at, kFirst);
  expect_identity(result, retry);
}

TEST_F(ResolveStoredTest, DifferentFingerprintIsKeyReused) {
  const auto reuse = command({{"title", "Buy bread"}}, {"commands", 3, 1300});
  const auto result = resolve_stored(reuse, created_row(), kLater);
  EXPECT_EQ(result.status, Status::key_reused);
  EXPECT_FALSE(result.replayed);
  EXPECT_TRUE(result.entity.is_null());
  ASSERT_TRUE(result.error.is_object());
  EXPECT_EQ(result.error["code"], "key_reused");
  EXPECT_TRUE(result.error["message"].is_string());
  expect_identity(result, reuse);
}

TEST_F(ResolveStoredTest, DifferentFingerprintOfConflictIsKeyReusedWithoutTheConflict) {
  const auto reuse = command({{"title", "Buy bread"}}, {"commands", 3, 1300});
  const auto result = resolve_stored(reuse, conflict_row(), kLater);
  EXPECT_EQ(result.status, Status::key_reused);
  EXPECT_EQ(result.error["code"], "key_reused");
  EXPECT_FALSE(result.error.contains("constraint"));
}

TEST_F(ResolveStoredTest, DifferentFingerprintAtTheSameSourcePositionIsStillKeyReused) {
  const auto changed = command({{"title", "Buy bread"}}, claimant_);
  const auto result = resolve_stored(changed, created_row(), kLater);
  EXPECT_EQ(result.status, Status::key_reused);
  EXPECT_TRUE(result.entity.is_null());
  EXPECT_EQ(result.error["code"], "key_reused");
}

TEST_F(ResolveStoredTest, NaturalKeyFlagsFollowTheCommand) {
  const auto natural = command({{"title", "Buy milk"}}, {"commands", 0, 1}, /*natural_key=*/true);
  const auto result = resolve_stored(natural, created_row(), kLater);
  EXPECT_TRUE(result.natural_key);
  EXPECT_TRUE(result.missing_key);
  const auto client = command({{"title", "Buy milk"}}, {"commands", 0, 1});
  EXPECT_FALSE(resolve_stored(client, created_row(), kLater).natural_key);
}

}  // namespace
}  // namespace dedup
