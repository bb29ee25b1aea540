#include "dedup/kafka/settings.hpp"

#include <cctype>

namespace dedup::kafka {

const std::string* find_setting(const KafkaSettings& settings, std::string_view key) {
  const auto it = settings.find(key);
  return it == settings.end() ? nullptr : &it->second;
}

KafkaSettings settings_from_environment(const char* const* environment) {
  KafkaSettings settings;
  for (auto entry = environment; entry && *entry; ++entry) {
    const std::string_view variable(*entry);
    const auto eq = variable.find('=');
    if (!variable.starts_with(kKafkaEnvPrefix) || eq == std::string_view::npos ||
        eq == kKafkaEnvPrefix.size()) {
      continue;
    }
    std::string key(variable.substr(kKafkaEnvPrefix.size(), eq - kKafkaEnvPrefix.size()));
    for (char& c : key) {
      c = c == '_' ? '.' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    settings[std::move(key)] = std::string(variable.substr(eq + 1));
  }
  return settings;
}

}  // namespace dedup::kafka
