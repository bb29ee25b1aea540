// libFuzzer target over the command envelope (docs/contract.md §1): parse_command's parsing and
// validation, canonical JSON and the fingerprint. Built by the `fuzz` preset (clang, ASan+UBSan),
// run by tests/fuzz/run; see tests/fuzz/README.md for the input format and the properties.
//
// Input bytes → one InboundRecord. Leading lines that start with '@' are headers, at most 8:
//   @k:<bytes>  header idempotency-key       @k  the same header with a null value
//   @s:<bytes>  header idempotency-scope     @s  the same header with a null value
//   @n          the record value is null (a tombstone); the rest of the input is ignored
//   @<c>:<bytes> / @<c>   any other character: header "x-<c>" (noise the parser must ignore)
// Everything after the header lines is the record value, byte for byte.
//
// Every property violation prints what was violated and aborts, so libFuzzer saves the input.
// Only the public API is used, so the target follows the library through rewrites.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "dedup/command.hpp"
#include "dedup/config.hpp"
#include "dedup/fingerprint.hpp"
#include "dedup/record.hpp"

// Numbers as written (issue 8): once dedup/json_text.hpp exists, canonical JSON keeps every
// number's text exactly. Before that, a fraction or exponent number only has to keep its double
// value. Either way a number stays a number: 1e400 must never become null.
#if __has_include("dedup/json_text.hpp")
inline constexpr bool kNumbersAsWritten = true;
#else
inline constexpr bool kNumbersAsWritten = false;
#endif

namespace {

using dedup::Command;
using dedup::CommandCatalog;
using dedup::InboundRecord;
using dedup::ParsedCommand;
using dedup::ParseOptions;
using dedup::RejectedCommand;

const InboundRecord* g_record = nullptr;  // the record under test, printed with a violation

// Bytes for the log: control characters but newline as \xNN, everything else as is.
std::string visible(std::string_view bytes) {
  std::string out;
  for (const char c : bytes) {
    const auto byte = static_cast<unsigned char>(c);
    if ((byte < 0x20 && byte != '\n') || byte == 0x7f) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", byte);
      out += escaped;
    } else {
      out += c;
    }
  }
  return out;
}

[[noreturn]] void violated(std::string_view property, std::string_view detail) {
  std::string record = "(none)";
  if (g_record) {
    record.clear();
    for (const auto& header : g_record->headers) {
      record += "header " + visible(header.name) + ": " +
                (header.value ? "\"" + visible(*header.value) + "\"" : "null") + "\n";
    }
    record += g_record->value ? "value (" + std::to_string(g_record->value->size()) + " bytes, control characters as \\xNN):\n" +
                                    visible(g_record->value->substr(0, 2000))
                              : "value: null";
  }
  std::fprintf(stderr, "\n==== envelope_fuzzer: PROPERTY VIOLATED: %.*s\n%s\n---- record:\n%s\n====\n",
               static_cast<int>(property.size()), property.data(), visible(detail).c_str(), record.c_str());
  std::abort();
}

void check(bool ok, std::string_view property, std::string_view detail = {}) {
  if (!ok) violated(property, detail);
}

// One of each kind of command type: table mode, SQL mode, and natural keys in both modes.
const CommandCatalog& catalog() {
  static const CommandCatalog instance = CommandCatalog::from_yaml(R"(
commands:
  todo.create:
    table: public.todos
  appointment.create:
    sql: INSERT INTO appointments (a) SELECT a FROM jsonb_to_record($1) AS x(a int) RETURNING *
  conversation.create:
    table: conversations
    key_from: [context_type, context_id, created_by]
  note.create:
    sql: INSERT INTO notes (ref) SELECT ref FROM jsonb_to_record($1) AS x(ref text) RETURNING *
    key_from: [ref]
)");
  return instance;
}

// ---------------------------------------------------------------------------------------------
// The record from the input bytes.

