// PartitionStash without a broker: the order a batch takes records in, the per-partition first
// round that spreads a batch over partitions (so lanes get work), and the bounds.
#include "dedup/kafka/partition_stash.hpp"

#include <gtest/gtest.h>

#include <limits>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/records.hpp"

namespace dedup::kafka {
namespace {

using Positions = std::vector<std::pair<std::int32_t, std::int64_t>>;

InboundRecord at(std::int32_t partition, std::int64_t offset, std::size_t value_bytes = 10) {
  return test::record_raw(std::string(value_bytes, 'v'), {"commands", partition, offset});
}

Positions positions(const std::vector<InboundRecord>& batch) {
  Positions out;
  for (const InboundRecord& r : batch) out.emplace_back(r.source.partition, r.source.offset);
  return out;
}

// A real broker's fetch, as librdkafka queues it: each partition's records in one run.
PartitionStash runs_of(std::size_t per_partition, int partitions, int per_run) {
  PartitionStash stash(per_partition);
  for (int p = 0; p < partitions; ++p) {
    for (int o = 0; o < per_run; ++o) stash.push(at(p, o));
  }
  return stash;
}

TEST(PartitionStash, ABatchSpansPartitionsWhenTheFetchHoldsEachInOneRun) {
  // 4 partitions of 7 records each, in runs; batches of 8 with at most 2 per partition first.
  PartitionStash stash = runs_of(2, 4, 7);
  EXPECT_EQ(stash.takeable(), 8u);
  const auto batch = stash.take(8, 1 << 20);
  EXPECT_EQ(positions(batch), (Positions{{0, 0}, {0, 1}, {1, 0}, {1, 1}, {2, 0}, {2, 1}, {3, 0}, {3, 1}}));
  EXPECT_EQ(stash.size(), 20u);
  // Taken in fetch order, the same batch would have been 7 of partition 0 and 1 of partition 1.
  PartitionStash plain = runs_of(std::numeric_limits<std::size_t>::max(), 4, 7);
  EXPECT_EQ(positions(plain.take(8, 1 << 20)),
            (Positions{{0, 0}, {0, 1}, {0, 2}, {0, 3}, {0, 4}, {0, 5}, {0, 6}, {1, 0}}));
}

TEST(PartitionStash, FewerPartitionsStillFillTheBatchInOrder) {
  // One partition only: the first round takes 2, the second the rest, in offset order.
  PartitionStash stash = runs_of(2, 1, 7);
  EXPECT_EQ(stash.takeable(), 2u);
  EXPECT_EQ(positions(stash.take(5, 1 << 20)), (Positions{{0, 0}, {0, 1}, {0, 2}, {0, 3}, {0, 4}}));
  EXPECT_EQ(positions(stash.take(5, 1 << 20)), (Positions{{0, 5}, {0, 6}}));
  EXPECT_TRUE(stash.empty());
  EXPECT_EQ(stash.memory(), 0u);
  EXPECT_EQ(stash.takeable(), 0u);
}

TEST(PartitionStash, EveryPartitionKeepsItsOrderAcrossBatchesAndNothingIsLostOrRepeated) {
  PartitionStash stash(3);
  // Interleaved pushes of 5 partitions, uneven.
  std::map<std::int32_t, std::int64_t> next;
  for (int i = 0; i < 200; ++i) {
    const std::int32_t p = (i * 7 + i / 3) % 5;
    stash.push(at(p, next[p]++));
  }
  std::map<std::int32_t, std::int64_t> expected;
  std::size_t total = 0;
  while (!stash.empty()) {
    const auto batch = stash.take(9, 1 << 20);
    ASSERT_FALSE(batch.empty());
    ASSERT_LE(batch.size(), 9u);
    for (const InboundRecord& r : batch) {
      EXPECT_EQ(r.source.offset, expected[r.source.partition]++) << "partition " << r.source.partition;
    }
    total += batch.size();
  }
  EXPECT_EQ(total, 200u);
  EXPECT_EQ(expected, next);
}

TEST(PartitionStash, OldestPartitionFirstSoNoneWaitsForever) {
  // More partitions with records than a batch can serve: the ones waiting longest go first.
  PartitionStash stash(1);
  stash.push(at(5, 0));
  stash.push(at(3, 0));
  stash.push(at(9, 0));
  stash.push(at(5, 1));
  EXPECT_EQ(positions(stash.take(2, 1 << 20)), (Positions{{5, 0}, {3, 0}}));
  stash.push(at(3, 1));
  // Partition 9 has waited longest now, then 5 (offset 1), then 3.
  EXPECT_EQ(positions(stash.take(2, 1 << 20)), (Positions{{9, 0}, {5, 1}}));
  EXPECT_EQ(positions(stash.take(2, 1 << 20)), (Positions{{3, 1}}));
}

TEST(PartitionStash, BytesBoundTheBatchButOneRecordAlwaysGoes) {
  PartitionStash stash(2);
  stash.push(at(0, 0, 100));
  stash.push(at(1, 0, 100));
  stash.push(at(2, 0, 100));
  EXPECT_EQ(positions(stash.take(10, 250)), (Positions{{0, 0}, {1, 0}}));
  PartitionStash big(2);
  big.push(at(0, 0, 5000));
  big.push(at(0, 1, 10));
  EXPECT_EQ(positions(big.take(10, 100)), (Positions{{0, 0}}));  // larger than the bound: alone
  EXPECT_EQ(big.size(), 1u);
}

TEST(PartitionStash, ForgottenPartitionsAreGoneWithTheirCounts) {
  PartitionStash stash = runs_of(2, 3, 4);
  stash.forget({{"commands", 1}, {"commands", 7}});
  EXPECT_EQ(stash.size(), 8u);
  EXPECT_EQ(stash.memory(), 8 * PartitionStash::memory_bytes(at(0, 0)));
  EXPECT_EQ(stash.takeable(), 4u);
  EXPECT_EQ((stash.first_offsets()),
            (std::map<TopicPartition, std::int64_t>{{{"commands", 0}, 0}, {{"commands", 2}, 0}}));
  const auto batch = stash.take(100, 1 << 20);
  EXPECT_EQ(batch.size(), 8u);
  for (const InboundRecord& r : batch) EXPECT_NE(r.source.partition, 1);
}

TEST(PartitionStash, FirstOffsetsAreEachPartitionsNextRecord) {
  PartitionStash stash = runs_of(2, 2, 5);
  (void)stash.take(3, 1 << 20);  // 0:0, 0:1, 1:0
  EXPECT_EQ((stash.first_offsets()),
            (std::map<TopicPartition, std::int64_t>{{{"commands", 0}, 2}, {{"commands", 1}, 1}}));
}

// Reading ahead stops at a memory bound: key + value alone would let records with empty values
// and large headers (or just many empty records) pile up without limit.
TEST(PartitionStash, MemoryCountsHeadersAndOverheadNotOnlyKeyAndValue) {
  PartitionStash stash(2);
  stash.push(test::record_raw(std::nullopt, {"commands", 0, 0},
                              {test::header("h", std::string(10'000, 'x'))}));
  for (int o = 1; o <= 100; ++o) stash.push(test::record_raw(std::string(), {"commands", 0, o}));
  const std::size_t empty_record =
      PartitionStash::memory_bytes(test::record_raw(std::string(), {"commands", 0, 1}));
  EXPECT_GE(empty_record, 64u);
  EXPECT_GE(stash.memory(), 10'000u + 101 * empty_record);
  (void)stash.take(1, 1 << 20);  // the one with the header
  EXPECT_EQ(stash.memory(), 100 * empty_record);
  stash.forget({{"commands", 0}});
  EXPECT_EQ(stash.memory(), 0u);
  EXPECT_TRUE(stash.empty());
}

TEST(PartitionStash, ZeroPerPartitionIsRefused) {
  EXPECT_THROW(PartitionStash(0), std::invalid_argument);
}

}  // namespace
}  // namespace dedup::kafka
