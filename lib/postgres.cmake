dedup_component(postgres
  SOURCES
    src/postgres/admin.cpp
    src/postgres/batch_plan.cpp
    src/postgres/database_lanes.cpp
    src/postgres/claim_protocol.cpp
    src/postgres/entity_writer.cpp
    src/postgres/errors.cpp
    src/postgres/fast_path.cpp
    src/postgres/key_rows.cpp
    src/postgres/key_store.cpp
    src/postgres/migrations.cpp
    src/postgres/schema_check.cpp
    src/postgres/session.cpp
    src/postgres/sql.cpp
  PUBLIC_LIBS dedup::core
  PRIVATE_LIBS PkgConfig::PQXX fmt::fmt)
