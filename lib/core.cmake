dedup_component(core
  SOURCES
    src/core/backoff.cpp
    src/core/clock.cpp
    src/core/command.cpp
    src/core/config.cpp
    src/core/duration.cpp
    src/core/fingerprint.cpp
    src/core/input_formats.cpp
    src/core/lanes.cpp
    src/core/json_parse.cpp
    src/core/json_write.cpp
    src/core/logging.cpp
    src/core/outbound.cpp
    src/core/processor.cpp
    src/core/result.cpp
    src/core/stderr_sink.cpp
    src/core/stop_signals.cpp
    src/core/utf8.cpp
  PUBLIC_LIBS nlohmann_json::nlohmann_json
  PRIVATE_LIBS OpenSSL::Crypto yaml-cpp fmt::fmt spdlog::spdlog)
