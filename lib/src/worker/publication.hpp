// A batch whose results and dead letters are on their way to Kafka: what the worker loop keeps
// between sending them and committing the batch's offsets, so that the next batch's transaction
// runs while Kafka acknowledges this one (docs/design.md, "The worker loop").
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include "dedup/kafka/producer.hpp"
#include "dedup/outbound.hpp"
#include "dedup/record.hpp"
#include "dedup/result.hpp"
#include "dedup/worker.hpp"

namespace dedup {

class Publication {
 public:
  // Builds one result per record and a dead letter per rejected one, and sends them (returns
  // without waiting for acknowledgements).
  Publication(kafka::Producer& producer, std::vector<InboundRecord> batch,
              std::vector<CommandResult> results, const OutputTopics& topics);

  // Waits until Kafka acknowledged every record, or `deadline`. A record refused as too large is
  // sent again alone, whole, and cut down only if refused alone: whether a record is cut down
  // then depends on that record only, and a replay publishes the same thing.
  kafka::BatchDelivery finish(std::chrono::steady_clock::time_point deadline);

  // Sends every record again, after finish() failed (a retry may duplicate some, which the
  // results contract allows).
  void resend();

  std::vector<InboundRecord>& batch() noexcept { return batch_; }
  const std::vector<CommandResult>& results() const noexcept { return results_; }

 private:
  // Which record each outbound record answers, so that one refused as too large can be written
  // again cut down.
  struct Origin {
    std::size_t record;
    bool dead_letter;
  };
  OutboundRecord build(const Origin& origin, bool compact) const;

  kafka::Producer& producer_;
  std::vector<InboundRecord> batch_;
  std::vector<CommandResult> results_;
  OutputTopics topics_;
  std::vector<OutboundRecord> outbound_;
  std::vector<Origin> origins_;
  kafka::Producer::InFlight delivery_;
};

}  // namespace dedup
