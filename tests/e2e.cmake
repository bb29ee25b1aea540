# End-to-end suites: the real dedup-worker binary, the dev broker in its own process, real
# PostgreSQL (DEDUP_TEST_DB from scripts/test) and python3-confluent-kafka as the client (the
# system /usr/bin/python3: Debian's python3-confluent-kafka is installed for it).
set(DEDUP_SYSTEM_PYTHON /usr/bin/python3)

# dedup_add_e2e(<name> <module> [more modules or Module.Class...] [LABEL l] [TIMEOUT s] [ENV VAR=value...])
function(dedup_add_e2e name module)
  cmake_parse_arguments(ARG "" "LABEL;TIMEOUT" "ENV" ${ARGN})
  if(NOT ARG_LABEL)
    set(ARG_LABEL e2e)
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 600)
  endif()
  set(env "")
  foreach(setting IN LISTS ARG_ENV)
    string(APPEND env ";${setting}")
  endforeach()
  add_test(NAME ${name}
    COMMAND ${DEDUP_SYSTEM_PYTHON} -m unittest -v ${module} ${ARG_UNPARSED_ARGUMENTS}
    WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/e2e)
  set_tests_properties(${name} PROPERTIES
    LABELS ${ARG_LABEL}
    TIMEOUT ${ARG_TIMEOUT}
    ENVIRONMENT "DEDUP_WORKER_BIN=$<TARGET_FILE:dedup-worker>;PYTHONDONTWRITEBYTECODE=1${env}")
endfunction()

dedup_add_e2e(e2e_worker test_worker_e2e)                                 # outcomes, fields, headers
dedup_add_e2e(e2e_worker_robustness test_worker_robustness LABEL robustness TIMEOUT 900)
dedup_add_e2e(e2e_observability test_observability_e2e)                  # /metrics, real Prometheus
dedup_add_e2e(e2e_input_formats test_input_formats)                      # CloudEvents, mapped topics
# Seeded hostile streams, group churn, failpoint crashes; one invariant checker (adversary.py).
# ~4 min in a debug build; scripts/soak runs the same scenarios for longer.
dedup_add_e2e(e2e_adversarial test_adversarial LABEL adversarial TIMEOUT 900)

# The same suites on a real Apache Kafka broker (scripts/kafka: one JVM per module, fresh topics
# per test), the newest tested 4.x; and what only a real broker shows, with the compatibility
# matrix of docs/operations.md, once per tested version (4.x and the last 3.9.x).
dedup_add_e2e(e2e_worker_kafka test_worker_e2e LABEL kafka ENV DEDUP_E2E_BROKER=kafka)
dedup_add_e2e(e2e_worker_crashes_kafka test_worker_robustness.CrashAtFailpointTest
  test_worker_robustness.RejectedReplayTest LABEL kafka TIMEOUT 900 ENV DEDUP_E2E_BROKER=kafka)
dedup_add_e2e(e2e_kafka_real_4.4.0 test_kafka_real LABEL kafka TIMEOUT 900 ENV DEDUP_E2E_KAFKA_VERSION=4.4.0)
dedup_add_e2e(e2e_kafka_real_3.9.2 test_kafka_real LABEL kafka TIMEOUT 900 ENV DEDUP_E2E_KAFKA_VERSION=3.9.2)
# Groups on a real broker (cooperative-sticky and eager churn, owed offsets committed at a
# revocation, static membership), the broker
# SIGKILLed and restarted under load, a result over the results topic's max.message.bytes:
# one JVM for the module, ~3 min in a debug build.
dedup_add_e2e(e2e_real_kafka_groups test_real_kafka_groups LABEL kafka TIMEOUT 600)
dedup_add_e2e(e2e_kafka_sizes test_kafka_sizes LABEL kafka)             # broker refuses a batch, not a record
