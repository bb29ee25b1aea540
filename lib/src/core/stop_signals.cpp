#include "dedup/stop_signals.hpp"

#include <csignal>
#include <stdexcept>

namespace dedup {
namespace {

std::atomic<Stoppable*> g_stop_target{nullptr};
static_assert(std::atomic<Stoppable*>::is_always_lock_free, "read from a signal handler");

extern "C" void on_stop_signal(int /*signal*/) {
  if (Stoppable* target = g_stop_target.load()) target->request_stop();
}

}  // namespace

struct StopSignals::PreviousHandlers {
  struct sigaction term {};
  struct sigaction intr {};
};

StopSignals::StopSignals(Stoppable& target) : previous_(std::make_unique<PreviousHandlers>()) {
  Stoppable* expected = nullptr;
  if (!g_stop_target.compare_exchange_strong(expected, &target)) {
    throw std::logic_error("StopSignals: another instance is alive");
  }
  struct sigaction action {};
  action.sa_handler = &on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, &previous_->term);
  sigaction(SIGINT, &action, &previous_->intr);
}

StopSignals::~StopSignals() {
  sigaction(SIGTERM, &previous_->term, nullptr);
  sigaction(SIGINT, &previous_->intr, nullptr);
  g_stop_target.store(nullptr);
}

}  // namespace dedup
