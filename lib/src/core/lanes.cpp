#include "dedup/lanes.hpp"

#include <exception>
#include <algorithm>
#include <future>
#include <string_view>
#include <system_error>
#include <utility>
#include <stdexcept>

#include "dedup/errors.hpp"

namespace dedup {
namespace {

// A lane's share of a batch: the records (copied: the lane's thread reads them while the caller
// waits) and where each one's result goes back.
struct Share {
  std::vector<InboundRecord> records;
  std::vector<std::size_t> slots;
};

bool is_transient(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const TransientDatabaseError&) {
    return true;
  } catch (...) {
    return false;
  }
}

}  // namespace

Lanes::Lanes(std::vector<BatchProcessor*> lanes, std::size_t max_per_transaction,
             std::size_t max_batch_bytes)
    : lanes_(std::move(lanes)), max_per_transaction_(max_per_transaction), max_batch_bytes_(max_batch_bytes) {
  if (lanes_.empty()) throw std::invalid_argument("Lanes: at least one lane");
  if (max_per_transaction_ == 0) throw std::invalid_argument("Lanes: at least one record per transaction");
  if (max_batch_bytes_ == 0) throw std::invalid_argument("Lanes: at least one byte per batch");
  for (const BatchProcessor* lane : lanes_) {
    if (lane == nullptr) throw std::invalid_argument("Lanes: null lane");
  }
}

std::vector<std::size_t> Lanes::assign(std::span<const InboundRecord> records,
                                       std::size_t lanes) {
  if (lanes == 0) throw std::invalid_argument("Lanes::assign: at least one lane");
  using Partition = std::pair<std::string_view, std::int32_t>;
  // The batch's distinct partitions, sorted, with their records.
  std::vector<std::pair<Partition, std::size_t>> partitions;
  partitions.reserve(records.size());
  for (const InboundRecord& record : records) {
    partitions.push_back({{record.source.topic, record.source.partition}, 0});
  }
  std::sort(partitions.begin(), partitions.end());
  partitions.erase(std::unique(partitions.begin(), partitions.end()), partitions.end());
  const auto index_of = [&](const InboundRecord& record) {
    const auto at = std::lower_bound(
        partitions.begin(), partitions.end(), Partition(record.source.topic, record.source.partition),
        [](const auto& entry, const Partition& p) { return entry.first < p; });
    return static_cast<std::size_t>(at - partitions.begin());
  };
  std::vector<std::size_t> partition_of_record;
  partition_of_record.reserve(records.size());
  for (const InboundRecord& record : records) {
    partition_of_record.push_back(index_of(record));
    ++partitions[partition_of_record.back()].second;
  }

  // Largest partition first, each to the lane with the fewest records so far (ties: the lower
  // lane). A batch is done when its slowest lane is: a lane given two large partitions while
  // another gets two small ones keeps three connections waiting on one.
  std::vector<std::size_t> by_size(partitions.size());
  for (std::size_t i = 0; i < by_size.size(); ++i) by_size[i] = i;
  std::stable_sort(by_size.begin(), by_size.end(), [&](std::size_t a, std::size_t b) {
    return partitions[a].second > partitions[b].second;
  });
  std::vector<std::size_t> load(lanes, 0);
  std::vector<std::size_t> lane_of_partition(partitions.size());
  for (const std::size_t p : by_size) {
    const auto lane =
        static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    lane_of_partition[p] = lane;
    load[lane] += partitions[p].second;
  }

  std::vector<std::size_t> lane_of_record;
  lane_of_record.reserve(records.size());
  for (const std::size_t p : partition_of_record) lane_of_record.push_back(lane_of_partition[p]);
  return lane_of_record;
}

std::vector<CommandResult> Lanes::process_share(BatchProcessor& lane,
                                                std::span<const InboundRecord> records) const {
  if (records.size() <= max_per_transaction_) return lane.process(records);
  std::vector<CommandResult> results;
  results.reserve(records.size());
  for (std::size_t start = 0; start < records.size(); start += max_per_transaction_) {
    auto part = lane.process(
        records.subspan(start, std::min(max_per_transaction_, records.size() - start)));
    results.insert(results.end(), std::make_move_iterator(part.begin()),
                   std::make_move_iterator(part.end()));
  }
  return results;
}

