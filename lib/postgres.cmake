dedup_component(postgres
  SOURCES
    src/postgres/admin.cpp
    src/postgres/errors.cpp
    src/postgres/key_store.cpp
    src/postgres/migrations.cpp
  PUBLIC_LIBS dedup::core
  PRIVATE_LIBS PkgConfig::PQXX fmt::fmt)