InboundRecord to_record(std::string_view data) {
  InboundRecord record;
  record.source = {"commands", 3, 1234};
  for (int headers = 0; headers < 8 && !data.empty() && data.front() == '@'; ++headers) {
    const auto newline = data.find('\n');
    const auto line = data.substr(1, newline == std::string_view::npos ? std::string_view::npos : newline - 1);
    data = newline == std::string_view::npos ? std::string_view{} : data.substr(newline + 1);
    if (line.empty()) continue;
    std::optional<std::string> value;
    if (line.size() >= 2 && line[1] == ':') value = std::string(line.substr(2));
    switch (line[0]) {
      case 'n': return record;  // value stays nullopt
      case 'k': record.headers.push_back({std::string(dedup::kKeyHeader), std::move(value)}); break;
      case 's': record.headers.push_back({std::string(dedup::kScopeHeader), std::move(value)}); break;
      default: record.headers.push_back({std::string("x-") + line[0], std::move(value)}); break;
    }
  }
  record.value = std::string(data);
  return record;
}

// ---------------------------------------------------------------------------------------------
// What parse_command said, in comparable form.

struct Outcome {
  bool accepted = false;
  std::string code;  // rejection code
  std::string message;
  std::optional<std::string> scope, key, type;
  bool natural_key = false;   // accepted: key derived from key_from
  bool missing_key = false;   // rejected: no client key was sent
  dedup::Fingerprint fingerprint{};
  std::string canonical_payload;

  bool operator==(const Outcome&) const = default;

  std::string describe() const {
    std::string out = accepted ? "accepted" : "rejected " + code + ": " + message;
    out += "\n  scope=" + scope.value_or("(none)") + " key=" + key.value_or("(none)") +
           " type=" + type.value_or("(none)");
    if (accepted) {
      out += (natural_key ? " (natural key)" : "");
      out += "\n  fingerprint=" + dedup::to_hex(fingerprint) + "\n  canonical payload=" + canonical_payload;
    }
    return out;
  }
};

// The same decision about the same command, from a differently written record: accepted with the
// same key, scope, type, canonical payload and fingerprint, or rejected with the same code (the
// message may quote positions).
bool same_judgement(const Outcome& a, const Outcome& b) {
  if (a.accepted != b.accepted) return false;
  if (!a.accepted) return a.code == b.code;
  return a.fingerprint == b.fingerprint && a.canonical_payload == b.canonical_payload && a.key == b.key &&
         a.scope == b.scope && a.type == b.type && a.natural_key == b.natural_key;
}

std::string both(const Outcome& a, const Outcome& b) { return "first:  " + a.describe() + "\nsecond: " + b.describe(); }

// Parses and checks what holds for every single outcome.
Outcome parse(const InboundRecord& record, const ParseOptions& options) {
  const ParsedCommand parsed = dedup::parse_command(record, catalog(), options);
  Outcome out;
  if (const auto* rejected = std::get_if<RejectedCommand>(&parsed)) {
    out.code = std::string(dedup::to_string(rejected->rejection.code));
    out.message = rejected->rejection.message;
    out.scope = rejected->scope;
    out.key = rejected->idempotency_key;
    out.type = rejected->type;
    out.missing_key = rejected->missing_key;
    check(!out.message.empty(), "a rejection has a message", out.describe());
    check(out.code != "unknown", "a rejection has a documented code", out.describe());
    return out;
  }
  const auto& command = std::get<Command>(parsed);
  out.accepted = true;
  check(command.type != nullptr && catalog().find(command.type->name) == command.type,
        "an accepted command has a configured type");
  out.scope = command.scope;
  out.key = command.idempotency_key;
  out.type = command.type->name;
  out.natural_key = command.natural_key;
  out.fingerprint = command.fingerprint;
  out.canonical_payload = command.canonical_payload;

  check(!command.scope.empty() && command.scope.size() <= 4 * dedup::kMaxScopeLength,
        "an accepted scope is 1-255 characters", out.describe());
  const auto& key = command.idempotency_key;
  bool key_ok = !key.empty() && key.size() <= dedup::kMaxKeyLength && key.front() != ' ' && key.back() != ' ';
  for (unsigned char c : key) key_ok = key_ok && c >= 0x20 && c <= 0x7e;
  check(key_ok, "an accepted key is 1-255 printable ASCII characters without surrounding spaces",
        out.describe());
  if (command.natural_key) {
    const auto derived = dedup::derive_natural_key(*command.type, command.payload);
    check(std::holds_alternative<std::string>(derived) && std::get<std::string>(derived) == key,
          "a natural key is derive_natural_key(type, payload)", out.describe());
  }
  check(!out.canonical_payload.empty() && out.canonical_payload.front() == '{',
        "the payload is an object", out.describe());
  check(dedup::canonical_json(command.payload) == out.canonical_payload,
        "canonical_payload is canonical_json(payload)", out.describe());
  check(dedup::command_fingerprint(command.type->name, command.payload) == out.fingerprint,
        "the fingerprint is command_fingerprint(type, payload)", out.describe());
  check(dedup::command_fingerprint_of_canonical(command.type->name, out.canonical_payload) == out.fingerprint,
        "the fingerprint is command_fingerprint_of_canonical(type, canonical payload)", out.describe());
  return out;
}

