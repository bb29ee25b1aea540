# Kafka: RAII librdkafka handles, the consumer, the producer of outbound records, admin queries.
# librdkafka is PRIVATE: only the headers under dedup/kafka/ name its types, and the worker loop
# sees Kafka through them; dedup/kafka/settings.hpp (what the options carry) is librdkafka-free.
dedup_component(kafka
  SOURCES
    src/kafka/admin.cpp
    src/kafka/client_common.cpp
    src/kafka/consumer.cpp
    src/kafka/handles.cpp
    src/kafka/partition_stash.cpp
    src/kafka/producer.cpp
    src/kafka/settings.cpp
  PUBLIC_LIBS dedup::core
  PRIVATE_LIBS PkgConfig::RDKAFKA spdlog::spdlog fmt::fmt)

# librdkafka's mock cluster and the `dev-broker` subcommand: for tests, the demo and local use,
# not in the production path. Its header hands out the mock's handle, so librdkafka is public here.
dedup_component(kafka_mock
  SOURCES
    src/kafka_mock/mock_cluster.cpp
  PUBLIC_LIBS dedup::kafka PkgConfig::RDKAFKA
  PRIVATE_LIBS spdlog::spdlog)
