// A clock that tests move by hand.
#pragma once

#include <atomic>

#include "dedup/clock.hpp"

namespace dedup::test {

class ManualClock final : public Clock {
 public:
  explicit ManualClock(Timestamp start = Timestamp(std::chrono::seconds(1'790'000'000)))
      : now_(start.time_since_epoch().count()) {}
  Timestamp now() const override { return Timestamp(std::chrono::microseconds(now_.load())); }
  void advance(std::chrono::microseconds by) { now_ += by.count(); }

 private:
  std::atomic<std::int64_t> now_;
};

}  // namespace dedup::test