std::size_t Lanes::lanes_for(std::span<const InboundRecord> records) const noexcept {
  const auto rounded_up = [](std::size_t amount, std::size_t unit) {
    return amount / unit + (amount % unit != 0 ? 1 : 0);
  };
  std::size_t bytes = 0;
  for (const InboundRecord& record : records) bytes += record.payload_bytes();
  const std::size_t bytes_per_lane = std::max<std::size_t>(1, max_batch_bytes_ / lanes_.size());
  const std::size_t wanted =
      std::max(rounded_up(records.size(), max_per_transaction_), rounded_up(bytes, bytes_per_lane));
  return std::clamp<std::size_t>(wanted, 1, lanes_.size());
}

std::vector<std::size_t> Lanes::route(std::span<const InboundRecord> records, std::size_t taken) const {
  std::vector<std::size_t> lane_of_record = assign(records, taken);
  while (taken < lanes_.size()) {
    std::vector<std::size_t> load(taken, 0);
    for (const std::size_t lane : lane_of_record) ++load[lane];
    if (*std::max_element(load.begin(), load.end()) <= max_per_transaction_) break;
    lane_of_record = assign(records, ++taken);
  }
  return lane_of_record;
}

std::vector<CommandResult> Lanes::process(std::span<const InboundRecord> records) {
  const std::size_t first = std::exchange(first_lane_, (first_lane_ + 1) % lanes_.size());
  const std::size_t taken = lanes_for(records);
  if (taken == 1) return process_share(*lanes_[first], records);

  std::vector<Share> shares(lanes_.size());
  const std::vector<std::size_t> lane_of_record = route(records, taken);
  for (std::size_t i = 0; i < records.size(); ++i) {
    Share& share = shares[(lane_of_record[i] + first) % lanes_.size()];
    share.records.push_back(records[i]);
    share.slots.push_back(i);
  }

  // Every lane but the first busy one runs on a thread of its own; that one on the caller's.
  std::vector<std::future<std::vector<CommandResult>>> running(lanes_.size());
  std::vector<std::size_t> inline_lanes;
  std::size_t here = lanes_.size();
  for (std::size_t lane = 0; lane < lanes_.size(); ++lane) {
    if (shares[lane].records.empty()) continue;
    if (here == lanes_.size()) {
      here = lane;
      continue;
    }
    try {
      running[lane] = std::async(std::launch::async, [this, lane, &shares] {
        return process_share(*lanes_[lane], shares[lane].records);
      });
    } catch (const std::system_error&) {
      // No thread to be had: this lane runs on the caller's thread, after the others started.
      inline_lanes.push_back(lane);
    }
  }

  std::vector<std::vector<CommandResult>> answers(lanes_.size());
  std::vector<std::exception_ptr> errors;
  if (here < lanes_.size()) inline_lanes.insert(inline_lanes.begin(), here);
  for (const std::size_t lane : inline_lanes) {
    try {
      answers[lane] = process_share(*lanes_[lane], shares[lane].records);
    } catch (...) {
      errors.push_back(std::current_exception());
    }
  }
  for (std::size_t lane = 0; lane < lanes_.size(); ++lane) {
    if (!running[lane].valid()) continue;
    try {
      answers[lane] = running[lane].get();  // waits: no lane outlives this call
    } catch (...) {
      errors.push_back(std::current_exception());
    }
  }
  if (!errors.empty()) {
    for (const auto& error : errors) {
      if (!is_transient(error)) std::rethrow_exception(error);
    }
    std::rethrow_exception(errors.front());
  }

  std::vector<CommandResult> results(records.size());
  for (std::size_t lane = 0; lane < lanes_.size(); ++lane) {
    if (answers[lane].size() != shares[lane].slots.size()) {
      throw std::logic_error("a lane returned " + std::to_string(answers[lane].size()) +
                             " results for " + std::to_string(shares[lane].slots.size()) +
                             " records");
    }
    for (std::size_t k = 0; k < answers[lane].size(); ++k) {
      results[shares[lane].slots[k]] = std::move(answers[lane][k]);
    }
  }
  return results;
}

}  // namespace dedup
