// An in-memory dedup::KeyStore for unit tests: no database, same decisions as the Postgres store.
//
// A command whose (scope, key) is new claims it and "creates" the entity {"id": n, ...payload}
// (n counts from 1; a payload "id" wins, as it would in an INSERT naming the column). Every
// command, the claimant included, is then answered by dedup::resolve_stored against the stored row,
// exactly as PostgresKeyStore does, so the two stores cannot disagree on the decision table of SPEC
// §2. Not modelled: expiry, conflicts (constraint violations), cross-scope reuse, Postgres refusing
// a value. Not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "dedup/key_store.hpp"

namespace dedup::test {

class InMemoryKeyStore final : public KeyStore {
 public:
  // Throws the exception set by fail_next_apply, once; otherwise never throws.
  std::vector<CommandResult> apply(std::span<const Command> commands, Timestamp now) override {
    ++apply_calls_;
    batches_.emplace_back(commands.begin(), commands.end());
    if (pending_failure_) {
      // Nothing is written: like a rolled-back transaction.
      std::rethrow_exception(std::exchange(pending_failure_, nullptr));
    }
    std::vector<CommandResult> results;
    results.reserve(commands.size());
    for (const auto& command : commands) {
      auto [it, claimed] = keys_.try_emplace({command.scope, command.idempotency_key});
      if (claimed) {
        nlohmann::json entity = {{"id", next_id_++}};
        entity.update(command.payload);
        it->second = StoredKey{.command_type = command.type->name,
                               .fingerprint = command.fingerprint,
                               .status = Status::created,
                               .entity = std::move(entity),
                               .error = nullptr,
                               .first_processed_at = now,
                               .source = command.source};
      }
      results.push_back(resolve_stored(command, it->second, now));
    }
    return results;
  }

  // The next apply() records its batch, writes nothing and throws `error` (e.g. a
  // TransientDatabaseError).
  template <typename Exception>
  void fail_next_apply(Exception error) {
    pending_failure_ = std::make_exception_ptr(std::move(error));
  }

  // The stored row of (scope, key), or nullptr.
  const StoredKey* find(const std::string& scope, const std::string& key) const {
    const auto it = keys_.find({scope, key});
    return it == keys_.end() ? nullptr : &it->second;
  }

  std::size_t size() const noexcept { return keys_.size(); }
  std::size_t apply_calls() const noexcept { return apply_calls_; }
  // Every batch handed to apply(), failed ones included, in call order.
  const std::vector<std::vector<Command>>& batches() const noexcept { return batches_; }

 private:
  std::map<std::pair<std::string, std::string>, StoredKey> keys_;  // (scope, key) -> row
  std::int64_t next_id_ = 1;
  std::size_t apply_calls_ = 0;
  std::vector<std::vector<Command>> batches_;
  std::exception_ptr pending_failure_;
};

}  // namespace dedup::test
