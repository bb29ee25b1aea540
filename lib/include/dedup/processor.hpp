// The dedup core: records in, one result per record out.
#pragma once

#include <span>
#include <vector>

#include "dedup/clock.hpp"
#include "dedup/command.hpp"
#include "dedup/config.hpp"
#include "dedup/key_store.hpp"
#include "dedup/observer.hpp"
#include "dedup/record.hpp"
#include "dedup/result.hpp"

namespace dedup {

// What the worker loop hands a batch to. process() returns one result per record, in input
// order, or throws what KeyStore::apply throws (then no result of the batch may be published).
class BatchProcessor {
 public:
  virtual ~BatchProcessor() = default;
  virtual std::vector<CommandResult> process(std::span<const InboundRecord> records) = 0;
  // How many transactions one process() call runs at once at most: the worker polls up to this
  // many times --max-batch records, so that each transaction still gets a full batch.
  virtual std::size_t transactions_per_batch() const noexcept { return 1; }
};

class Processor final : public BatchProcessor {
 public:
  // The catalog, store, clock and observer are borrowed and must outlive the processor.
  Processor(const CommandCatalog& catalog, KeyStore& store, const Clock& clock,
            Observer& observer, ParseOptions options);

  // Validates every record, applies the valid ones through the key store in one transaction, and
  // returns one result per record, in input order. Records rejected by validation never reach the
  // store. Throws what KeyStore::apply throws; then no result of the batch may be published.
  std::vector<CommandResult> process(std::span<const InboundRecord> records) override;

 private:
  const CommandCatalog& catalog_;
  KeyStore& store_;
  const Clock& clock_;
  Observer& observer_;
  ParseOptions options_;
};

}  // namespace dedup
