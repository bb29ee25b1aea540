#include "dedup/fingerprint.hpp"

#include <openssl/evp.h>

#include <memory>
#include <nlohmann/json.hpp>

#include "dedup/errors.hpp"
#include "dedup/json_text.hpp"

namespace dedup {
namespace {

using DigestContext = std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)>;
using Digest = std::unique_ptr<EVP_MD, decltype(&EVP_MD_free)>;

// OpenSSL 3 looks an algorithm up in its providers on every EVP_sha256() init: fetch it once, and
// keep one context per thread (reset by each init), so a fingerprint costs the hashing only.
const EVP_MD* sha256_algorithm() {
  static const Digest algorithm(EVP_MD_fetch(nullptr, "SHA256", nullptr), &EVP_MD_free);
  return algorithm.get();
}

EVP_MD_CTX* thread_context() {
  thread_local DigestContext context(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  return context.get();
}

}  // namespace

std::string canonical_json(const nlohmann::json& value) {
  // write_json already is canonical: keys in bytewise order at every depth (nlohmann's objects
  // are ordered maps), no whitespace, only the mandatory escapes, numbers as written.
  return to_json_text(value);
}

Fingerprint sha256(std::string_view bytes) {
  EVP_MD_CTX* context = thread_context();
  const EVP_MD* algorithm = sha256_algorithm();
  Fingerprint digest{};
  unsigned int length = 0;
  if (!context || !algorithm || EVP_DigestInit_ex2(context, algorithm, nullptr) != 1 ||
      EVP_DigestUpdate(context, bytes.data(), bytes.size()) != 1 ||
      EVP_DigestFinal_ex(context, digest.data(), &length) != 1 || length != digest.size()) {
    throw Error("OpenSSL SHA-256 failed");
  }
  return digest;
}

Fingerprint command_fingerprint(std::string_view type, const nlohmann::json& payload) {
  return command_fingerprint_of_canonical(type, canonical_json(payload));
}

Fingerprint command_fingerprint_of_canonical(std::string_view type,
                                             std::string_view canonical_payload) {
  // Equivalent to canonical_json({"payload": payload, "type": type}): "payload" sorts before
  // "type", and the payload is already canonical.
  std::string canonical = R"({"payload":)";
  canonical += canonical_payload;
  canonical += R"(,"type":)";
  write_json_string(canonical, type);
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
