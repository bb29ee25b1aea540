# Suites of the Kafka component: real librdkafka clients against librdkafka's mock cluster (no
# broker to install, no fake of Kafka). None of them needs Postgres: the worker suites put a real
# Processor over an in-memory KeyStore; the end-to-end runs with Postgres live in the lead's suites.
add_library(dedup_kafka_test_support STATIC support/kafka_test_util.cpp)
# The suites drive librdkafka directly too (producers, consumers, fault injection on the mock).
target_link_libraries(dedup_kafka_test_support
  PUBLIC dedup_test_support dedup::kafka dedup::kafka_mock dedup::worker PkgConfig::RDKAFKA)

# A worker process for crash tests: runs a Worker over an in-memory store until a DEDUP_FAILPOINT
# kills it (see worker_crash_test.cpp).
add_executable(kafka_worker_child support/kafka_worker_child.cpp)
target_link_libraries(kafka_worker_child PRIVATE dedup_kafka_test_support)

dedup_add_test(kafka_tests LABEL integration TIMEOUT 120
  SOURCES
    integration/kafka_client_test.cpp
    integration/worker_test.cpp
    integration/kafka_security_test.cpp
  LIBS dedup_kafka_test_support)

dedup_add_test(kafka_robustness_tests LABEL robustness TIMEOUT 180
  SOURCES
    integration/kafka_fault_test.cpp
    integration/worker_crash_test.cpp
  LIBS dedup_kafka_test_support)
target_compile_definitions(kafka_robustness_tests PRIVATE
  DEDUP_KAFKA_WORKER_CHILD="$<TARGET_FILE:kafka_worker_child>")
add_dependencies(kafka_robustness_tests kafka_worker_child)