// ---------------------------------------------------------------------------------------------
// An independent, strict RFC 8259 reader that keeps every token as written, to re-serialize a
// value with its object members in another order and other whitespace, and to compare a payload
// with its canonical form. It does not validate UTF-8 (raw bytes are copied) and does not limit
// integers: those are the library's rules, not JSON's.

struct Node {
  enum class Kind { literal, number, string, array, object } kind = Kind::literal;
  std::string text;                      // literal, number, string: the token as written
  std::string decoded;                   // string: its value
  std::vector<Node> items;               // array: elements; object: member values
  std::vector<std::string> keys_text;    // object: member names as written
  std::vector<std::string> keys;         // object: member names decoded
};

class Reader {
 public:
  static constexpr int kMaxDepth = 200;

  // nullopt unless `text` is one JSON value (a leading UTF-8 BOM is skipped and reported).
  static std::optional<Node> read(std::string_view text, bool* bom = nullptr) {
    Reader reader(text);
    if (reader.in_.substr(0, 3) == "\xEF\xBB\xBF") {
      reader.pos_ = 3;
      if (bom) *bom = true;
    } else if (bom) {
      *bom = false;
    }
    Node node;
    reader.space();
    if (!reader.value(node, 0)) return std::nullopt;
    reader.space();
    if (reader.pos_ != reader.in_.size()) return std::nullopt;
    return node;
  }

 private:
  explicit Reader(std::string_view in) : in_(in) {}

  bool at_end() const { return pos_ >= in_.size(); }
  char peek() const { return at_end() ? '\0' : in_[pos_]; }
  void space() {
    while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r')) ++pos_;
  }
  bool eat(char c) {
    if (peek() != c || at_end()) return false;
    ++pos_;
    return true;
  }

  bool value(Node& node, int depth) {
    if (depth > kMaxDepth || at_end()) return false;
    const char c = peek();
    if (c == '{') return object(node, depth + 1);
    if (c == '[') return array(node, depth + 1);
    if (c == '"') {
      node.kind = Node::Kind::string;
      return string(node.text, node.decoded);
    }
    if (c == '-' || (c >= '0' && c <= '9')) return number(node);
    for (std::string_view literal : {"true", "false", "null"}) {
      if (in_.substr(pos_, literal.size()) == literal) {
        node.kind = Node::Kind::literal;
        node.text = literal;
        pos_ += literal.size();
        return true;
      }
    }
    return false;
  }

