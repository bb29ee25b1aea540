#include "dedup/backoff.hpp"

#include <algorithm>

namespace dedup {

Backoff::Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds cap)
    : initial_(initial), cap_(std::max(cap, initial)), random_(std::random_device{}()) {}

std::chrono::milliseconds Backoff::delay(int attempt) {
  const int shift = std::clamp(attempt, 0, 20);
  const auto full = std::min<std::chrono::milliseconds::rep>(cap_.count(), initial_.count() << shift);
  std::uniform_int_distribution<std::chrono::milliseconds::rep> jitter(full / 2, full);
  return std::chrono::milliseconds(jitter(random_));
}

}  // namespace dedup
