// Core benchmark: the dedup core (parse, fingerprint, claim, write, store result) against the raw
// Postgres limit for the same rows, measured in one run on one connection with the same batch
// size. Prints one `name: value` line per figure. Usage:
//   dedup_bench_core --db CONNINFO [--commands 100000] [--batches 100,1000]
#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "dedup/postgres.hpp"
#include "dedup/processor.hpp"
#include "bench_support.hpp"

namespace {

using Clock = std::chrono::steady_clock;

// Sums the time spent inside KeyStore::apply, to split client-side work from the database's.
class StoreTimer final : public dedup::Observer {
 public:
  void on_store_transaction(double seconds) override { total += seconds; }
  double total = 0;
};

struct Options {
  std::string db;
  int commands = 100'000;
  std::vector<int> batches = {100, 1000};
};

void add_flags(CLI::App& app, Options& options) {
  dedup::bench::add_db_flag(app, options.db);
  app.add_option("--commands", options.commands, "commands per measurement")->capture_default_str();
  app.add_option("--batches", options.batches, "batch sizes, comma-separated")
      ->delimiter(',')
      ->capture_default_str();
}

using dedup::bench::command_body;
using dedup::bench::exec;
using dedup::bench::key_of;
using dedup::bench::raw_statements;
using dedup::bench::reset_schema;
using dedup::bench::time_raw;

// Records for `count` commands; `round` shifts the offsets so a second round is a different
// record carrying the same key (a duplicate, not a redelivery).
std::vector<dedup::InboundRecord> make_records(int count, int round) {
  std::vector<dedup::InboundRecord> records;
  records.reserve(count);
  for (int i = 0; i < count; ++i) {
    dedup::InboundRecord record;
    record.source = {"commands", 0, static_cast<std::int64_t>(round) * count + i};
    record.value = command_body(i).dump();
    records.push_back(std::move(record));
  }
  return records;
}

// Seconds the core takes for records[from, to), in batches of `batch`.
double time_core(dedup::Processor& processor, const std::vector<dedup::InboundRecord>& records,
                 std::size_t from, std::size_t to, std::size_t batch, dedup::Status expected) {
  const auto start = Clock::now();
  for (std::size_t offset = from; offset < to; offset += batch) {
    const auto size = std::min(batch, to - offset);
    for (const auto& result : processor.process(std::span(records).subspan(offset, size))) {
      if (result.status != expected) {
        throw std::runtime_error("unexpected result: " + result.to_json().dump());
      }
    }
  }
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Core and raw, alternating in chunks of kChunks-th of the work, so both see the same machine:
// on a shared, noisy machine a ratio of two separate phases measures the noise.
constexpr std::size_t kChunks = 20;

struct Pair {
  double core_per_second;
  double raw_per_second;
};

Pair race_core_and_raw(dedup::Processor& processor, const std::vector<dedup::InboundRecord>& records,
                       dedup::Status expected, pqxx::connection& raw,
                       const std::vector<std::string>& statements, std::size_t batch) {
  double core_seconds = 0;
  double raw_seconds = 0;
  for (std::size_t chunk = 0; chunk < kChunks; ++chunk) {
    const std::size_t batches_from = statements.size() * chunk / kChunks;
    const std::size_t batches_to = statements.size() * (chunk + 1) / kChunks;
    core_seconds += time_core(processor, records, std::min(records.size(), batches_from * batch),
                              std::min(records.size(), batches_to * batch), batch, expected);
    raw_seconds += time_raw(raw, statements, batches_from, batches_to);
  }
  return {static_cast<double>(records.size()) / core_seconds,
          static_cast<double>(records.size()) / raw_seconds};
}

}  // namespace

int main(int argc, char** argv) try {
  Options options;
  CLI::App app{"dedup_bench_core: the dedup core against raw Postgres inserts of the same rows"};
  add_flags(app, options);
  if (const auto done = dedup::bench::parse_command_line(app, argc, argv)) return *done;
  const std::string core_schema = "bench_core";
  const std::string raw_schema = "bench_raw";
  std::cout << "commands: " << options.commands << "\n";
  std::cout << "connections: 1\n";

  double worst_unique_ratio = 1e9;
  double worst_duplicate_ratio = 1e9;
  for (const int batch : options.batches) {
    // Core: unique commands, then the same keys again from other records (duplicates). Raw: the
    // same rows, same batch size, one connection, inserted and then inserted again.
    reset_schema(options.db, core_schema);
    reset_schema(options.db, raw_schema);
    const auto catalog = dedup::CommandCatalog::from_yaml(dedup::bench::todo_catalog_yaml(core_schema));
    dedup::SystemClock clock;
    StoreTimer observer;
    dedup::PostgresKeyStore store({.conninfo = options.db, .schema = core_schema}, catalog);
    dedup::Processor processor(catalog, store, clock, observer, {});
    const auto unique_records = make_records(options.commands, 0);
    const auto duplicate_records = make_records(options.commands, 1);
    pqxx::connection raw(options.db);
    const auto statements = raw_statements(raw_schema, options.commands, batch, raw);

    const auto unique = race_core_and_raw(processor, unique_records, dedup::Status::created, raw,
                                          statements, batch);
    const double unique_store_seconds = observer.total;
    const auto duplicate = race_core_and_raw(processor, duplicate_records, dedup::Status::duplicate,
                                             raw, statements, batch);
    const double core_unique = unique.core_per_second;
    const double raw_unique = unique.raw_per_second;
    const double core_duplicate = duplicate.core_per_second;
    const double raw_duplicate = duplicate.raw_per_second;

    const double unique_ratio = core_unique / raw_unique;
    const double duplicate_ratio = core_duplicate / raw_duplicate;
    worst_unique_ratio = std::min(worst_unique_ratio, unique_ratio);
    worst_duplicate_ratio = std::min(worst_duplicate_ratio, duplicate_ratio);
    std::cout << fmt::format("batch {} core unique commands/s: {:.0f}\n", batch, core_unique);
    std::cout << fmt::format("batch {} raw unique rows/s: {:.0f}\n", batch, raw_unique);
    std::cout << fmt::format("batch {} core unique ratio: {:.2f}\n", batch, unique_ratio);
    std::cout << fmt::format("batch {} core unique share in transaction: {:.2f}\n", batch,
                             unique_store_seconds * core_unique / options.commands);
    std::cout << fmt::format("batch {} core duplicate commands/s: {:.0f}\n", batch, core_duplicate);
    std::cout << fmt::format("batch {} raw duplicate rows/s: {:.0f}\n", batch, raw_duplicate);
    std::cout << fmt::format("batch {} core duplicate ratio: {:.2f}\n", batch, duplicate_ratio);
    std::cout.flush();
  }
  // Headline figures: the worst batch size, so a regression at either shows.
  std::cout << fmt::format("core unique ratio: {:.2f}\n", worst_unique_ratio);
  std::cout << fmt::format("core duplicate ratio: {:.2f}\n", worst_duplicate_ratio);
  exec(options.db, "DROP SCHEMA IF EXISTS " + core_schema + " CASCADE; DROP SCHEMA IF EXISTS " +
                       raw_schema + " CASCADE");
  return 0;
} catch (const std::exception& e) {
  std::cerr << "dedup_bench_core: " << e.what() << "\n";
  return 1;
}