  bool object(Node& node, int depth) {
    node.kind = Node::Kind::object;
    ++pos_;
    space();
    if (eat('}')) return true;
    while (true) {
      std::string text, decoded;
      if (peek() != '"' || !string(text, decoded)) return false;
      space();
      if (!eat(':')) return false;
      space();
      Node member;
      if (!value(member, depth)) return false;
      node.keys_text.push_back(std::move(text));
      node.keys.push_back(std::move(decoded));
      node.items.push_back(std::move(member));
      space();
      if (eat('}')) return true;
      if (!eat(',')) return false;
      space();
    }
  }

  bool array(Node& node, int depth) {
    node.kind = Node::Kind::array;
    ++pos_;
    space();
    if (eat(']')) return true;
    while (true) {
      Node element;
      if (!value(element, depth)) return false;
      node.items.push_back(std::move(element));
      space();
      if (eat(']')) return true;
      if (!eat(',')) return false;
      space();
    }
  }

  bool digits() {
    const auto start = pos_;
    while (!at_end() && peek() >= '0' && peek() <= '9') ++pos_;
    return pos_ > start;
  }

  bool number(Node& node) {
    node.kind = Node::Kind::number;
    const auto start = pos_;
    eat('-');
    if (eat('0')) {
      // no leading zeros
    } else if (!digits()) {
      return false;
    }
    if (eat('.') && !digits()) return false;
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      if (!eat('+')) eat('-');
      if (!digits()) return false;
    }
    node.text = std::string(in_.substr(start, pos_ - start));
    return true;
  }

  bool hex4(unsigned& out) {
    if (in_.size() - pos_ < 4) return false;
    out = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = in_[pos_++];
      out <<= 4;
      if (c >= '0' && c <= '9') out |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') out |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') out |= static_cast<unsigned>(c - 'A' + 10);
      else return false;
    }
    return true;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  // A string token; lone surrogate escapes are refused (they are not text).
  bool string(std::string& text, std::string& decoded) {
    const auto start = pos_;
    ++pos_;  // opening quote
    while (true) {
      if (at_end()) return false;
      const auto c = static_cast<unsigned char>(in_[pos_++]);
      if (c == '"') break;
      if (c < 0x20) return false;
      if (c != '\\') {
        decoded += static_cast<char>(c);
        continue;
      }
      if (at_end()) return false;
      const char e = in_[pos_++];
      switch (e) {
        case '"': decoded += '"'; break;
        case '\\': decoded += '\\'; break;
        case '/': decoded += '/'; break;
        case 'b': decoded += '\b'; break;
        case 'f': decoded += '\f'; break;
        case 'n': decoded += '\n'; break;
        case 'r': decoded += '\r'; break;
        case 't': decoded += '\t'; break;
        case 'u': {
          unsigned cp = 0;
          if (!hex4(cp)) return false;
          if (cp >= 0xDC00 && cp <= 0xDFFF) return false;
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            unsigned low = 0;
            if (in_.substr(pos_, 2) != "\\u") return false;
            pos_ += 2;
            if (!hex4(low) || low < 0xDC00 || low > 0xDFFF) return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(decoded, cp);
          break;
        }
        default: return false;
      }
    }
    text = std::string(in_.substr(start, pos_ - start));
    return true;
  }

  std::string_view in_;
  std::size_t pos_ = 0;
};

// How to write a value back: member order and whitespace.
enum class Layout {
  reversed_compact,  // members in reverse order, no whitespace at all
  rotated_spaced,    // first member moved last, whitespace everywhere JSON allows it
  as_read_compact,   // members as read, no whitespace
};

// Members with equal (decoded) names stay together and in their order: a later duplicate wins
// (documented in dedup/json_text.hpp), so only the order of distinct names may change.
std::vector<std::size_t> member_order(const Node& node, Layout layout) {
  std::vector<std::string> names;               // distinct names, by first appearance
  std::map<std::string, std::vector<std::size_t>> positions;
  for (std::size_t i = 0; i < node.keys.size(); ++i) {
    auto& at = positions[node.keys[i]];
    if (at.empty()) names.push_back(node.keys[i]);
    at.push_back(i);
  }
  if (layout == Layout::reversed_compact) {
    std::reverse(names.begin(), names.end());
  } else if (layout == Layout::rotated_spaced && names.size() > 1) {
    std::rotate(names.begin(), names.begin() + 1, names.end());
  }
  std::vector<std::size_t> order;
  for (const auto& name : names) {
    for (auto i : positions[name]) order.push_back(i);
  }
  return order;
}

