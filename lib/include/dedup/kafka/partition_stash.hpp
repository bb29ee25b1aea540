// Records fetched but not yet handed to the worker, kept per partition, so that a batch can take
// from several partitions even when the fetch queue holds one partition's records in a long run.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "dedup/record.hpp"

namespace dedup::kafka {

using TopicPartition = std::pair<std::string, std::int32_t>;

// Why: lanes (--db-connections N) route a batch by partition, and a real broker answers a fetch
// with up to max.partition.fetch.bytes (1 MiB) per partition, which librdkafka queues whole. Taken
// in fetch order, a backlog's batch of N × --max-batch records then holds one partition and one
// lane does all the work (measured: 1.00 busy lanes per batch on Kafka 4.4.0). Taking at most
// `per_partition` records from each partition first spreads the batch over the lanes.
class PartitionStash {
 public:
  // `per_partition`: how many records of one partition a batch takes before it turns to the
  // others (no limit: each partition's records in one go, oldest partition first). A batch still
  // fills up from fewer partitions.
  explicit PartitionStash(std::size_t per_partition = std::numeric_limits<std::size_t>::max());

  void push(InboundRecord record);
  bool empty() const noexcept { return records_ == 0; }
  std::size_t size() const noexcept { return records_; }
  // The memory the stashed records hold (memory_bytes): what bounds reading ahead. Key + value
  // alone would let records with empty values and large headers pile up unbounded.
  std::size_t memory() const noexcept { return memory_; }
  // How many records a batch could take within the first, per-partition round: the sum over
  // partitions of min(stashed, per_partition). Fetching on until this reaches the batch size
  // looks past one partition's run for the others.
  std::size_t takeable() const noexcept { return takeable_; }

  // Up to `max_records` records and `max_bytes` of keys + values (at least one record, however
  // large): partitions in the order of their oldest stashed record, at most `per_partition` from
  // each, then, if room is left, more from each in the same order. Each partition's records come
  // out in the order they were pushed (the order across partitions is not fetch order).
  std::vector<InboundRecord> take(std::size_t max_records, std::size_t max_bytes);

  // Drops every stashed record of these partitions (revoked or lost).
  void forget(const std::set<TopicPartition>& partitions);

  // The offset of each partition's first stashed record.
  std::map<TopicPartition, std::int64_t> first_offsets() const;

  // Key, value, headers and a fixed allowance for the record's own structures.
  static std::size_t memory_bytes(const InboundRecord& record) noexcept;

 private:
  struct Stashed {
    std::uint64_t arrival;  // push order, across partitions
    InboundRecord record;
  };
  void recount() noexcept;

  std::size_t per_partition_;
  std::map<TopicPartition, std::deque<Stashed>> partitions_;
  std::uint64_t arrivals_ = 0;
  std::size_t records_ = 0;
  std::size_t memory_ = 0;
  std::size_t takeable_ = 0;
};

}  // namespace dedup::kafka
