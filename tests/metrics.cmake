# Unit tests of the metrics component: the Observer hooks read back from the registry, and the
# HTTP endpoint (/metrics, /healthz, /readyz) on a port picked by the OS.
dedup_add_test(metrics_tests LABEL unit
  SOURCES
    unit/metrics_test.cpp
    unit/metrics_server_test.cpp
  LIBS dedup::metrics)
