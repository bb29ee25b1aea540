#include "dedup/kafka/partition_stash.hpp"

#include <algorithm>
#include <stdexcept>

namespace dedup::kafka {
namespace {

// An InboundRecord, its deque slot and the strings' heap blocks, roughly: what a record with an
// empty value and no headers still costs.
constexpr std::size_t kRecordOverhead = 256;

}  // namespace

PartitionStash::PartitionStash(std::size_t per_partition) : per_partition_(per_partition) {
  if (per_partition_ == 0) throw std::invalid_argument("PartitionStash: at least one record per partition");
}

std::size_t PartitionStash::memory_bytes(const InboundRecord& record) noexcept {
  std::size_t total = kRecordOverhead + record.payload_bytes() + record.source.topic.size();
  for (const RecordHeader& header : record.headers) {
    total += sizeof(RecordHeader) + header.name.size() + (header.value ? header.value->size() : 0);
  }
  return total;
}

void PartitionStash::push(InboundRecord record) {
  auto& queue = partitions_[{record.source.topic, record.source.partition}];
  const std::size_t memory = memory_bytes(record);
  queue.push_back({arrivals_, std::move(record)});  // may throw: counters after it
  ++arrivals_;
  if (queue.size() <= per_partition_) ++takeable_;
  memory_ += memory;
  ++records_;
}

std::vector<InboundRecord> PartitionStash::take(std::size_t max_records, std::size_t max_bytes) {
  std::vector<std::pair<std::uint64_t, std::deque<Stashed>*>> oldest_first;
  oldest_first.reserve(partitions_.size());
  for (auto& [partition, queue] : partitions_) {
    if (!queue.empty()) oldest_first.emplace_back(queue.front().arrival, &queue);
  }
  std::sort(oldest_first.begin(), oldest_first.end());

  std::vector<InboundRecord> batch;
  std::size_t total = 0;
  // Moves up to `limit` records of `queue` into the batch; false once the batch is full.
  const auto take_from = [&](std::deque<Stashed>& queue, std::size_t limit) {
    for (std::size_t taken = 0; taken < limit && !queue.empty(); ++taken) {
      const std::size_t size = queue.front().record.payload_bytes();
      if (batch.size() >= max_records || (!batch.empty() && total + size > max_bytes)) return false;
      const std::size_t memory = memory_bytes(queue.front().record);
      batch.push_back(std::move(queue.front().record));  // may throw: counters after it
      queue.pop_front();
      total += size;
      memory_ -= memory;
      --records_;
    }
    return batch.size() < max_records;
  };
  bool room = true;
  for (auto& entry : oldest_first) {
    if (!(room = take_from(*entry.second, per_partition_))) break;
  }
  for (auto& entry : oldest_first) {
    if (!room || !(room = take_from(*entry.second, std::numeric_limits<std::size_t>::max()))) break;
  }
  std::erase_if(partitions_, [](const auto& entry) { return entry.second.empty(); });
  recount();
  return batch;
}

void PartitionStash::forget(const std::set<TopicPartition>& partitions) {
  for (const TopicPartition& partition : partitions) {
    const auto found = partitions_.find(partition);
    if (found == partitions_.end()) continue;
    for (const Stashed& stashed : found->second) memory_ -= memory_bytes(stashed.record);
    records_ -= found->second.size();
    partitions_.erase(found);
  }
  recount();
}

std::map<TopicPartition, std::int64_t> PartitionStash::first_offsets() const {
  std::map<TopicPartition, std::int64_t> first;
  for (const auto& [partition, queue] : partitions_) {
    if (!queue.empty()) first.emplace(partition, queue.front().record.source.offset);
  }
  return first;
}

void PartitionStash::recount() noexcept {
  takeable_ = 0;
  for (const auto& [partition, queue] : partitions_) takeable_ += std::min(queue.size(), per_partition_);
}

}  // namespace dedup::kafka
