// The exact JSON writer against nlohmann's dump(), what fingerprints and natural keys were
// computed with before v1.1: existing keys must keep matching their redeliveries.
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "dedup/command.hpp"
#include "dedup/config.hpp"
#include "dedup/fingerprint.hpp"
#include "dedup/json_text.hpp"

namespace dedup {
namespace {

using json = nlohmann::json;

// Random JSON text without fraction/exponent numbers: strings with every kind of character
// (controls, DEL, escapes, \u escapes including surrogate pairs, raw multi-byte UTF-8), integers
// around the 64-bit boundaries, nested arrays and objects, repeated member names.
class Generator {
 public:
  explicit Generator(std::uint64_t seed) : random_(seed) {}

  std::string value(int depth) {
    switch (pick(depth > 6 ? 4 : 7)) {
      case 0: return integer();
      case 1: return string();
      case 2: return std::vector<std::string>{"true", "false", "null"}[pick(3)];
      case 3: return integer();
      case 4: return array(depth + 1);
      case 5: return object(depth + 1);
      default: return object(depth + 1);
    }
  }
  std::string object(int depth) {
    std::string out = "{";
    const int n = pick(5);
    for (int i = 0; i < n; ++i) {
      if (i) out += ",";
      out += pick(4) == 0 ? "\"dup\"" : string();  // repeated names: the last one counts
      out += ws() + ":" + ws() + value(depth);
    }
    return out + "}";
  }

 private:
  int pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(random_); }
  std::string ws() { return std::vector<std::string>{"", " ", "\n", "\t", "\r "}[pick(5)]; }
  std::string integer() {
    static const std::vector<std::string> edges = {
        "0", "-0", "1", "-1", "9223372036854775807", "-9223372036854775808",
        "9223372036854775808", "18446744073709551615", "4294967296", "-4294967297"};
    if (pick(2) == 0) return edges[pick(static_cast<int>(edges.size()))];
    return std::to_string(static_cast<std::int64_t>(random_()));
  }
  std::string string() {
    static const std::vector<std::string> pieces = {
        "a", "Z", " ", "/", "\\/", "\\\"", "\\\\", "\\b", "\\f", "\\n", "\\r", "\\t", "\\u0001",
        "\\u001f", "\\u007f", "\x7f", "\\u00e9", "\xc3\xa9", "\\u2028", "\xe2\x80\xa8",
        "\\ud83d\\ude00", "\xf0\x9f\x98\x80", "\\uFFFF", "\xef\xbf\xbf", "\\u0080", "~", "%"};
    std::string out = "\"";
    const int n = pick(8);
    for (int i = 0; i < n; ++i) out += pieces[pick(static_cast<int>(pieces.size()))];
    return out + "\"";
  }
  std::string array(int depth) {
    std::string out = "[";
    const int n = pick(5);
    for (int i = 0; i < n; ++i) {
      if (i) out += ",";
      out += ws() + value(depth) + ws();
    }
    return out + "]";
  }

  std::mt19937_64 random_;
};

// Sound: fingerprints of payloads without fraction/exponent numbers do not change.
TEST(JsonCompatibilityTest, CanonicalJsonEqualsNlohmannDumpForPayloadsWithoutFractionsOrExponents) {
  Generator generator(8);
  for (int i = 0; i < 20000; ++i) {
    const std::string text = generator.object(1);
    auto parsed = parse_json(text);
    ASSERT_TRUE(std::holds_alternative<json>(parsed)) << std::get<std::string>(parsed) << " " << text;
    ASSERT_EQ(canonical_json(std::get<json>(parsed)), json::parse(text).dump()) << text;
  }
}

// The contract's upgrade note says only fingerprints of fraction/exponent numbers change (a
// redelivery around the upgrade becomes `key_reused`). Natural keys change too: the material is
// canonical_json([type, payload[f]...]), which used to write 2.50 as 2.5 and 1e2 as 100.0. A record
// without a client key, read before the upgrade and again after it (a crash before the offset
// commit), gets a different key: it is claimed anew and a SECOND entity is written.
TEST(JsonCompatibilityTest, NaturalKeyOfAFractionNumberIsTheSameAsBeforeTheUpgrade) {
  const auto catalog = CommandCatalog::from_yaml(R"(
commands:
  order.create:
    table: public.orders
    key_from: [customer, amount]
)");
  const CommandType& type = *catalog.find("order.create");
  for (const std::string amount : {"2.50", "1e2", "0.10"}) {
    SCOPED_TRACE(amount);
    const auto payload = std::get<json>(parse_json(R"({"customer":7,"amount":)" + amount + "}"));
    const auto now = derive_natural_key(type, payload);
    ASSERT_TRUE(std::holds_alternative<std::string>(now));
    // What 35b153f computed: nlohmann's DOM (a double) and dump().
    const json legacy_material = json::array({"order.create", 7, json::parse(amount)});
    const std::string before = "nk:" + to_hex(sha256(legacy_material.dump()));
    EXPECT_EQ(std::get<std::string>(now), before);
  }
}

}  // namespace
}  // namespace dedup
