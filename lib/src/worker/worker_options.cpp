#include "dedup/worker_options.hpp"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <iterator>
#include <string_view>

#include "dedup/errors.hpp"

namespace dedup {
namespace {

constexpr std::string_view kFailpoints[] = {"after_db_commit", "after_db_commit_in_flight",
                                            "after_results_acked", "before_offset_commit",
                                            "after_offset_commit_sent",
                                            "after_offset_commit_deferred"};

void require_positive(std::chrono::milliseconds value, const char* flag) {
  if (value <= std::chrono::milliseconds::zero()) throw ConfigError(flag, "must be positive");
}

void require_not_negative(std::chrono::milliseconds value, const char* flag) {
  if (value < std::chrono::milliseconds::zero()) throw ConfigError(flag, "must not be negative");
}

}  // namespace

Failpoint failpoint_from_environment() {
  // Read once, at start-up, before any thread that could change the environment exists.
  const char* env = std::getenv(kFailpointEnv);  // NOLINT(concurrency-mt-unsafe)
  if (env == nullptr || *env == '\0') return {};
  const std::string_view spec(env);
  const auto colon = spec.find(':');
  Failpoint failpoint{std::string(spec.substr(0, colon)), 1};
  if (colon != std::string_view::npos) {
    const std::string_view n = spec.substr(colon + 1);
    const auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), failpoint.hit);
    if (ec != std::errc() || end != n.data() + n.size() || failpoint.hit < 1) {
      throw ConfigError(kFailpointEnv, "count must be a positive integer: " + std::string(spec));
    }
  }
  if (std::find(std::begin(kFailpoints), std::end(kFailpoints), failpoint.name) ==
      std::end(kFailpoints)) {
    throw ConfigError(kFailpointEnv, "unknown failpoint '" + failpoint.name + "'");
  }
  return failpoint;
}

WorkerOptions checked(WorkerOptions options) {
  if (options.brokers.empty()) throw ConfigError("--brokers", "is required");
  if (options.commands_topic.empty()) throw ConfigError("--commands-topic", "must not be empty");
  if (options.results_topic.empty()) options.results_topic = options.commands_topic + ".results";
  if (options.dlq_topic.empty()) options.dlq_topic = options.commands_topic + ".dlq";
  // Writing results or dead letters into the input topic would feed the worker its own output.
  if (options.results_topic == options.commands_topic) {
    throw ConfigError("--results-topic", "must differ from --commands-topic");
  }
  if (options.dlq_topic == options.commands_topic) {
    throw ConfigError("--dlq-topic", "must differ from --commands-topic");
  }
  if (options.max_batch_records == 0) throw ConfigError("--max-batch", "must be at least 1");
  if (options.max_batch_bytes == 0) throw ConfigError("max_batch_bytes", "must be at least 1");
  // 0 is meaningful for these: poll without waiting; abandon the in-flight batch at once; commit
  // after every batch.
  require_not_negative(options.max_batch_wait, "--batch-wait");
  require_not_negative(options.drain_timeout, "--drain-timeout");
  require_not_negative(options.commit_interval, "--commit-interval");
  // 0 would run a cleanup transaction or a lag query on every poll.
  require_positive(options.cleanup_interval, "--cleanup-interval");
  require_positive(options.lag_report_interval, "lag_report_interval");
  if (options.backoff_initial <= std::chrono::milliseconds::zero() ||
      options.backoff_max < options.backoff_initial) {
    throw ConfigError("backoff", "need 0 < initial <= max");
  }
  if (!options.failpoint.name.empty() && options.failpoint.hit < 1) {
    throw ConfigError(kFailpointEnv, "count must be a positive integer");
  }
  return options;
}

}  // namespace dedup
