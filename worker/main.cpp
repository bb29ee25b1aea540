// dedup-worker: parses the command line (SPEC §6), wires the library's objects, runs. No logic
// lives here. Exit codes: 0 success or clean shutdown, 2 bad usage or configuration (the message
// names the flag or field), 1 runtime failure.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <string>
#include <vector>

#include "dedup/config.hpp"
#include "dedup/database_lanes.hpp"
#include "dedup/duration.hpp"
#include "dedup/errors.hpp"
#include "dedup/json_text.hpp"
#include "dedup/kafka/admin.hpp"
#include "dedup/kafka/settings.hpp"
#include "dedup/kafka/mock_cluster.hpp"
#include "dedup/logging.hpp"
#include "dedup/metrics.hpp"
#include "dedup/postgres.hpp"
#include "dedup/processor.hpp"
#include "dedup/stop_signals.hpp"
#include "dedup/worker.hpp"

#ifndef DEDUP_VERSION
#define DEDUP_VERSION "0.0.0-dev"
#endif

extern char** environ;

namespace {

using dedup::ConfigError;

// Flags shared by the subcommands that talk to Postgres.
struct DatabaseFlags {
  std::string db;
  std::string schema = "dedup";
};

struct LogFlags {
  std::string level = "info";
  std::string format = "json";
};

struct RunFlags {
  std::string brokers;
  std::string group = "dedup-worker";
  std::string commands_topic = "commands";
  std::string results_topic;
  std::string dlq_topic;
  std::string config;
  std::string key_ttl = "7d";
  std::string default_scope;
  std::string metrics_addr = "0.0.0.0:9464";
  std::vector<std::string> kafka_settings;  // -X key=value
  std::size_t max_batch = 500;
  std::string batch_wait = "200ms";
  std::string commit_interval = "100ms";
  std::string drain_timeout = "30s";
  std::string cleanup_interval = "5m";
  std::size_t max_message_bytes = std::size_t{1024} * 1024;
  std::size_t db_connections = 1;
};

// More lanes than this only queue on Postgres's locks and cores (docs/operations.md, sizing).
constexpr std::size_t kMaxDbConnections = 64;

// Every flag also reads DEDUP_<FLAG> (SPEC §6).
CLI::Option* with_env(CLI::Option* option, const std::string& flag) {
  std::string env = "DEDUP_";
  for (char c : flag) env += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return option->envname(env);
}

void add_database_flags(CLI::App& command, DatabaseFlags& flags) {
  with_env(command.add_option("--db", flags.db, "libpq connection string or URI"), "db")->required();
  with_env(command.add_option("--db-schema", flags.schema, "schema of the keys table"), "db-schema")
      ->capture_default_str();
}

dedup::kafka::KafkaSettings parse_kafka_settings(const std::vector<std::string>& pairs) {
  dedup::kafka::KafkaSettings settings;
  for (const auto& pair : pairs) {
    const auto eq = pair.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw ConfigError("-X", fmt::format("'{}' is not key=value", pair));
    }
    settings[pair.substr(0, eq)] = pair.substr(eq + 1);
  }
  return settings;
}

