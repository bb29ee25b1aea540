// The one place that turns SIGTERM and SIGINT into a stop request: the worker (`run`) and the dev
// broker (`dev-broker`) both shut down through it, so both restore the previous handlers the same
// way and both stay async-signal-safe.
#pragma once

#include <atomic>
#include <memory>

namespace dedup {

// Something a signal handler may ask to stop. request_stop() must be async-signal-safe: in
// practice one lock-free atomic store.
class Stoppable {
 public:
  virtual void request_stop() noexcept = 0;

 protected:
  ~Stoppable() = default;
};

// A Stoppable that is only a flag, for loops that poll it.
class StopFlag final : public Stoppable {
 public:
  void request_stop() noexcept override { stop_.store(true); }
  const std::atomic<bool>& flag() const noexcept { return stop_; }

 private:
  std::atomic<bool> stop_{false};
};

static_assert(std::atomic<bool>::is_always_lock_free, "request_stop must be async-signal-safe");

// Routes SIGTERM and SIGINT to target.request_stop() while alive; restores the previous handlers
// when destroyed. One at a time (throws std::logic_error if another is alive): a process has one
// set of handlers.
class StopSignals {
 public:
  explicit StopSignals(Stoppable& target);
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct PreviousHandlers;
  std::unique_ptr<PreviousHandlers> previous_;
};

}  // namespace dedup
