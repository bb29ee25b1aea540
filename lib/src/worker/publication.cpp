#include "worker/publication.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <span>

namespace dedup {

Publication::Publication(kafka::Producer& producer, std::vector<InboundRecord> batch,
                         std::vector<CommandResult> results, const OutputTopics& topics)
    : producer_(producer), batch_(std::move(batch)), results_(std::move(results)), topics_(topics) {
  outbound_.reserve(batch_.size());
  origins_.reserve(batch_.size());
  for (std::size_t i = 0; i < batch_.size(); ++i) {
    origins_.push_back({i, false});
    if (results_[i].rejection) origins_.push_back({i, true});
  }
  for (const Origin& origin : origins_) outbound_.push_back(build(origin, /*compact=*/false));
  delivery_ = producer_.send(outbound_);
}

OutboundRecord Publication::build(const Origin& origin, bool compact) const {
  const OutputLimit limit{topics_.max_bytes, compact};
  const CommandResult& result = results_[origin.record];
  return origin.dead_letter
             ? make_dead_letter(batch_[origin.record], *result.rejection, topics_.dlq, limit)
             : make_result_record(result, topics_.results, limit);
}

void Publication::resend() { delivery_ = producer_.send(outbound_); }

kafka::BatchDelivery Publication::finish(std::chrono::steady_clock::time_point deadline) {
  kafka::BatchDelivery delivery = producer_.wait(delivery_, deadline);
  if (delivery.ok() || delivery.too_large.size() != delivery.failed) return delivery;
  // Every failure was "too large". A topic's max.message.bytes limits a whole record batch, so a
  // record may have been refused only for the company it was batched with.
  kafka::BatchDelivery outcome{delivery.delivered, 0, {}, {}, delivery.acknowledged_at};
  std::size_t compacted = 0;
  for (const auto index : delivery.too_large) {
    kafka::BatchDelivery alone = producer_.send_batch(std::span(&outbound_[index], 1), deadline);
    if (!alone.ok() && alone.too_large.size() == alone.failed) {
      const OutboundRecord cut = build(origins_[index], /*compact=*/true);
      alone = producer_.send_batch(std::span(&cut, 1), deadline);
      ++compacted;
    }
    outcome.delivered += alone.delivered;
    outcome.acknowledged_at = std::max(outcome.acknowledged_at, alone.acknowledged_at);
    outcome.failed += alone.failed;
    if (outcome.first_error.empty()) outcome.first_error = alone.first_error;
  }
  if (compacted > 0) {
    spdlog::warn(
        "{} record(s) refused by Kafka as too large on their own; written cut down "
        "(docs/contract.md §2-3)",
        compacted);
  }
  return outcome;
}

}  // namespace dedup
