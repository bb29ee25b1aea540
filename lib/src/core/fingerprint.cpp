#include "dedup/fingerprint.hpp"

#include <openssl/evp.h>

#include <memory>
#include <nlohmann/json.hpp>

#include "dedup/errors.hpp"

namespace dedup {
namespace {

using DigestContext = std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)>;

}  // namespace

std::string canonical_json(const nlohmann::json& value) {
  // nlohmann::json stores objects in a std::map, so dump() already writes keys in bytewise order
  // at every depth, without whitespace. Strings are emitted as UTF-8 with only the mandatory
  // escapes; numbers as integers, or doubles in their shortest round-trip form.
  return value.dump();
}

Fingerprint sha256(std::string_view bytes) {
  DigestContext context(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  Fingerprint digest{};
  unsigned int length = 0;
  if (!context || EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr) != 1 ||
      EVP_DigestUpdate(context.get(), bytes.data(), bytes.size()) != 1 ||
      EVP_DigestFinal_ex(context.get(), digest.data(), &length) != 1 || length != digest.size()) {
    throw Error("OpenSSL SHA-256 failed");
  }
  return digest;
}

Fingerprint command_fingerprint(std::string_view type, const nlohmann::json& payload) {
  // Equivalent to canonical_json({"payload": payload, "type": type}) without copying the payload:
  // "payload" sorts before "type".
  std::string canonical = R"({"payload":)";
  canonical += canonical_json(payload);
  canonical += R"(,"type":)";
  canonical += nlohmann::json(type).dump();
  canonical += '}';
  return sha256(canonical);
}

std::string to_hex(const Fingerprint& fingerprint) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(fingerprint.size() * 2);
  for (auto byte : fingerprint) {
    hex += kDigits[byte >> 4];
    hex += kDigits[byte & 0x0f];
  }
  return hex;
}

}  // namespace dedup
