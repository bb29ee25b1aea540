// Durations on the command line and in env vars: "7d", "36h", "90s", "1m30s", "250ms".
#pragma once

#include <chrono>
#include <string>
#include <string_view>

namespace dedup {

// Parses a sequence of <integer><unit> with units d, h, m, s, ms (e.g. "1h30m"). A bare integer is
// refused: "10" could mean seconds or milliseconds. Throws ConfigError(flag, ...) naming the flag.
std::chrono::milliseconds parse_duration(std::string_view text, std::string_view flag);

// The inverse, for messages: "7d", "1h30m", "250ms".
std::string format_duration(std::chrono::milliseconds duration);

}  // namespace dedup