void write(const Node& node, Layout layout, std::string& out) {
  const bool spaced = layout == Layout::rotated_spaced;
  const char* open_pad = spaced ? "\n\t " : "";
  const char* colon = spaced ? " \r\n:\t" : ":";
  const char* comma = spaced ? " ,\n  " : ",";
  const char* close_pad = spaced ? "\r\n" : "";
  switch (node.kind) {
    case Node::Kind::literal:
    case Node::Kind::number:
    case Node::Kind::string: out += node.text; return;
    case Node::Kind::array:
      out += '[';
      out += open_pad;
      for (std::size_t i = 0; i < node.items.size(); ++i) {
        if (i) out += comma;
        write(node.items[i], layout, out);
      }
      out += close_pad;
      out += ']';
      return;
    case Node::Kind::object: {
      out += '{';
      out += open_pad;
      bool first = true;
      for (auto i : member_order(node, layout)) {
        if (!first) out += comma;
        first = false;
        out += node.keys_text[i];
        out += colon;
        write(node.items[i], layout, out);
      }
      out += close_pad;
      out += '}';
      return;
    }
  }
}

std::string written(const Node& node, Layout layout, bool bom) {
  std::string out = bom ? "\xEF\xBB\xBF" : "";
  if (layout == Layout::rotated_spaced) out += " \n";
  write(node, layout, out);
  if (layout == Layout::rotated_spaced) out += "\t\r\n ";
  return out;
}

// The value of a member, as the library reads it: the last one of that name wins.
const Node* member(const Node& object, std::string_view name) {
  const Node* found = nullptr;
  for (std::size_t i = 0; i < object.keys.size(); ++i) {
    if (object.keys[i] == name) found = &object.items[i];
  }
  return found;
}

bool is_integer_text(const std::string& number) { return number.find_first_of(".eE") == std::string::npos; }

// An integer's value as text: "-0" and "0" are the same integer.
std::string integer_value(const std::string& number) {
  return number == "-0" ? "0" : number;
}

// Whether `canonical` (the canonical form) holds the same value as `original` (as sent): same
// types everywhere, same strings, integers with the same value, other numbers as written (or, under
// the old contract, with the same double), objects with the same members (the last duplicate wins).
bool same_value(const Node& original, const Node& canonical, std::string& why, const std::string& path = "$") {
  if (original.kind != canonical.kind) {
    why = path + ": " + original.text + " became " + (canonical.text.empty() ? "a container" : canonical.text);
    return false;
  }
  switch (original.kind) {
    case Node::Kind::literal:
      if (original.text != canonical.text) why = path + ": " + original.text + " became " + canonical.text;
      return original.text == canonical.text;
    case Node::Kind::string:
      if (original.decoded != canonical.decoded) why = path + ": string " + original.text + " became " + canonical.text;
      return original.decoded == canonical.decoded;
    case Node::Kind::number: {
      bool same = false;
      if (is_integer_text(original.text) || is_integer_text(canonical.text)) {
        same = is_integer_text(original.text) && is_integer_text(canonical.text) &&
               integer_value(original.text) == integer_value(canonical.text);
      } else if (kNumbersAsWritten) {
        same = original.text == canonical.text;
      } else {
        same = std::strtod(original.text.c_str(), nullptr) == std::strtod(canonical.text.c_str(), nullptr);
      }
      if (!same) why = path + ": number " + original.text + " became " + canonical.text;
      return same;
    }
    case Node::Kind::array:
      if (original.items.size() != canonical.items.size()) {
        why = path + ": array length changed";
        return false;
      }
      for (std::size_t i = 0; i < original.items.size(); ++i) {
        if (!same_value(original.items[i], canonical.items[i], why, path + "[" + std::to_string(i) + "]")) return false;
      }
      return true;
    case Node::Kind::object: {
      std::map<std::string, const Node*> members;
      for (std::size_t i = 0; i < original.keys.size(); ++i) members[original.keys[i]] = &original.items[i];
      if (members.size() != canonical.keys.size()) {
        why = path + ": object has " + std::to_string(members.size()) + " distinct members, canonical form " +
              std::to_string(canonical.keys.size());
        return false;
      }
      for (std::size_t i = 0; i < canonical.keys.size(); ++i) {
        const auto it = members.find(canonical.keys[i]);
        if (it == members.end()) {
          why = path + ": canonical form has member " + canonical.keys_text[i] + " that was not sent";
          return false;
        }
        if (!same_value(*it->second, canonical.items[i], why, path + "." + canonical.keys_text[i])) return false;
      }
      return true;
    }
  }
  return false;
}

