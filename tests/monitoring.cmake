# monitoring/: Prometheus rules, their promtool unit tests, the Grafana dashboard and the runbooks.
# Plain commands, no build needed: ctest -L monitoring.
set(DEDUP_PROMTOOL /usr/bin/promtool CACHE FILEPATH "promtool used by the monitoring tests")
set(DEDUP_PYTHON /usr/bin/python3 CACHE FILEPATH "Python 3 (with PyYAML) used by monitoring/check.py")
set(_dedup_monitoring ${PROJECT_SOURCE_DIR}/monitoring)

add_test(NAME monitoring.rules_check
  COMMAND ${DEDUP_PROMTOOL} check rules ${_dedup_monitoring}/rules/dedup-worker.rules.yml)
# promtool resolves rule_files relative to the test file.
add_test(NAME monitoring.rules_unit_tests
  COMMAND ${DEDUP_PROMTOOL} test rules ${_dedup_monitoring}/rules/dedup-worker.rules.test.yml)
add_test(NAME monitoring.alerts_have_runbooks
  COMMAND ${DEDUP_PYTHON} ${_dedup_monitoring}/check.py rules
          ${_dedup_monitoring}/rules/dedup-worker.rules.yml ${PROJECT_SOURCE_DIR}/docs/runbooks.md)
add_test(NAME monitoring.dashboard_promql
  COMMAND ${DEDUP_PYTHON} ${_dedup_monitoring}/check.py dashboard
          ${_dedup_monitoring}/dashboards/dedup-worker.json --promtool ${DEDUP_PROMTOOL})

set_tests_properties(monitoring.rules_check monitoring.rules_unit_tests
                     monitoring.alerts_have_runbooks monitoring.dashboard_promql
  PROPERTIES LABELS monitoring TIMEOUT 120)
