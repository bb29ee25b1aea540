# The worker loop: poll -> process -> publish -> acknowledge -> commit, its options (checked in
# one place) and failpoints. Sees Kafka only through dedup::kafka's consumer and producer.
dedup_component(worker
  SOURCES
    src/worker/publication.cpp
    src/worker/worker.cpp
    src/worker/worker_options.cpp
  PUBLIC_LIBS dedup::core
  PRIVATE_LIBS dedup::kafka spdlog::spdlog)
