// Time, behind an interface so tests control it (key expiry, first_processed_at).
#pragma once

#include <chrono>
#include <string>

namespace dedup {

// Microseconds: the precision Postgres stores in timestamptz, so a time read back from the key
// table equals the one written.
using Timestamp = std::chrono::sys_time<std::chrono::microseconds>;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual Timestamp now() const = 0;
};

class SystemClock final : public Clock {
 public:
  Timestamp now() const override {
    return std::chrono::time_point_cast<std::chrono::microseconds>(std::chrono::system_clock::now());
  }
};

// RFC 3339 in UTC with milliseconds, e.g. "2026-11-22T10:00:00.123Z" (SPEC §2).
std::string format_timestamp(Timestamp t);
// The same text appended to `out` (it needs no escaping inside a JSON string).
void append_timestamp(std::string& out, Timestamp t);

}  // namespace dedup
