// The seam between the processor and the database.
#pragma once

#include <span>
#include <vector>

#include "dedup/clock.hpp"
#include "dedup/command.hpp"
#include "dedup/result.hpp"

namespace dedup {

// A key row as stored: what a later command with the same (scope, key) is judged against.
struct StoredKey {
  std::string command_type;
  Fingerprint fingerprint{};
  Status status = Status::created;  // created or conflict: the claimant's final result
  nlohmann::json entity;            // the created row, or null
  nlohmann::json error;             // the conflict, or null
  Timestamp first_processed_at{};
  SourcePosition source;            // the record that claimed the key
};

// The decision table of SPEC §2 for a command whose (scope, key) is stored and not expired:
//   - the very record that claimed the key (same source position and fingerprint), read again
//     after a crash: its original result, identical but for processed_at;
//   - another record with the same fingerprint: `duplicate` of a creation or a replayed
//     `conflict`, replayed = true, with the original entity/error and first_processed_at;
//   - a different fingerprint: `key_reused`.
// Pure: used by every KeyStore implementation, so they cannot disagree on it.
CommandResult resolve_stored(const Command& command, const StoredKey& stored, Timestamp now);

class KeyStore {
 public:
  virtual ~KeyStore() = default;

  // Applies a batch of validated commands atomically: claims the keys that are new (or expired),
  // writes their entities, stores their final results, and answers every other command from the
  // stored row. Returns exactly one result per command, in the same order.
  //
  // Deadlocks, serialization failures and lost connections are retried inside, a bounded number of
  // times. Throws TransientDatabaseError when they persist (nothing is committed; the caller retries
  // the batch later) and PermanentDatabaseError for failures a retry cannot cure.
  virtual std::vector<CommandResult> apply(std::span<const Command> commands, Timestamp now) = 0;
};

}  // namespace dedup