// Canonical form: members sorted bytewise and unique at every depth; strings use only the escapes
// JSON requires (quote, backslash, control characters).
bool is_canonical_node(const Node& node, std::string& why) {
  auto minimal_escapes = [&](const std::string& token) {
    for (std::size_t i = 1; i + 1 < token.size(); ++i) {
      if (token[i] != '\\') continue;
      const char e = token[++i];
      if (e == 'u') {
        // \u00XX for a control character only
        const auto hex = token.substr(i + 1, 4);
        if (hex.size() != 4 || hex[0] != '0' || hex[1] != '0' || (hex[2] != '0' && hex[2] != '1')) {
          why = "string " + token + " escapes a character that needs no escape";
          return false;
        }
        i += 4;
      } else if (e == '/') {
        why = "string " + token + " escapes '/'";
        return false;
      }
    }
    return true;
  };
  switch (node.kind) {
    case Node::Kind::literal:
    case Node::Kind::number: return true;
    case Node::Kind::string: return minimal_escapes(node.text);
    case Node::Kind::array:
      for (const auto& item : node.items) {
        if (!is_canonical_node(item, why)) return false;
      }
      return true;
    case Node::Kind::object:
      for (std::size_t i = 0; i < node.keys.size(); ++i) {
        if (i > 0 && !(node.keys[i - 1] < node.keys[i])) {
          why = "members " + node.keys_text[i - 1] + " and " + node.keys_text[i] + " are not in strictly ascending bytewise order";
          return false;
        }
        if (!minimal_escapes(node.keys_text[i]) || !is_canonical_node(node.items[i], why)) return false;
      }
      return true;
  }
  return false;
}

std::string json_string(std::string_view ascii) { return "\"" + std::string(ascii) + "\""; }

// ---------------------------------------------------------------------------------------------

