#include "dedup/clock.hpp"

#include <algorithm>

#include <fmt/compile.h>
#include <fmt/format.h>

namespace dedup {

std::string format_timestamp(Timestamp t) {
  std::string out;
  append_timestamp(out, t);
  return out;
}

void append_timestamp(std::string& out, Timestamp t) {
  using namespace std::chrono;
  // A result carries two timestamps and its audit line a third, and a batch's results share their
  // processed_at: each thread keeps the last millisecond's text and formats only a new one.
  thread_local sys_time<milliseconds> last_millisecond;
  thread_local char text[40];
  thread_local std::size_t size = 0;
  const auto millisecond = floor<milliseconds>(t);
  if (size == 0 || millisecond != last_millisecond) {
    const auto day = floor<days>(millisecond);
    const year_month_day ymd{day};
    const hh_mm_ss time{millisecond - day};
    const auto written = fmt::format_to_n(
        text, sizeof text, FMT_COMPILE("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z"),
        static_cast<int>(ymd.year()), static_cast<unsigned>(ymd.month()),
        static_cast<unsigned>(ymd.day()), time.hours().count(), time.minutes().count(),
        time.seconds().count(), time.subseconds().count());
    size = std::min(written.size, sizeof text);
    last_millisecond = millisecond;
  }
  out.append(text, size);
}

}  // namespace dedup
