#include "dedup/duration.hpp"

#include <fmt/format.h>

#include <cctype>
#include <limits>

#include "dedup/errors.hpp"

namespace dedup {

std::chrono::milliseconds parse_duration(std::string_view text, std::string_view flag) {
  using namespace std::chrono;
  auto fail = [&](std::string_view why) -> ConfigError {
    return ConfigError(std::string(flag),
                       fmt::format("'{}' is not a duration ({}); use e.g. 7d, 36h, 90s, 1m30s, 250ms",
                                   text, why));
  };
  if (text.empty()) throw fail("empty");
  milliseconds total{0};
  std::size_t i = 0;
  while (i < text.size()) {
    std::int64_t number = 0;
    const std::size_t digits_start = i;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
      if (number > std::numeric_limits<std::int64_t>::max() / 10 - 9) throw fail("too large");
      number = number * 10 + (text[i] - '0');
      ++i;
    }
    if (i == digits_start) throw fail("expected a number");
    const std::size_t unit_start = i;
    while (i < text.size() && std::isalpha(static_cast<unsigned char>(text[i]))) ++i;
    const auto unit = text.substr(unit_start, i - unit_start);
    std::int64_t scale = 0;
    if (unit == "ms") scale = 1;
    else if (unit == "s") scale = 1000;
    else if (unit == "m") scale = 60'000;
    else if (unit == "h") scale = 3'600'000;
    else if (unit == "d") scale = 86'400'000;
    else throw fail(unit.empty() ? "missing unit" : "unknown unit");
    if (number > std::numeric_limits<std::int64_t>::max() / scale) throw fail("too large");
    total += milliseconds(number * scale);
  }
  return total;
}

std::string format_duration(std::chrono::milliseconds duration) {
  auto ms = duration.count();
  if (ms == 0) return "0s";
  std::string out;
  for (const auto& [scale, unit] : {std::pair{86'400'000LL, "d"}, {3'600'000LL, "h"}, {60'000LL, "m"},
                                    {1'000LL, "s"}, {1LL, "ms"}}) {
    if (ms >= scale) {
      out += fmt::format("{}{}", ms / scale, unit);
      ms %= scale;
    }
  }
  return out;
}

}  // namespace dedup
