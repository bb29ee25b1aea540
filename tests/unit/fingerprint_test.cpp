// SHA-256, canonical JSON and the command fingerprint of SPEC §1.
#include "dedup/fingerprint.hpp"
#include "dedup/json_text.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <variant>

#include "dedup/command.hpp"
#include "dedup/config.hpp"
#include "support/records.hpp"

namespace dedup {
namespace {

using json = nlohmann::json;

// --- sha256 / to_hex ---------------------------------------------------------------------------

struct DigestVector {
  std::string input;
  std::string hex;

  friend void PrintTo(const DigestVector& c, std::ostream* os) { *os << '"' << c.input << '"'; }
};

class Sha256Test : public ::testing::TestWithParam<DigestVector> {};

TEST_P(Sha256Test, MatchesPublishedVector) {
  EXPECT_EQ(to_hex(sha256(GetParam().input)), GetParam().hex);
}

// FIPS 180-2 / NIST examples.
INSTANTIATE_TEST_SUITE_P(
    NistVectors, Sha256Test,
    ::testing::Values(
        DigestVector{"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        DigestVector{"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        DigestVector{"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"}));

TEST(ToHexTest, WritesEveryByteAsTwoLowercaseDigitsInOrder) {
  Fingerprint fingerprint{};
  fingerprint[0] = 0x00;
  fingerprint[1] = 0x01;
  fingerprint[2] = 0xab;
  fingerprint[3] = 0xf0;
  fingerprint[31] = 0xff;
  const std::string hex = to_hex(fingerprint);
  ASSERT_EQ(hex.size(), 64u);
  EXPECT_EQ(hex.substr(0, 8), "0001abf0");
  EXPECT_EQ(hex.substr(8, 54), std::string(54, '0'));
  EXPECT_EQ(hex.substr(62), "ff");
}

TEST(Sha256Test, EmbeddedNulBytesAreHashed) {
  EXPECT_NE(sha256(std::string("a\0b", 3)), sha256("a"));
}

// --- canonical_json ----------------------------------------------------------------------------

TEST(CanonicalJsonTest, SortsKeysAtEveryDepthAndDropsWhitespace) {
  const auto value = json::parse(R"(
    {
      "b" : { "y" : [ 3, 1, { "d" : 1, "c" : 2 } ], "x" : "s p" },
      "a" : 1.5,
      "A" : true,
      "_" : null
    })");
  EXPECT_EQ(canonical_json(value),
            R"({"A":true,"_":null,"a":1.5,"b":{"x":"s p","y":[3,1,{"c":2,"d":1}]}})");
}

TEST(CanonicalJsonTest, SortsKeysBytewise) {
  // Bytewise: upper case before lower case, and a multibyte UTF-8 key after every ASCII key.
  const auto value = json::parse(R"({"é":1,"b":2,"B":3,"ba":4})");
  EXPECT_EQ(canonical_json(value), R"({"B":3,"b":2,"ba":4,"é":1})");
}

TEST(CanonicalJsonTest, EscapesOnlyWhatJsonRequires) {
  // Quote, backslash and control characters are escaped; '/' and non-ASCII characters are not.
  EXPECT_EQ(canonical_json(json("q\"b\\n\nt\t\x01/é")), R"("q\"b\\n\nt\t\u0001/é")");
}

struct NumberCase {
  std::string input;      // JSON text as received
  std::string canonical;  // expected canonical form

  friend void PrintTo(const NumberCase& c, std::ostream* os) { *os << c.input; }
};

class CanonicalNumberTest : public ::testing::TestWithParam<NumberCase> {};

TEST_P(CanonicalNumberTest, WritesNumberAsGiven) {
  const auto parsed = parse_json(GetParam().input);
  ASSERT_TRUE(std::holds_alternative<json>(parsed)) << std::get<std::string>(parsed);
  EXPECT_EQ(canonical_json(std::get<json>(parsed)), GetParam().canonical);
}

INSTANTIATE_TEST_SUITE_P(
    Numbers, CanonicalNumberTest,
    ::testing::Values(NumberCase{"1", "1"}, NumberCase{"-1", "-1"}, NumberCase{"1.0", "1.0"},
                      NumberCase{"1.5", "1.5"}, NumberCase{"0.1", "0.1"},
                      NumberCase{"1e2", "1e2"}, NumberCase{"100.0", "100.0"},
                      NumberCase{"1E+2", "1E+2"}, NumberCase{"1.50", "1.50"},
                      NumberCase{"-0", "0"}, NumberCase{"-0.0", "-0.0"},
                      NumberCase{"9223372036854775807", "9223372036854775807"},
                      NumberCase{"-9223372036854775808", "-9223372036854775808"},
                      NumberCase{"18446744073709551615", "18446744073709551615"},
                      // Beyond 64 bits, and beyond a double's range or precision: as written.
                      NumberCase{"18446744073709551616", "18446744073709551616"},
                      NumberCase{"-9223372036854775809", "-9223372036854775809"},
                      NumberCase{"12345678901234567.89", "12345678901234567.89"},
                      NumberCase{"1e400", "1e400"}, NumberCase{"1e-400", "1e-400"},
                      NumberCase{std::string(401, '9'), std::string(401, '9')}));

// Regression (issue 8, defect 4): numbers that a double cannot hold are distinct values, and
// must have distinct fingerprints: 12345678901234567.89 and ...567.80 differ by a cent.
TEST(CanonicalJsonTest, NumbersADoubleCannotHoldStayDistinct) {
  auto fingerprint_of = [](std::string_view text) {
    return command_fingerprint("t", std::get<json>(parse_json(text)));
  };
  EXPECT_NE(fingerprint_of(R"({"a":12345678901234567.89})"),
            fingerprint_of(R"({"a":12345678901234567.80})"));
  EXPECT_NE(fingerprint_of(R"({"a":100000000000000000001})"),
            fingerprint_of(R"({"a":100000000000000000000})"));
  EXPECT_NE(fingerprint_of(R"({"a":1e-400})"), fingerprint_of(R"({"a":0.0})"));
  // Written differently is different: numbers are fingerprinted as written.
  EXPECT_NE(fingerprint_of(R"({"a":1e2})"), fingerprint_of(R"({"a":100})"));
}

// --- command_fingerprint -----------------------------------------------------------------------

TEST(CommandFingerprintTest, IsSha256OfCanonicalTypeAndPayloadObject) {
  const auto payload = json::parse(R"({"title":"Buy milk","tags":["a","b"],"n":{"y":1,"x":2}})");
  const json whole = {{"type", "todo.create"}, {"payload", payload}};
  EXPECT_EQ(command_fingerprint("todo.create", payload), sha256(canonical_json(whole)));
}

TEST(CommandFingerprintTest, KeyOrderIsIrrelevantAtEveryDepth) {
  const auto a = json::parse(R"({"a":1,"b":{"c":2,"d":[{"e":3,"f":4}]}})");
  const auto b = json::parse(R"({"b":{"d":[{"f":4,"e":3}],"c":2},"a":1})");
  EXPECT_EQ(command_fingerprint("t", a), command_fingerprint("t", b));
}

TEST(CommandFingerprintTest, TypeIsPartOfIt) {
  const auto payload = json::parse(R"({"a":1})");
  EXPECT_NE(command_fingerprint("todo.create", payload),
            command_fingerprint("todo.update", payload));
}

struct DifferentPayloads {
  std::string name;
  std::string a;
  std::string b;

  friend void PrintTo(const DifferentPayloads& c, std::ostream* os) { *os << c.a << " vs " << c.b; }
};

class FingerprintDiffersTest : public ::testing::TestWithParam<DifferentPayloads> {};

TEST_P(FingerprintDiffersTest, ChangesTheFingerprint) {
  EXPECT_NE(command_fingerprint("t", json::parse(GetParam().a)),
            command_fingerprint("t", json::parse(GetParam().b)))
      << GetParam().a << " vs " << GetParam().b;
}

INSTANTIATE_TEST_SUITE_P(
    Payloads, FingerprintDiffersTest,
    ::testing::Values(DifferentPayloads{"ArrayOrder", R"({"a":[1,2]})", R"({"a":[2,1]})"},
                      DifferentPayloads{"NumberVsString", R"({"a":1})", R"({"a":"1"})"},
                      DifferentPayloads{"IntegerVsFloat", R"({"a":1})", R"({"a":1.0})"},
                      DifferentPayloads{"TrueVsOne", R"({"a":true})", R"({"a":1})"},
                      DifferentPayloads{"FalseVsZero", R"({"a":false})", R"({"a":0})"},
                      DifferentPayloads{"NullVsMissing", R"({"a":1,"b":null})", R"({"a":1})"},
                      DifferentPayloads{"NullVsEmptyString", R"({"a":null})", R"({"a":""})"},
                      DifferentPayloads{"EmptyArrayVsEmptyObject", R"({"a":[]})", R"({"a":{}})"},
                      DifferentPayloads{"StringValue", R"({"a":"Buy milk"})",
                                        R"({"a":"Buy milk "})"},
                      DifferentPayloads{"NestedValue", R"({"a":{"b":[1,{"c":2}]}})",
                                        R"({"a":{"b":[1,{"c":3}]}})"},
                      DifferentPayloads{"KeyName", R"({"a":1})", R"({"A":1})"},
                      DifferentPayloads{"ExtraField", R"({"a":1})", R"({"a":1,"z":1})"},
                      DifferentPayloads{"LargestIntegers", R"({"a":18446744073709551615})",
                                        R"({"a":18446744073709551614})"}),
    [](const auto& info) { return info.param.name; });

// Key and scope are not part of the fingerprint: the same payload sent under another key or scope
// has the same fingerprint.
TEST(CommandFingerprintTest, KeyAndScopeAreNotPartOfIt) {
  const auto catalog = CommandCatalog::from_yaml("commands:\n  todo.create:\n    table: todos\n");
  const json payload = {{"title", "Buy milk"}};
  const auto one = parse_command(
      test::record(test::command_body("k-1", "org-1", "todo.create", payload)), catalog, {});
  const auto two = parse_command(
      test::record(test::command_body("k-2", "org-2", "todo.create", payload)), catalog, {});
  ASSERT_TRUE(std::holds_alternative<Command>(one));
  ASSERT_TRUE(std::holds_alternative<Command>(two));
  EXPECT_EQ(std::get<Command>(one).fingerprint, std::get<Command>(two).fingerprint);
  EXPECT_EQ(std::get<Command>(one).fingerprint, command_fingerprint("todo.create", payload));
}

}  // namespace
}  // namespace dedup
