// Lanes (--db-connections N) without a database: routing by partition, order of results, all
// lanes running at once, and which failure wins when lanes fail.
#include "dedup/lanes.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "dedup/errors.hpp"
#include "support/records.hpp"

namespace dedup {
namespace {

// Answers each record with its own position (in the result's error field), remembers what it was
// given, and can be told to fail or to wait for the other lanes.
class RecordingLane final : public BatchProcessor {
 public:
  std::vector<CommandResult> process(std::span<const InboundRecord> records) override {
    seen.assign(records.begin(), records.end());
    records_in_all += records.size();
    thread = std::this_thread::get_id();
    if (rendezvous != nullptr) rendezvous->arrive_and_wait_for_all();
    if (failure) std::rethrow_exception(failure);
    std::vector<CommandResult> results(records.size());
    for (std::size_t i = 0; i < records.size(); ++i) {
      results[i].error = {{"partition", records[i].source.partition},
                          {"offset", records[i].source.offset}};
    }
    return results;
  }

  // Every lane arrives; none goes on until all have, so the test only passes when the lanes run
  // at the same time. A lane that waits too long reports it instead of hanging the suite.
  struct Rendezvous {
    std::mutex mutex;
    std::condition_variable all_here;
    int expected = 0;
    int arrived = 0;
    bool timed_out = false;
    void arrive_and_wait_for_all() {
      std::unique_lock lock(mutex);
      if (++arrived == expected) all_here.notify_all();
      if (!all_here.wait_for(lock, std::chrono::seconds(30), [&] { return arrived >= expected; })) {
        timed_out = true;
      }
    }
  };

