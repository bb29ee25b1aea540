# Prometheus metrics (the dedup::Metrics observer) and the HTTP endpoint serving /metrics, /healthz
# and /readyz. prometheus-cpp's core is public: Metrics::registry() hands out its Registry. civetweb
# (what prometheus-cpp-pull runs on) is private: CivetServer and one CivetHandler per endpoint from
# its C++ library, and its C API for what a handler writes; see metrics.hpp for why.
find_package(civetweb REQUIRED)

dedup_component(metrics
  SOURCES
    src/metrics/metrics.cpp
    src/metrics/server.cpp
  PUBLIC_LIBS dedup::core prometheus-cpp::core
  PRIVATE_LIBS civetweb::civetweb-cpp civetweb::civetweb)
