#include "dedup/database_lanes.hpp"

namespace dedup {

DatabaseLanes::DatabaseLanes(std::size_t count, const PostgresOptions& options,
                             const CommandCatalog& catalog, const Clock& clock, Observer& observer,
                             const ParseOptions& parse_options, std::size_t max_per_transaction,
                             std::size_t max_batch_bytes)
    : lanes_(open(count, options, catalog, clock, observer, parse_options), max_per_transaction,
             max_batch_bytes) {}

std::vector<BatchProcessor*> DatabaseLanes::open(std::size_t count, const PostgresOptions& options,
                                                 const CommandCatalog& catalog, const Clock& clock,
                                                 Observer& observer,
                                                 const ParseOptions& parse_options) {
  std::vector<BatchProcessor*> lanes;
  for (std::size_t lane = 0; lane < count; ++lane) {
    stores_.push_back(std::make_unique<PostgresKeyStore>(options, catalog, &observer));
    processors_.push_back(
        std::make_unique<Processor>(catalog, *stores_.back(), clock, observer, parse_options));
    lanes.push_back(processors_.back().get());
  }
  return lanes;
}

std::size_t DatabaseLanes::fast_path_fallbacks() const noexcept {
  std::size_t fallbacks = 0;
  for (const auto& store : stores_) fallbacks += store->fast_path_fallbacks();
  return fallbacks;
}

}  // namespace dedup
