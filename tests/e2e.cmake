# End-to-end suites: the real dedup-worker binary, the dev broker in its own process, real
# PostgreSQL (DEDUP_TEST_DB from scripts/test) and python3-confluent-kafka as the client (the
# system /usr/bin/python3: Debian's python3-confluent-kafka is installed for it).
set(DEDUP_SYSTEM_PYTHON /usr/bin/python3)

# dedup_add_e2e(<name> <module> [LABEL l] [TIMEOUT s])
function(dedup_add_e2e name module)
  cmake_parse_arguments(ARG "" "LABEL;TIMEOUT" "" ${ARGN})
  if(NOT ARG_LABEL)
    set(ARG_LABEL e2e)
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 600)
  endif()
  add_test(NAME ${name}
    COMMAND ${DEDUP_SYSTEM_PYTHON} -m unittest -v ${module}
    WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/e2e)
  set_tests_properties(${name} PROPERTIES
    LABELS ${ARG_LABEL}
    TIMEOUT ${ARG_TIMEOUT}
    ENVIRONMENT "DEDUP_WORKER_BIN=$<TARGET_FILE:dedup-worker>;PYTHONDONTWRITEBYTECODE=1")
endfunction()

dedup_add_e2e(e2e_worker test_worker_e2e)                                 # outcomes, fields, headers
dedup_add_e2e(e2e_worker_robustness test_worker_robustness LABEL robustness TIMEOUT 900)
dedup_add_e2e(e2e_observability test_observability_e2e)                  # /metrics, real Prometheus
