// `run --db-connections N`: up to N database transactions in flight at once. A batch is split by
// partition over as many lanes as it fills transactions (lanes_for()), at most N (assign()), each
// lane a Processor over its own key store (its own connection); the lanes run at the same time and
// their results are put back in the batch's order.
//
// Why not always all N: a batch of 250 records spread over 4 lanes is 4 transactions, 4 commits and
// 4 flushes of the WAL for the work of one. Under a backlog every poll fills all N (by records or
// by bytes); at a moderate rate the spare lanes cost the machine CPU it would rather give to the
// tail (bench, 16 partitions, 4 lanes at half the maximum rate on real Kafka: machine busy
// 0.88-0.90 spread, 0.76-0.79 packed).
//
// Why this keeps exactly one effect: per-partition order holds (a partition's records all go to
// one lane, in order), and two lanes racing for one key are two transactions racing for it, which
// the key store already settles between workers. A lane that fails makes the whole batch fail
// after every lane has finished: the lanes that committed replay the same results when the batch
// is retried (the very record that claimed a key gets its original result back).
#pragma once

#include <cstddef>
#include <limits>
#include <span>
#include <vector>

#include "dedup/processor.hpp"

namespace dedup {

class Lanes final : public BatchProcessor {
 public:
  // The lanes are borrowed and must outlive this object; at least one. Each lane is used by one
  // thread at a time (its own), so a lane needs no locking of its own; the observer the lanes
  // share must be thread-safe (Metrics, LoggingObserver and FanOutObserver are).
  // A lane's transactions hold at most `max_per_transaction` records (--max-batch, at least 1):
  // a lane gets whole partitions, so one partition that fills a poll of N batches' worth would
  // otherwise be one transaction N times the size asked for. With `max_batch_bytes` (the poll's
  // limit on keys + values, WorkerOptions::max_batch_bytes) it decides how many lanes a batch
  // takes: see lanes_for().
  Lanes(std::vector<BatchProcessor*> lanes, std::size_t max_per_transaction,
        std::size_t max_batch_bytes = std::numeric_limits<std::size_t>::max());

  // Results in input order. When lanes fail, rethrows after all of them have finished: a
  // PermanentDatabaseError or any other error before a TransientDatabaseError, so a retry is only
  // attempted when every failure was transient.
  std::vector<CommandResult> process(std::span<const InboundRecord> records) override;

  // The lane of each record: a partition's records all go to one lane, in order, and the lanes
  // get as even a share of the batch as whole partitions allow (largest partition first, to the
  // least loaded lane), whatever set of partitions the assignor gave (a pod may get {0, 4, 8, 12}).
  // Per batch, not per process: every lane finishes before the next batch starts, so nothing
  // needs a partition to keep its lane.
  // Throws std::invalid_argument for zero lanes.
  static std::vector<std::size_t> assign(std::span<const InboundRecord> records,
                                         std::size_t lanes);

  std::size_t transactions_per_batch() const noexcept override { return lanes_.size(); }

 private:
  // How many lanes a batch takes: one per `max_per_transaction_` records or per N-th of
  // `max_batch_bytes_` (so that a poll cut by either limit, a backlog's, takes all N), whichever
  // asks for more; at least one, at most N.
  std::size_t lanes_for(std::span<const InboundRecord> records) const noexcept;

  // The lane of each record (0 .. lanes taken - 1): assign() over `taken` lanes (lanes_for()),
  // and one lane more while whole partitions leave a lane more than a transaction's worth (it
  // would run two in turn) and a lane is still free.
  std::vector<std::size_t> route(std::span<const InboundRecord> records, std::size_t taken) const;

  // One lane's records in transactions of at most max_per_transaction_, in order. One that fails
  // fails the share after the ones before it committed: as with lanes, the retried batch replays
  // them.
  std::vector<CommandResult> process_share(BatchProcessor& lane,
                                           std::span<const InboundRecord> records) const;

  std::vector<BatchProcessor*> lanes_;
  std::size_t max_per_transaction_;
  std::size_t max_batch_bytes_;
  // Where a batch's lanes start, one further each batch: at a moderate rate a batch takes one
  // lane, and without this the others' connections would sit idle for hours (a server's
  // idle_session_timeout or a NAT would then drop them, to be found by the next burst).
  std::size_t first_lane_ = 0;
};

}  // namespace dedup