int run_worker(const RunFlags& flags, const DatabaseFlags& database) {
  const auto catalog = dedup::CommandCatalog::from_file(flags.config);
  const auto key_ttl = dedup::parse_duration(flags.key_ttl, "--key-ttl");
  if (flags.max_message_bytes == 0) throw ConfigError("--max-message-bytes", "must be at least 1");
  if (flags.db_connections < 1 || flags.db_connections > kMaxDbConnections) {
    throw ConfigError("--db-connections",
                      fmt::format("must be between 1 and {}", kMaxDbConnections));
  }

  dedup::Metrics metrics(catalog.type_names(), DEDUP_VERSION);
  dedup::LoggingObserver logs;
  dedup::FanOutObserver observer({&metrics, &logs});
  dedup::SystemClock clock;

  dedup::ParseOptions parse_options;
  parse_options.max_message_bytes = flags.max_message_bytes;
  if (!flags.default_scope.empty()) parse_options.default_scope = flags.default_scope;

  dedup::WorkerOptions options;
  options.brokers = flags.brokers;
  options.group = flags.group;
  options.commands_topic = flags.commands_topic;
  options.results_topic = flags.results_topic;
  options.dlq_topic = flags.dlq_topic;
  // Secrets come from DEDUP_KAFKA_* (never visible in the process's arguments); -X wins.
  options.kafka_settings = dedup::kafka::settings_from_environment(environ);
  for (auto& [key, value] : parse_kafka_settings(flags.kafka_settings)) {
    options.kafka_settings[key] = std::move(value);
  }
  options.max_batch_records = flags.max_batch;
  options.max_batch_wait = dedup::parse_duration(flags.batch_wait, "--batch-wait");
  options.commit_interval = dedup::parse_duration(flags.commit_interval, "--commit-interval");
  options.drain_timeout = dedup::parse_duration(flags.drain_timeout, "--drain-timeout");
  options.cleanup_interval = dedup::parse_duration(flags.cleanup_interval, "--cleanup-interval");
  options.failpoint = dedup::failpoint_from_environment();
  options.cleanup = [&] {
    observer.on_keys_expired(dedup::cleanup_expired_keys(database.db, database.schema, clock.now()));
  };
  // Checked before any connection is made: a bad flag stops start-up naming it, whatever the
  // database or the broker would have said (the lanes also take --max-batch as their cap).
  options = dedup::checked(std::move(options));

  // --db-connections N: N lanes, each a processor over its own key store and connection.
  dedup::DatabaseLanes processor(
      flags.db_connections,
      dedup::PostgresOptions{.conninfo = database.db,
                             .schema = database.schema,
                             .key_ttl = std::chrono::duration_cast<std::chrono::seconds>(key_ttl)},
      catalog, clock, observer, parse_options, options.max_batch_records, options.max_batch_bytes);
  // SPEC §4: warn when the key TTL does not outlive the commands topic's retention. Off the
  // start-up path: a broker that does not answer (the dev broker never does) costs no time.
  std::jthread ttl_check([&](const std::stop_token& stop) {
    dedup::kafka::warn_if_key_ttl_below_retention(options.brokers, options.kafka_settings,
                                                  options.commands_topic, key_ttl,
                                                  std::chrono::seconds(10), stop);
  });
  dedup::Worker worker(options, processor, observer);
  // Declared after the worker: destroyed first, as its readiness check reads the worker.
  dedup::MetricsServer server(flags.metrics_addr, metrics.registry(), [&worker] { return worker.ready(); });
  dedup::StopSignals signals(worker);
  dedup::log_event(dedup::LogLevel::info, "dedup-worker started",
                   {{"version", DEDUP_VERSION},
                    {"commands_topic", flags.commands_topic},
                    {"group", flags.group},
                    {"metrics_port", server.port()},
                    {"key_ttl", dedup::format_duration(key_ttl)}});
  const int status = worker.run();
  dedup::log_event(dedup::LogLevel::info, "dedup-worker stopped", {{"exit_code", status}});
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dedup-worker: exactly one effect per idempotency key, from Kafka to Postgres"};
  app.set_version_flag("--version", DEDUP_VERSION);
  app.require_subcommand(1);
  LogFlags log_flags;
  with_env(app.add_option("--log-level", log_flags.level, "trace|debug|info|warn|error"), "log-level")
      ->capture_default_str();
  with_env(app.add_option("--log-format", log_flags.format, "json|text"), "log-format")
      ->capture_default_str();

  // run
  RunFlags run_flags;
  DatabaseFlags run_db;
  auto* run = app.add_subcommand("run", "consume commands, dedupe in Postgres, publish results");
  add_database_flags(*run, run_db);
  with_env(run->add_option("--brokers", run_flags.brokers, "Kafka bootstrap servers"), "brokers")
      ->required();
  with_env(run->add_option("--group", run_flags.group, "consumer group"), "group")->capture_default_str();
  with_env(run->add_option("--commands-topic", run_flags.commands_topic), "commands-topic")
      ->capture_default_str();
  with_env(run->add_option("--results-topic", run_flags.results_topic,
                           "default: <commands-topic>.results"), "results-topic");
  with_env(run->add_option("--dlq-topic", run_flags.dlq_topic, "default: <commands-topic>.dlq"),
           "dlq-topic");
  with_env(run->add_option("--config", run_flags.config, "YAML command mapping"), "config")->required();
  with_env(run->add_option("--key-ttl", run_flags.key_ttl,
                           "how long keys are kept; must exceed topic retention + redelivery delay"),
           "key-ttl")->capture_default_str();
  with_env(run->add_option("--default-scope", run_flags.default_scope, "scope of commands without one"),
           "default-scope");
  with_env(run->add_option("--metrics-addr", run_flags.metrics_addr, "host:port for /metrics /healthz /readyz"),
           "metrics-addr")->capture_default_str();
  with_env(run->add_option("-X", run_flags.kafka_settings, "librdkafka property key=value (repeatable)"),
           "x");
  with_env(run->add_option("--max-batch", run_flags.max_batch, "records per batch"), "max-batch")
      ->capture_default_str();
  with_env(run->add_option("--batch-wait", run_flags.batch_wait, "how long to wait to fill a batch"),
           "batch-wait")->capture_default_str();
  with_env(run->add_option("--commit-interval", run_flags.commit_interval,
                           "commit offsets at most this often while batches keep coming (0ms: "
                           "after every batch); at once when idle, on revocation and on close"),
           "commit-interval")->capture_default_str();
  with_env(run->add_option("--drain-timeout", run_flags.drain_timeout,
                           "on SIGTERM, how long the in-flight batch may take"),
           "drain-timeout")->capture_default_str();
  with_env(run->add_option("--cleanup-interval", run_flags.cleanup_interval, "expired-key cleanup period"),
           "cleanup-interval")->capture_default_str();
  with_env(run->add_option("--db-connections", run_flags.db_connections,
                           "Postgres connections, one transaction in flight on each; records are "
                           "routed to them by partition"),
           "db-connections")->capture_default_str();
  with_env(run->add_option("--max-message-bytes", run_flags.max_message_bytes, "larger records are rejected"),
           "max-message-bytes")->capture_default_str();

  // migrate / cleanup / inspect
  DatabaseFlags migrate_db;
  auto* migrate = app.add_subcommand("migrate", "create or upgrade the schema, then exit");
  add_database_flags(*migrate, migrate_db);

  DatabaseFlags cleanup_db;
  std::size_t cleanup_batch = 1000;
  auto* cleanup = app.add_subcommand("cleanup", "delete expired keys once, then exit");
  add_database_flags(*cleanup, cleanup_db);
  cleanup->add_option("--batch-size", cleanup_batch, "rows per short transaction")->capture_default_str();

  DatabaseFlags inspect_db;
  std::string inspect_scope;
  std::string inspect_key;
  auto* inspect = app.add_subcommand("inspect", "print the stored record of a key");
  add_database_flags(*inspect, inspect_db);
  inspect->add_option("--scope", inspect_scope)->required();
  inspect->add_option("--key", inspect_key)->required();

  // dev-broker
  dedup::kafka::DevBrokerOptions broker_options;
  std::vector<std::string> broker_topics;
  std::string bootstrap_file;
  auto* dev_broker = app.add_subcommand("dev-broker", "embedded Kafka broker (librdkafka mock) for local use and tests");
  dev_broker->add_option("--topic", broker_topics, "name[:partitions], repeatable")->required();
  dev_broker->add_option("--brokers-count", broker_options.brokers, "mock brokers")->capture_default_str();
  dev_broker->add_option("--bootstrap-file", bootstrap_file, "also write the bootstrap address here");

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);  // --help, --version
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  }

  try {
    dedup::configure_logging(log_flags.level, log_flags.format);
    if (*run) return run_worker(run_flags, run_db);
    if (*migrate) {
      const int applied = dedup::migrate(migrate_db.db, migrate_db.schema);
      std::cout << fmt::format("schema {}: {} migration(s) applied, at version {}\n", migrate_db.schema,
                               applied, dedup::latest_schema_version());
      return 0;
    }
    if (*cleanup) {
      const auto deleted = dedup::cleanup_expired_keys(
          cleanup_db.db, cleanup_db.schema, dedup::SystemClock().now(), {.batch_size = cleanup_batch});
      std::cout << fmt::format("deleted {} expired key(s)\n", deleted);
      return 0;
    }
    if (*inspect) {
      const auto row = dedup::inspect_key(inspect_db.db, inspect_db.schema, inspect_scope, inspect_key);
      if (!row) {
        std::cerr << fmt::format("no key '{}' in scope '{}'\n", inspect_key, inspect_scope);
        return 1;
      }
      std::cout << dedup::to_json_text(*row) << "\n";  // numbers exactly as stored
      return 0;
    }
    if (*dev_broker) {
      for (const auto& topic : broker_topics) {
        broker_options.topics.push_back(dedup::kafka::parse_topic_spec(topic, "--topic"));
      }
      if (broker_options.brokers < 1) throw ConfigError("--brokers-count", "must be at least 1");
      broker_options.bootstrap_file = bootstrap_file;
      return dedup::kafka::run_dev_broker(broker_options);
    }
  } catch (const ConfigError& e) {
    std::cerr << "dedup-worker: configuration error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "dedup-worker: " << e.what() << "\n";
    return 1;
  }
  return 2;
}
