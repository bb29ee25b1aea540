# Kafka: RAII librdkafka handles, consumer/producer, mock cluster + dev broker, the worker loop.
# librdkafka is PUBLIC: dedup/kafka/handles.hpp exposes its handle types (tests and the dev broker
# use the mock API directly).
dedup_component(kafka
  SOURCES
    src/kafka/admin.cpp
    src/kafka/client_common.cpp
    src/kafka/consumer.cpp
    src/kafka/handles.cpp
    src/kafka/mock_cluster.cpp
    src/kafka/producer.cpp
    src/kafka/worker.cpp
  PUBLIC_LIBS dedup::core PkgConfig::RDKAFKA
  PRIVATE_LIBS spdlog::spdlog fmt::fmt)
