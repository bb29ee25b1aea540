// The one retry delay policy: exponential from `initial`, capped at `cap`, each delay randomized to
// [50%, 100%] so that clients that failed together (racing workers, a database restart) do not
// retry together.
#pragma once

#include <chrono>
#include <random>

namespace dedup {

class Backoff {
 public:
  Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds cap);

  // The delay before retry number `attempt` (0-based).
  std::chrono::milliseconds delay(int attempt);

 private:
  std::chrono::milliseconds initial_;
  std::chrono::milliseconds cap_;
  std::minstd_rand random_;
};

}  // namespace dedup