  std::vector<InboundRecord> seen;  // in the last call
  std::size_t records_in_all = 0;
  std::thread::id thread;
  std::exception_ptr failure;
  Rendezvous* rendezvous = nullptr;
};

std::vector<InboundRecord> records_over(int partitions, int per_partition) {
  std::vector<InboundRecord> records;
  for (int offset = 0; offset < per_partition; ++offset) {
    for (int partition = 0; partition < partitions; ++partition) {
      records.push_back(test::record({{"k", offset}}, {"commands", partition, offset}));
    }
  }
  return records;
}

TEST(LanesTest, EachPartitionGoesToOneLaneInOrderAndResultsComeBackInInputOrder) {
  std::vector<RecordingLane> lanes(4);
  Lanes laned({&lanes[0], &lanes[1], &lanes[2], &lanes[3]}, /*max_per_transaction=*/20);
  const auto records = records_over(16, 5);
  const auto results = laned.process(records);

  ASSERT_EQ(results.size(), records.size());
  for (std::size_t i = 0; i < records.size(); ++i) {
    EXPECT_EQ(results[i].error["partition"], records[i].source.partition) << i;
    EXPECT_EQ(results[i].error["offset"], records[i].source.offset) << i;
  }
  for (std::size_t lane = 0; lane < lanes.size(); ++lane) {
    ASSERT_EQ(lanes[lane].seen.size(), 20U) << "16 partitions over 4 lanes: 4 partitions each";
    std::map<int, std::int64_t> last_offset;
    for (const auto& record : lanes[lane].seen) {
      const auto [it, first] = last_offset.emplace(record.source.partition, record.source.offset);
      if (!first) {
        EXPECT_GT(record.source.offset, it->second) << "a partition's order must hold in its lane";
        it->second = record.source.offset;
      }
    }
  }
}

TEST(LanesTest, LanesRunAtTheSameTimeOnThreadsOfTheirOwn) {
  std::vector<RecordingLane> lanes(3);
  RecordingLane::Rendezvous rendezvous;
  rendezvous.expected = 3;
  for (auto& lane : lanes) lane.rendezvous = &rendezvous;
  Lanes laned({&lanes[0], &lanes[1], &lanes[2]}, /*max_per_transaction=*/2);
  ASSERT_EQ(laned.process(records_over(3, 2)).size(), 6U);
  EXPECT_FALSE(rendezvous.timed_out) << "a lane waited for the others: they ran one after another";
  EXPECT_NE(lanes[0].thread, lanes[1].thread);
  EXPECT_NE(lanes[1].thread, lanes[2].thread);
  EXPECT_NE(lanes[0].thread, lanes[2].thread);
}

TEST(LanesTest, ALaneWithNoRecordsIsNotCalledAndOneBusyLaneRunsOnTheCaller) {
  std::vector<RecordingLane> lanes(4);
  // Three transactions' worth, so three lanes are asked for, but all of partition 0: lane 0 alone.
  Lanes laned({&lanes[0], &lanes[1], &lanes[2], &lanes[3]}, /*max_per_transaction=*/1);
  const auto records = records_over(1, 3);
  ASSERT_EQ(laned.process(records).size(), 3U);
  EXPECT_EQ(lanes[0].thread, std::this_thread::get_id());
  for (std::size_t lane = 1; lane < lanes.size(); ++lane) EXPECT_TRUE(lanes[lane].seen.empty());
}

// A batch takes one lane per transaction it fills: a small batch is one transaction on the caller's
// thread however many lanes there are (four transactions of a few records each would cost four
// commits for the work of one), a larger one spreads, a full poll takes them all.
TEST(LanesTest, ABatchTakesOneLanePerTransactionItFills) {
  const auto run = [](const std::vector<InboundRecord>& records) {
    std::vector<RecordingLane> lanes(4);
    Lanes laned({&lanes[0], &lanes[1], &lanes[2], &lanes[3]}, /*max_per_transaction=*/10);
    const auto results = laned.process(records);
    EXPECT_EQ(results.size(), records.size());
    for (std::size_t i = 0; i < results.size(); ++i) {
      EXPECT_EQ(results[i].error["partition"], records[i].source.partition) << i;
      EXPECT_EQ(results[i].error["offset"], records[i].source.offset) << i;
    }
    std::vector<std::size_t> shares(lanes.size());
    std::transform(lanes.begin(), lanes.end(), shares.begin(),
                   [](const RecordingLane& lane) { return lane.records_in_all; });
    return std::pair(shares, lanes[0].thread);
  };
  const auto [ten, ten_thread] = run(records_over(10, 1));
  EXPECT_EQ(ten, (std::vector<std::size_t>{10, 0, 0, 0})) << "ten partitions, one transaction's worth";
  EXPECT_EQ(ten_thread, std::this_thread::get_id());
  EXPECT_EQ(run(records_over(11, 1)).first, (std::vector<std::size_t>{6, 5, 0, 0}));
  EXPECT_EQ(run(records_over(16, 2)).first, (std::vector<std::size_t>{8, 8, 8, 8}))
      << "32 records: four transactions' worth";
  EXPECT_EQ(run(records_over(16, 5)).first, (std::vector<std::size_t>{20, 20, 20, 20}))
      << "eight transactions' worth: every lane, each running two";
}

// Records of 400 bytes, one per partition.
std::vector<InboundRecord> large_records(int count) {
  std::vector<InboundRecord> records;
  records.reserve(static_cast<std::size_t>(count));
  for (int partition = 0; partition < count; ++partition) {
    records.push_back(test::record({{"k", std::string(390, 'x')}}, {"commands", partition, 0}));
    records.back().value->resize(400, ' ');
  }
  return records;
}

// A poll is cut at N batches' worth of records or at its byte limit, whichever comes first: large
// commands fill it with few records, and a backlog of them must still take every lane.
TEST(LanesTest, ABatchTakesALanePerNthOfThePollsByteLimitItFills) {
  std::vector<RecordingLane> lanes(4);
  Lanes laned({&lanes[0], &lanes[1], &lanes[2], &lanes[3]}, /*max_per_transaction=*/100,
              /*max_batch_bytes=*/4000);
  const auto records = large_records(8);  // 3,200 bytes: four lanes' worth of 1,000, 8 records
  ASSERT_EQ(laned.process(records).size(), 8U);
  for (const auto& lane : lanes) EXPECT_EQ(lane.records_in_all, 2U);
  std::vector<RecordingLane> small(4);
  Lanes by_records({&small[0], &small[1], &small[2], &small[3]}, 100, 4000);
  ASSERT_EQ(by_records.process(large_records(2)).size(), 2U);
  EXPECT_EQ(small[0].records_in_all, 2U) << "800 bytes and 2 records: one lane's worth";
  EXPECT_THROW(Lanes({&small[0]}, 1, 0), std::invalid_argument);
}

// Whole partitions can leave a lane more than a transaction's worth, which it would run after its
// first while a lane stays free: a lane more is taken instead.
TEST(LanesTest, NoLaneRunsTwoTransactionsInTurnWhileALaneIsFree) {
  std::vector<InboundRecord> records;
  std::int64_t offset = 0;
  for (const auto& [partition, count] : std::vector<std::pair<int, int>>{{0, 8}, {1, 6}, {2, 6}}) {
    for (int i = 0; i < count; ++i) records.push_back(test::record({{"k", offset}}, {"commands", partition, offset++}));
  }
  std::vector<RecordingLane> lanes(4);
  Lanes laned({&lanes[0], &lanes[1], &lanes[2], &lanes[3]}, /*max_per_transaction=*/10);
  ASSERT_EQ(laned.process(records).size(), 20U);  // two transactions' worth: 8 | 6 + 6 on two lanes
  std::vector<std::size_t> shares(lanes.size());
  std::transform(lanes.begin(), lanes.end(), shares.begin(),
                 [](const RecordingLane& lane) { return lane.records_in_all; });
  EXPECT_EQ(shares, (std::vector<std::size_t>{8, 6, 6, 0}));
}

// At a moderate rate a batch takes one lane; the next batch starts one lane further, so that every
// connection stays in use (a server or a NAT may close one left idle).
TEST(LanesTest, TheFirstLaneRotatesFromBatchToBatch) {
  std::vector<RecordingLane> lanes(3);
  Lanes laned({&lanes[0], &lanes[1], &lanes[2]}, /*max_per_transaction=*/10);
  for (int batch = 0; batch < 6; ++batch) ASSERT_EQ(laned.process(records_over(2, 1)).size(), 2U);
  for (const auto& lane : lanes) EXPECT_EQ(lane.records_in_all, 4U) << "two one-lane batches each";
  // A batch over several lanes starts one lane further too (six batches in: lane 0, then lane 1),
  // and its results keep their order.
  for (const std::vector<std::size_t>& expected : {std::vector<std::size_t>{14, 14, 4}, std::vector<std::size_t>{14, 24, 14}}) {
    const auto records = records_over(2, 10);  // two transactions' worth
    const auto results = laned.process(records);
    for (std::size_t i = 0; i < results.size(); ++i) EXPECT_EQ(results[i].error["offset"], records[i].source.offset);
    std::vector<std::size_t> totals(lanes.size());
    std::transform(lanes.begin(), lanes.end(), totals.begin(),
                   [](const RecordingLane& lane) { return lane.records_in_all; });
    EXPECT_EQ(totals, expected);
  }
}

TEST(LanesTest, APermanentFailureWinsOverATransientOneAndEveryLaneFinishesFirst) {
  std::vector<RecordingLane> lanes(3);
  lanes[0].failure = std::make_exception_ptr(TransientDatabaseError("connection lost", "08006"));
  lanes[2].failure = std::make_exception_ptr(PermanentDatabaseError("schema gone", "3F000"));
  Lanes laned({&lanes[0], &lanes[1], &lanes[2]}, /*max_per_transaction=*/4);
  EXPECT_THROW(laned.process(records_over(3, 4)), PermanentDatabaseError);
  for (const auto& lane : lanes) EXPECT_EQ(lane.seen.size(), 4U) << "every lane ran to its end";

  lanes[2].failure = nullptr;
  EXPECT_THROW(laned.process(records_over(3, 4)), TransientDatabaseError)
      << "only transient failures: the batch is retried";
}

TEST(LanesTest, OneLaneIsTheProcessorItself) {
  RecordingLane only;
  Lanes laned({&only}, 16);
  ASSERT_EQ(laned.process(records_over(8, 2)).size(), 16U);
  EXPECT_EQ(only.thread, std::this_thread::get_id());
  EXPECT_THROW(Lanes({}, 16), std::invalid_argument);
}

// An assignor may give a pod partitions {0, 4, 8, 12}: p mod 4 would put them all in lane 0.
TEST(LanesTest, AnyPartitionSetSpreadsEvenlyAndEachPartitionStaysInOneLane) {
  std::vector<InboundRecord> records;
  for (int offset = 0; offset < 3; ++offset) {
    for (const int partition : {12, 0, 8, 4}) {
      records.push_back(test::record({{"k", offset}}, {"commands", partition, offset}));
    }
  }
  const auto lanes = Lanes::assign(records, 4);
  ASSERT_EQ(lanes.size(), records.size());
  std::map<int, std::size_t> lane_of_partition;
  std::map<std::size_t, int> records_per_lane;
  for (std::size_t i = 0; i < records.size(); ++i) {
    ASSERT_LT(lanes[i], 4U);
    const auto [it, first] = lane_of_partition.emplace(records[i].source.partition, lanes[i]);
    EXPECT_EQ(it->second, lanes[i]) << "partition " << records[i].source.partition << " split";
    ++records_per_lane[lanes[i]];
  }
  EXPECT_EQ(records_per_lane.size(), 4U) << "four partitions, four lanes: one each";
  // The same partition number on two topics is two partitions.
  const std::vector<InboundRecord> two_topics = {test::record({{"k", 1}}, {"a", 0, 0}),
                                                 test::record({{"k", 1}}, {"b", 0, 0})};
  const auto split = Lanes::assign(two_topics, 2);
  EXPECT_NE(split[0], split[1]);
  EXPECT_EQ(Lanes::assign(records, 1), std::vector<std::size_t>(records.size(), 0));
}

// Lanes take whole partitions, so one partition can bring a lane more than --max-batch records
// (a poll takes N batches' worth): the lane then runs several transactions of at most that many,
// in the partition's order, and the results still come back in input order.
TEST(LanesTest, ALaneWithMoreThanABatchRunsTransactionsOfAtMostOneBatch) {
  struct CountingLane final : BatchProcessor {
    std::vector<std::size_t> calls;
    std::vector<std::int64_t> offsets;
    std::vector<CommandResult> process(std::span<const InboundRecord> records) override {
      calls.push_back(records.size());
      std::vector<CommandResult> results(records.size());
      for (std::size_t i = 0; i < records.size(); ++i) {
        offsets.push_back(records[i].source.offset);
        results[i].error = {{"offset", records[i].source.offset}};
      }
      return results;
    }
  };
  for (const std::size_t lanes_count : {1U, 2U}) {
    std::vector<CountingLane> lanes(lanes_count);
    std::vector<BatchProcessor*> pointers;
    for (auto& lane : lanes) pointers.push_back(&lane);
    Lanes laned(pointers, /*max_per_transaction=*/3);
    const auto records = records_over(1, 7);  // one partition, 7 records: one lane gets them all
    const auto results = laned.process(records);
    ASSERT_EQ(results.size(), 7U);
    for (std::size_t i = 0; i < results.size(); ++i) EXPECT_EQ(results[i].error["offset"], records[i].source.offset);
    EXPECT_EQ(lanes[0].calls, (std::vector<std::size_t>{3, 3, 1})) << lanes_count << " lane(s)";
    EXPECT_EQ(lanes[0].offsets, (std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6}));
  }
  // A transaction of the share that fails fails the batch (to be retried whole: the ones before
  // it committed and replay), and none after it runs.
  struct FailingSecond final : BatchProcessor {
    std::vector<std::size_t> calls;
    std::vector<CommandResult> process(std::span<const InboundRecord> records) override {
      calls.push_back(records.size());
      if (calls.size() == 2) throw TransientDatabaseError("connection lost", "08006");
      return std::vector<CommandResult>(records.size());
    }
  } failing;
  Lanes one_lane({&failing}, 3);
  EXPECT_THROW(one_lane.process(records_over(1, 7)), TransientDatabaseError);
  EXPECT_EQ(failing.calls, (std::vector<std::size_t>{3, 3}));
  CountingLane spare;
  EXPECT_THROW(Lanes({&spare}, 0), std::invalid_argument);
  EXPECT_THROW(Lanes::assign(records_over(2, 1), 0), std::invalid_argument);
}

// A batch is done when its slowest lane is. Dealt in turn, partitions of 6, 1, 1, 1, 1 and 2
// records would give two lanes 8 and 4; largest first to the least loaded lane gives 6 and 6.
TEST(LanesTest, LanesGetEvenSharesOfUnevenPartitions) {
  std::vector<InboundRecord> records;
  std::int64_t offset = 0;
  for (const auto& [partition, count] : std::vector<std::pair<int, int>>{{0, 6}, {1, 1}, {2, 1}, {3, 1}, {4, 1}, {5, 2}}) {
    for (int i = 0; i < count; ++i) {
      records.push_back(test::record({{"k", offset}}, {"commands", partition, offset}));
      ++offset;
    }
  }
  std::rotate(records.begin(), records.begin() + 7, records.end());  // batch order does not matter
  const auto lanes = Lanes::assign(records, 2);
  std::map<std::size_t, int> records_per_lane;
  std::map<int, std::size_t> lane_of_partition;
  for (std::size_t i = 0; i < records.size(); ++i) {
    ++records_per_lane[lanes[i]];
    const auto [it, first] = lane_of_partition.emplace(records[i].source.partition, lanes[i]);
    EXPECT_EQ(it->second, lanes[i]) << "partition " << records[i].source.partition << " split";
  }
  EXPECT_EQ(records_per_lane[0], 6);
  EXPECT_EQ(records_per_lane[1], 6);
  EXPECT_NE(lane_of_partition[0], lane_of_partition[5]);
  // One partition larger than all others together: it has a lane to itself.
  std::vector<InboundRecord> skewed;
  for (int i = 0; i < 10; ++i) skewed.push_back(test::record({{"k", i}}, {"commands", 7, i}));
  for (int p = 0; p < 4; ++p) skewed.push_back(test::record({{"k", p}}, {"commands", p, 0}));
  const auto skewed_lanes = Lanes::assign(skewed, 3);
  for (std::size_t i = 10; i < skewed.size(); ++i) EXPECT_NE(skewed_lanes[i], skewed_lanes[0]);
}

}  // namespace
}  // namespace dedup
