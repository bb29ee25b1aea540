#include "stderr_sink.hpp"

#include <poll.h>
#include <unistd.h>

#include <cerrno>

namespace dedup {

StderrSink::~StderrSink() {
  std::lock_guard lock(mutex_);
  flush_();
}

void StderrSink::sink_it_(const spdlog::details::log_msg& msg) {
  formatter_->format(msg, held_);
  if (held_.size() >= kMaxHeldBytes) flush_();
}

void StderrSink::flush_() {
  const char* data = held_.data();
  std::size_t left = held_.size();
  while (left > 0) {
    const ssize_t written = ::write(STDERR_FILENO, data, left);
    if (written < 0 && errno == EINTR) continue;
    if (written < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // A non-blocking stderr whose reader is behind: wait for room rather than drop the lines.
      pollfd room{.fd = STDERR_FILENO, .events = POLLOUT, .revents = 0};
      if (::poll(&room, 1, -1) >= 0 || errno == EINTR) continue;
    }
    // A closed or failing stderr drops the lines, as a FILE's write would: logging never stops
    // the worker.
    if (written <= 0) break;
    data += written;
    left -= static_cast<std::size_t>(written);
  }
  held_.clear();
}

}  // namespace dedup
