// The logger's sink: stderr, in as few write(2) calls as the loggers' flush policy allows.
//
// spdlog's stderr sink flushes its FILE after every line: one write(2) per line, a third of the
// worker's own CPU in a drain that logs an audit line per created entity. This sink keeps the
// formatted lines in memory and writes them in one call on flush() (a logger's flush_on level, or
// flush_logs()), or as soon as kMaxHeldBytes are held, so no more than that is ever kept.
#pragma once

#include <spdlog/sinks/base_sink.h>

#include <cstddef>
#include <mutex>

namespace dedup {

class StderrSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  static constexpr std::size_t kMaxHeldBytes = std::size_t{64} * 1024;

  StderrSink() = default;
  // What is still held is written: a clean exit loses no line.
  ~StderrSink() override;
  StderrSink(const StderrSink&) = delete;
  StderrSink& operator=(const StderrSink&) = delete;

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override;
  void flush_() override;

 private:
  spdlog::memory_buf_t held_;
};

}  // namespace dedup
