#include "dedup/processor.hpp"

#include <chrono>

namespace dedup {

Processor::Processor(const CommandCatalog& catalog, KeyStore& store, const Clock& clock,
                     Observer& observer, ParseOptions options)
    : catalog_(catalog), store_(store), clock_(clock), observer_(observer), options_(std::move(options)) {}

std::vector<CommandResult> Processor::process(std::span<const InboundRecord> records) {
  observer_.on_batch(records.size());
  const Timestamp now = clock_.now();

  std::vector<CommandResult> results(records.size());
  std::vector<Command> commands;
  std::vector<std::size_t> command_slots;  // commands[i] answers records[command_slots[i]]
  commands.reserve(records.size());
  command_slots.reserve(records.size());
  for (std::size_t i = 0; i < records.size(); ++i) {
    auto parsed = parse_command(records[i], catalog_, options_);
    if (auto* rejected = std::get_if<RejectedCommand>(&parsed)) {
      results[i] = make_rejected_result(*rejected, now);
    } else {
      commands.push_back(std::move(std::get<Command>(parsed)));
      command_slots.push_back(i);
    }
  }
  if (commands.empty()) return results;

  const auto started = std::chrono::steady_clock::now();
  auto stored = store_.apply(commands, now);
  observer_.on_store_transaction(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  for (std::size_t i = 0; i < commands.size(); ++i) {
    results[command_slots[i]] = std::move(stored[i]);
  }
  return results;
}

}  // namespace dedup