void check_record(const InboundRecord& record) {
  ParseOptions no_default;                       // 1 MiB, no default scope
  ParseOptions with_default;                     // 1 MiB, --default-scope
  with_default.default_scope = "org-default";
  ParseOptions small;                            // a small --max-message-bytes
  small.max_message_bytes = 128;

  // Deterministic: the same record parsed twice gives the same outcome, to the byte.
  const Outcome plain = parse(record, no_default);
  const Outcome plain_again = parse(record, no_default);
  check(plain == plain_again, "parsing the same record twice gives the same outcome", both(plain, plain_again));
  const Outcome defaulted = parse(record, with_default);
  check(defaulted == parse(record, with_default), "parsing the same record twice gives the same outcome (default scope)",
        defaulted.describe());

  // The default scope only fills in a missing scope.
  if (plain.accepted) {
    check(defaulted == plain, "--default-scope changes nothing unless the scope is missing", both(plain, defaulted));
  } else if (plain.code != "missing_scope") {
    // Rejected for another reason: the same rejection (the scope it reports may be the default).
    check(!defaulted.accepted && defaulted.code == plain.code && defaulted.message == plain.message &&
              defaulted.key == plain.key && defaulted.type == plain.type,
          "--default-scope changes nothing unless the scope is missing", both(plain, defaulted));
  } else {
    check(defaulted.code != "missing_scope", "--default-scope fills a missing scope", defaulted.describe());
  }

  // The size limit: larger values are too_large, the others are judged as without the limit.
  const Outcome limited = parse(record, small);
  if (record.value && record.value->size() > small.max_message_bytes) {
    check(!limited.accepted && limited.code == "too_large", "a value over --max-message-bytes is too_large",
          limited.describe());
  } else {
    check(limited == plain, "a value within --max-message-bytes is judged as without the limit", both(plain, limited));
  }

  // Header order does not decide either: a repeated idempotency-key or idempotency-scope header must
  // not be resolved by its position (clients disagree on first vs last). Which rejection code a
  // record with several bad headers gets may depend on the order they are checked in.
  if (record.headers.size() > 1) {
    InboundRecord variant = record;
    std::reverse(variant.headers.begin(), variant.headers.end());
    for (const auto* options : {&no_default, &with_default}) {
      const Outcome original = options == &no_default ? plain : defaulted;
      const Outcome reordered = parse(variant, *options);
      check(original.accepted ? same_judgement(original, reordered) : !reordered.accepted,
            "header order never decides a command", both(original, reordered));
    }
  }

  if (!record.value) {
    check(!plain.accepted && plain.code == "invalid_json", "a null value is invalid_json", plain.describe());
    return;
  }

  bool bom = false;
  const std::optional<Node> tree = Reader::read(*record.value, &bom);
  if (!tree) {
    // Not JSON by RFC 8259 (as far as the grammar goes): never accepted.
    check(!plain.accepted && !defaulted.accepted, "a value that is not JSON is never accepted", plain.describe());
    return;
  }

  // Key order and whitespace never matter (members with equal names keep their order).
  for (const Layout layout : {Layout::reversed_compact, Layout::rotated_spaced}) {
    InboundRecord variant = record;
    variant.value = written(*tree, layout, bom);
    for (const auto* options : {&no_default, &with_default}) {
      const Outcome original = options == &no_default ? plain : defaulted;
      const Outcome reordered = parse(variant, *options);
      check(same_judgement(original, reordered), "key order and whitespace never matter",
            both(original, reordered) + "\nreordered value: " + *variant.value);
    }
  }

  for (const Outcome* outcome : {&plain, &defaulted}) {
    if (!outcome->accepted) continue;
    // The canonical payload is canonical, and holds the payload that was sent.
    const auto canonical = Reader::read(outcome->canonical_payload);
    check(canonical.has_value() && canonical->kind == Node::Kind::object, "the canonical payload is a JSON object",
          outcome->describe());
    std::string why;
    check(written(*canonical, Layout::as_read_compact, false) == outcome->canonical_payload,
          "the canonical payload has no whitespace", outcome->describe());
    check(is_canonical_node(*canonical, why), "the canonical payload is canonical", why + "\n" + outcome->describe());
    const Node* sent = tree->kind == Node::Kind::object ? member(*tree, "payload") : nullptr;
    check(sent != nullptr, "an accepted command has a payload member", outcome->describe());
    check(same_value(*sent, *canonical, why), "the canonical payload keeps the payload's value",
          why + "\n" + outcome->describe());

    // Idempotent: the canonical payload, parsed again by the same parser, is its own canonical form.
    InboundRecord again;
    again.source = record.source;
    again.value = "{\"idempotency_key\":\"fuzz-key\",\"scope\":\"fuzz-scope\",\"type\":" + json_string(*outcome->type) +
                  ",\"payload\":" + outcome->canonical_payload + "}";
    const Outcome reparsed = parse(again, no_default);
    check(reparsed.accepted && reparsed.canonical_payload == outcome->canonical_payload &&
              reparsed.fingerprint == outcome->fingerprint,
          "canonical JSON is idempotent (parse(canonical) has the same canonical form and fingerprint)",
          both(*outcome, reparsed));
  }
}

}  // namespace

