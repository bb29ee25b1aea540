// parse_json / write_json: exact numbers, strict RFC 8259, hostile input never crashes.
#include "dedup/json_text.hpp"

#include <gtest/gtest.h>

#include <string>
#include <variant>
#include <vector>

namespace dedup {
namespace {

using json = nlohmann::json;

json parsed(std::string_view text, JsonParseLimits limits = {}) {
  auto result = parse_json(text, limits);
  if (auto* problem = std::get_if<std::string>(&result)) {
    ADD_FAILURE() << "refused: " << *problem << " for " << text;
    return {};
  }
  return std::get<json>(result);
}

std::string refusal(std::string_view text, JsonParseLimits limits = {}) {
  auto result = parse_json(text, limits);
  if (std::holds_alternative<json>(result)) {
    ADD_FAILURE() << "accepted: " << text;
    return {};
  }
  return std::get<std::string>(result);
}

TEST(ParseJsonTest, RoundTripsNumbersExactly) {
  for (const std::string& text : std::vector<std::string>{
           "0", "-1", "18446744073709551615", "18446744073709551616", "-9223372036854775808",
        "-9223372036854775809", "12345678901234567.89", "1e400", "-1E-400", "1.50", "1e2", "0.0",
        "123456789012345678901234567890.123456789012345678901234567890"}) {
    EXPECT_EQ(to_json_text(parsed(text)), text);
  }
  EXPECT_EQ(to_json_text(parsed(std::string(131072, '9'))), std::string(131072, '9'));
}

TEST(ParseJsonTest, SixtyFourBitIntegersAreNlohmannIntegers) {
  EXPECT_EQ(parsed("42"), json(42));
  EXPECT_EQ(parsed("-42"), json(-42));
  EXPECT_TRUE(parsed("18446744073709551615").is_number_unsigned());
  EXPECT_TRUE(is_exact_number(parsed("18446744073709551616")));
  EXPECT_TRUE(is_exact_number(parsed("1.0")));
  EXPECT_EQ(exact_number_text(parsed("1.0")), "1.0");
}

TEST(ParseJsonTest, AgreesWithNlohmannOnOrdinaryDocuments) {
  const std::string text =
      R"({"b":[1,-2,true,false,null,"x\n\"y\\\/\u00e9\ud83d\ude00"],"a":{"c":{}, "d":[]}, "é":"ü"})";
  EXPECT_EQ(parsed(text), json::parse(text));
  EXPECT_EQ(to_json_text(parsed(text)), json::parse(text).dump());
}

TEST(ParseJsonTest, RepeatedMemberNameKeepsTheLast) {
  EXPECT_EQ(parsed(R"({"a":1,"a":2})"), json({{"a", 2}}));
}

TEST(ParseJsonTest, KeepsEscapedNulInStrings) {
  EXPECT_EQ(parsed(R"("a\u0000b")").get<std::string>(), std::string("a\0b", 3));
}

TEST(ParseJsonTest, RefusesWhatRfc8259Refuses) {
  for (const std::string& text : std::vector<std::string>{
           "", " ", "{", "[1,]", "{\"a\":1,}", "01", "-", "1.", ".5", "1e", "+1", "NaN", "Infinity",
        "tru", "nul", "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\ud800\"", "\"\\udc00\"",
        "\"\\ud800\\u0041\"", "[1] 2", "{1:2}", "\"a\tb\"", std::string("\"\xff\""),
        std::string("\"\xc0\xaf\""), std::string("\"\xed\xa0\x80\""), "\xef\xbb\xbf{}",
        std::string("{\"a\":1}\0", 8)}) {
    SCOPED_TRACE(text);
    EXPECT_FALSE(refusal(text).empty());
  }
}

TEST(ParseJsonTest, MessageIsPrintableAndBounded) {
  const std::string text = "[\"" + std::string(100000, 'a') + "\xff\"]";
  const auto message = refusal(text);
  EXPECT_NE(message.find("UTF-8"), std::string::npos) << message;
  EXPECT_LT(message.size(), 400u);
  EXPECT_TRUE(utf8_length(message).has_value());
}

TEST(ParseJsonTest, NestingIsBounded) {
  EXPECT_NO_FATAL_FAILURE(parsed(std::string(64, '[') + std::string(64, ']')));
  EXPECT_NE(refusal(std::string(65, '[') + std::string(65, ']')).find("64"), std::string::npos);
  // Deep input far beyond the limit is refused without recursing into it.
  EXPECT_FALSE(refusal(std::string(1 << 20, '[')).empty());
  EXPECT_NO_FATAL_FAILURE(parsed(std::string(512, '[') + std::string(512, ']'),
                                 JsonParseLimits{.max_depth = 512}));
}

TEST(WriteJsonTest, EscapesOnlyWhatJsonRequiresAndReplacesInvalidUtf8) {
  std::string out;
  write_json_string(out, std::string("q\"b\\c\x01\x7f\n\xc3\xa9\xff", 11));
  EXPECT_EQ(out, "\"q\\\"b\\\\c\\u0001\x7f\\n\xc3\xa9\xef\xbf\xbd\"");
}

TEST(WriteJsonTest, WritesObjectsInBytewiseKeyOrder) {
  EXPECT_EQ(to_json_text(parsed(R"({"b":1,"a":{"z":[],"B":null}})")),
            R"({"a":{"B":null,"z":[]},"b":1})");
}

TEST(TruncateUtf8Test, NeverSplitsASequence) {
  EXPECT_EQ(truncate_utf8("abc", 10), "abc");
  const auto cut = truncate_utf8("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 6);
  EXPECT_TRUE(utf8_length(cut).has_value()) << cut;
  EXPECT_LE(cut.size(), 6u);
}

}  // namespace
}  // namespace dedup
