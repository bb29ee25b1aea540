// The payload fingerprint of SPEC §1: SHA-256 over the canonical JSON of {"type":…, "payload":…}.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

namespace dedup {

using Fingerprint = std::array<std::uint8_t, 32>;

// Canonical JSON: object keys sorted (bytewise) at every depth, no insignificant whitespace, arrays
// in their order, strings as UTF-8 with only the escapes JSON requires. Numbers as written
// (dedup/json_text.hpp): 1, 1.0, 1e2 and 100 are four different texts.
std::string canonical_json(const nlohmann::json& value);

// SHA-256 through OpenSSL's EVP interface. Throws dedup::Error if OpenSSL fails (it does not in
// practice; the check is there so a broken crypto library cannot produce a zero fingerprint).
Fingerprint sha256(std::string_view bytes);

// The command fingerprint: sha256(canonical_json({"payload": payload, "type": type})). The key and
// the scope are not part of it.
Fingerprint command_fingerprint(std::string_view type, const nlohmann::json& payload);

// The same, from canonical_json(payload) already computed (parse_command keeps it for reuse).
Fingerprint command_fingerprint_of_canonical(std::string_view type,
                                             std::string_view canonical_payload);

std::string to_hex(const Fingerprint& fingerprint);

}  // namespace dedup