// The other input formats (docs/contract.md §1, "Input formats") over the same record: headers
// x-<c> are noise to the envelope, but the mapped format reads some of them, and the record is
// read as a CloudEvent too (binary mode when a ce_specversion header is present, structured
// otherwise). Properties: never crash, a rejection says why, an accepted command is fingerprinted
// from its own type and canonical payload, and parsing is deterministic.
void check_other_formats(const InboundRecord& record) {
  static const CommandCatalog mapped = CommandCatalog::from_yaml(R"(
commands:
  todo.create:
    table: public.todos
  conversation.create:
    table: conversations
    key_from: [context_type]
input:
  format: mapped
  key: [header:X-K, /meta/id, "/a~1b"]
  scope: [header:x-s, /tenant]
  type: [header:X-T, /kind]
  payload: /data
  types: {Created: todo.create}
)");
  static const CommandCatalog cloudevents = CommandCatalog::from_yaml(R"(
commands:
  todo.create:
    table: public.todos
input:
  format: cloudevents
  types: {com.example.created: todo.create}
)");
  InboundRecord as_event = record;
  if (!as_event.headers.empty() && as_event.headers.front().name == "x-c") {
    // The first header, when it is x-c, turns the record into a binary-mode CloudEvent: x-c, x-i,
    // x-o, x-y are its specversion, id, source and type.
    static const std::map<std::string, std::string> kAttributes = {
        {"x-c", "ce_specversion"}, {"x-i", "ce_id"}, {"x-o", "ce_source"}, {"x-y", "ce_type"}};
    for (auto& header : as_event.headers) {
      if (const auto it = kAttributes.find(header.name); it != kAttributes.end()) header.name = it->second;
    }
  } else {
    as_event.headers.push_back({"content-type", std::string("application/cloudevents+json")});
  }
  for (const auto& [input, format] :
       {std::pair<const InboundRecord*, const CommandCatalog*>{&record, &mapped},
        std::pair<const InboundRecord*, const CommandCatalog*>{&as_event, &cloudevents}}) {
    const ParsedCommand first = dedup::parse_command(*input, *format, ParseOptions{});
    const ParsedCommand again = dedup::parse_command(*input, *format, ParseOptions{});
    if (const auto* rejected = std::get_if<dedup::RejectedCommand>(&first)) {
      check(!rejected->rejection.message.empty(), "format: a rejection says why", "");
      check(std::holds_alternative<dedup::RejectedCommand>(again) &&
                std::get<dedup::RejectedCommand>(again).rejection.code == rejected->rejection.code,
            "format: parsing is deterministic", "");
      continue;
    }
    const auto& command = std::get<Command>(first);
    check(command.fingerprint == dedup::command_fingerprint_of_canonical(command.type->name,
                                                                         command.canonical_payload),
          "format: fingerprint of type + canonical payload", command.canonical_payload);
    check(std::holds_alternative<Command>(again) &&
              std::get<Command>(again).fingerprint == command.fingerprint,
          "format: parsing is deterministic", command.canonical_payload);
    check(!command.idempotency_key.empty() && !command.scope.empty(),
          "format: an accepted command has a key and a scope", command.idempotency_key);
  }
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const InboundRecord record = to_record(input);
  g_record = &record;
  static bool verbose = std::getenv("DEDUP_FUZZ_VERBOSE") != nullptr;  // tests/fuzz/run --show
  if (verbose) {
    std::fprintf(stderr, "%s\n", parse(record, ParseOptions{}).describe().c_str());
    verbose = false;  // once: libFuzzer runs an input again to look for leaks
  }
  check_record(record);
  check_other_formats(record);
  return 0;
}
