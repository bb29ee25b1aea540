// `run --db-connections N`: N database lanes, each a Processor over its own PostgresKeyStore (its
// own connection), behind Lanes. Owns all of them, so that the worker, the bench and the tests
// build their lanes the same way.
#pragma once

#include <cstddef>
#include <limits>
#include <memory>
#include <span>
#include <vector>

#include "dedup/clock.hpp"
#include "dedup/command.hpp"
#include "dedup/config.hpp"
#include "dedup/lanes.hpp"
#include "dedup/observer.hpp"
#include "dedup/postgres.hpp"
#include "dedup/processor.hpp"

namespace dedup {

class DatabaseLanes final : public BatchProcessor {
 public:
  // Opens `count` connections (at least one), each checked as PostgresKeyStore checks it; throws
  // what PostgresKeyStore's constructor throws. The catalog, clock and observer are borrowed and
  // must outlive this object; the observer is shared by the lanes' threads (it must be
  // thread-safe) and is also told of every failed database attempt. A lane's transactions hold at
  // most `max_per_transaction` records (--max-batch); with `max_batch_bytes` (the poll's limit)
  // it decides how many lanes a batch takes (see Lanes).
  DatabaseLanes(std::size_t count, const PostgresOptions& options, const CommandCatalog& catalog,
                const Clock& clock, Observer& observer, const ParseOptions& parse_options,
                std::size_t max_per_transaction,
                std::size_t max_batch_bytes = std::numeric_limits<std::size_t>::max());

  std::vector<CommandResult> process(std::span<const InboundRecord> records) override {
    return lanes_.process(records);
  }
  std::size_t transactions_per_batch() const noexcept override {
    return lanes_.transactions_per_batch();
  }

  // Summed over the lanes' key stores (see PostgresKeyStore).
  std::size_t fast_path_fallbacks() const noexcept;

 private:
  // Fills stores_ and processors_ and returns the lanes for lanes_, which is initialised after
  // them (declaration order).
  std::vector<BatchProcessor*> open(std::size_t count, const PostgresOptions& options,
                                    const CommandCatalog& catalog, const Clock& clock,
                                    Observer& observer, const ParseOptions& parse_options);

  std::vector<std::unique_ptr<PostgresKeyStore>> stores_;
  std::vector<std::unique_ptr<Processor>> processors_;
  Lanes lanes_;
};

}  // namespace dedup
