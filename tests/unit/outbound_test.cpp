// The records the worker writes: result keys that never collide, and records that always fit.
#include "dedup/outbound.hpp"

#include <gtest/gtest.h>

#include "dedup/fingerprint.hpp"
#include "dedup/json_text.hpp"

namespace dedup {
namespace {

using json = nlohmann::json;

CommandResult created(std::string scope, std::string key, json entity) {
  CommandResult result;
  result.status = Status::created;
  result.scope = std::move(scope);
  result.idempotency_key = std::move(key);
  result.type = "todo.create";
  result.entity = std::move(entity);
  result.source = {"commands", 0, 7};
  return result;
}

// Regression (issue 8, point 6): ("a/b", "c") and ("a", "b/c") shared the key "a/b/c".
TEST(ResultRecordKeyTest, SlashAndPercentAreEncodedSoScopesNeverCollide) {
  EXPECT_EQ(created("org-1", "k-1", nullptr).record_key(), "org-1/k-1");
  EXPECT_EQ(created("a/b", "c", nullptr).record_key(), "a%2Fb/c");
  EXPECT_EQ(created("a", "b/c", nullptr).record_key(), "a/b%2Fc");
  EXPECT_EQ(created("a%2Fb", "c", nullptr).record_key(), "a%252Fb/c");
  EXPECT_NE(created("a/b", "c", nullptr).record_key(), created("a", "b/c", nullptr).record_key());
}

TEST(ResultRecordTest, FitsWholeWhenSmall) {
  const auto result = created("org-1", "k-1", {{"id", 1}, {"amount", exact_number("1e400")}});
  const auto record = make_result_record(result, "r", {1 << 20, false});
  ASSERT_TRUE(record.value);
  EXPECT_NE(record.value->find(R"("amount":1e400)"), std::string::npos) << *record.value;
  EXPECT_EQ(record.value->find("entity_omitted"), std::string::npos);
}

// Regression (issue 8, defect 3): a 600 KB bytea entity made a result no broker would take, and
// the batch was retried forever.
TEST(ResultRecordTest, OmitsAnEntityTooLargeAndSaysWhatItWas) {
  const json entity = {{"id", 1}, {"blob", std::string(700'000, 'x')}};
  const auto result = created("org-1", "k-1", entity);
  const auto record = make_result_record(result, "r", {100'000, false});
  ASSERT_TRUE(record.value);
  EXPECT_LE(payload_bytes(record), 100'000u);
  const auto document = json::parse(*record.value);
  EXPECT_TRUE(document["entity"].is_null());
  const auto text = to_json_text(entity);
  EXPECT_EQ(document["entity_omitted"]["bytes"], text.size());
  EXPECT_EQ(document["entity_omitted"]["sha256"], to_hex(sha256(text)));
  EXPECT_EQ(document["status"], "created");
  EXPECT_EQ(record.key, "org-1/k-1");
  // Deterministic: a replay writes the same bytes.
  EXPECT_EQ(make_result_record(result, "r", {100'000, false}).value, record.value);
  // Compact (the broker refused the whole one) omits it whatever the size.
  const auto compact = make_result_record(created("o", "k", {{"id", 1}}), "r", {1 << 20, true});
  EXPECT_TRUE(json::parse(*compact.value)["entity"].is_null());
}

InboundRecord big_record(std::size_t value_bytes, std::size_t key_bytes) {
  InboundRecord record;
  record.source = {"commands", 3, 99};
  record.key = std::string(key_bytes, 'k');
  record.value = std::string(value_bytes, 'v');
  record.headers = {{"trace", "t-1"}, {"null", std::nullopt}};
  return record;
}

TEST(DeadLetterTest, KeepsTheOriginalWhenItFits) {
  const auto record = big_record(1000, 10);
  const auto dead = make_dead_letter(record, {RejectCode::invalid_json, "bad"}, "dlq", {1 << 20});
  EXPECT_EQ(dead.value, record.value);
  EXPECT_EQ(dead.key, record.key);
  EXPECT_EQ(dead.headers.size(), record.headers.size() + 5);
  EXPECT_EQ(dead.find_header(kDlqTruncatedHeader), nullptr);
}

// Regression (issue 8, defect 3): a compressible 1.2 MB record's dead letter exceeded the
// producer's message.max.bytes; it was retried forever and its offset never committed.
TEST(DeadLetterTest, CutsDownWhatDoesNotFitAndSaysHow) {
  const auto record = big_record(1'200'000, 5000);
  const Rejection rejection{RejectCode::too_large, "record value is 1200000 bytes"};
  const auto dead = make_dead_letter(record, rejection, "dlq", {1'000'000});
  EXPECT_LE(payload_bytes(dead), 1'000'000u);
  EXPECT_EQ(dead.value, record.value->substr(0, kDlqValuePrefixBytes));
  EXPECT_EQ(dead.key, record.key->substr(0, kDlqKeyPrefixBytes));
  ASSERT_NE(dead.find_header(kDlqTruncatedHeader), nullptr);
  EXPECT_EQ(dead.find_header(kDlqTruncatedHeader)->value, "key,value");
  EXPECT_EQ(dead.find_header(kDlqOriginalSizeHeader)->value, "1200000");
  EXPECT_EQ(dead.find_header(kDlqOriginalSha256Header)->value, to_hex(sha256(*record.value)));
  EXPECT_EQ(dead.find_header(kDlqErrorCodeHeader)->value, "too_large");
  EXPECT_EQ(dead.find_header(kDlqSourceOffsetHeader)->value, "99");
  EXPECT_EQ(dead.find_header("trace")->value, "t-1");  // small original headers are kept
}

TEST(DeadLetterTest, DropsOriginalHeadersThatAreTooLarge) {
  auto record = big_record(10, 10);
  for (int i = 0; i < 100; ++i) record.headers.push_back({"h", std::string(1000, 'h')});
  const auto dead = make_dead_letter(record, {RejectCode::invalid_json, "bad"}, "dlq", {50'000});
  EXPECT_LE(payload_bytes(dead), 50'000u);
  EXPECT_EQ(dead.find_header(kDlqTruncatedHeader)->value, "headers");
  EXPECT_EQ(dead.find_header("trace"), nullptr);
  EXPECT_EQ(dead.value, record.value);
}

}  // namespace
}  // namespace dedup
