// Logs as an on-call engineer reads them: JSON lines with the documented fields, an audit line per
// created entity, repeated events rate limited. Captures the real logger's stderr.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "dedup/errors.hpp"
#include "dedup/json_text.hpp"
#include "dedup/logging.hpp"

namespace dedup {
namespace {

using json = nlohmann::json;

// Redirects file descriptor 2 into a temporary file for its lifetime.
class CapturedStderr {
 public:
  CapturedStderr() {
    std::fflush(stderr);
    saved_ = ::dup(2);
    file_ = std::tmpfile();
    ::dup2(::fileno(file_), 2);
  }
  ~CapturedStderr() { restore(); }

  // What has reached file descriptor 2 so far (without ending the capture).
  std::size_t bytes_written() const {
    struct stat status {};
    ::fstat(::fileno(file_), &status);
    return static_cast<std::size_t>(status.st_size);
  }

  std::vector<std::string> lines() {
    restore();
    std::rewind(file_);
    std::vector<std::string> out;
    char buffer[8192];
    while (std::fgets(buffer, sizeof buffer, file_)) {
      std::string line(buffer);
      if (!line.empty() && line.back() == '\n') line.pop_back();
      out.push_back(line);
    }
    return out;
  }

 private:
  void restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
    saved_ = -1;
  }
  int saved_ = -1;
  std::FILE* file_ = nullptr;
};

CommandResult result_of(Status status, std::int64_t offset) {
  CommandResult result;
  result.status = status;
  result.replayed = status == Status::duplicate;
  result.idempotency_key = "key-" + std::to_string(offset);
  result.scope = "org-1";
  result.type = "todo.create";
  result.entity = json{{"id", 40 + offset}, {"title", "t"}};
  result.source = {"commands", 2, offset};
  return result;
}

TEST(Logging, JsonLinesCarryTheDocumentedFields) {
  configure_logging("info", "json");
  CapturedStderr captured;
  LoggingObserver observer;
  observer.on_result_published(result_of(Status::created, 7), 0.01);
  observer.on_results_published();
  const auto lines = captured.lines();
  ASSERT_EQ(lines.size(), 1u);
  const auto line = json::parse(lines[0]);
  EXPECT_EQ(line.at("level"), "info");
  EXPECT_EQ(line.at("msg"), "entity created");
  EXPECT_EQ(line.at("scope"), "org-1");
  EXPECT_EQ(line.at("key"), "key-7");
  EXPECT_EQ(line.at("type"), "todo.create");
  EXPECT_EQ(line.at("status"), "created");
  EXPECT_EQ(line.at("partition"), 2);
  EXPECT_EQ(line.at("offset"), 7);
  EXPECT_EQ(line.at("entity_id"), 47);
  EXPECT_TRUE(line.at("ts").get<std::string>().ends_with("Z"));
}

// A result's fields are written straight to text (they are not built as a json object first, for
// every created entity): the object's compact JSON, names in bytewise order, whatever bytes the
// record brought (each byte that is not UTF-8 becomes U+FFFD, as in the published result). Compared
// byte for byte, from "msg" on.
TEST(Logging, ResultFieldsAreWrittenExactlyAsTheirJsonObject) {
  configure_logging("info", "json");
  CapturedStderr captured;
  LoggingObserver observer;
  CommandResult created = result_of(Status::created, 7);
  // NUL, a quote, a control character and a byte that is not UTF-8 (replaced by U+FFFD).
  created.scope = std::string("org\0\"\x1f\xff", 7);
  created.idempotency_key = "cl\xc3\xa9-\xe2\x82" "A";  // é, then a sequence cut short
  created.entity = json{{"id", exact_number("12345678901234567890.5")}};
  CommandResult text_id = result_of(Status::created, 8);
  text_id.entity = json{{"id", "a\\b"}};
  CommandResult rejected = result_of(Status::rejected, 9);
  rejected.entity = nullptr;
  rejected.rejection = Rejection{RejectCode::invalid_json, "line 1:\n\"x\""};
  observer.on_result_published(created, 0);
  observer.on_result_published(text_id, 0);
  observer.on_result_published(rejected, 0);
  observer.on_results_published();
  const auto lines = captured.lines();
  ASSERT_EQ(lines.size(), 3u);
  const auto from_msg = [](const std::string& line) { return line.substr(line.find(R"(,"msg":)")); };
  EXPECT_EQ(from_msg(lines[0]), R"(,"msg":"entity created","entity_id":"12345678901234567890.5",)"
                                "\"key\":\"cl\xc3\xa9-\xef\xbf\xbd\xef\xbf\xbd" "A\",\"offset\":7,\"partition\":2,"
                                R"("scope":"org\u0000\"\u001f)" "\xef\xbf\xbd" R"(","status":"created",)"
                                R"("type":"todo.create"})");
  EXPECT_EQ(from_msg(lines[1]), R"(,"msg":"entity created","entity_id":"a\\b","key":"key-8","offset":8,)"
                                R"("partition":2,"scope":"org-1","status":"created","type":"todo.create"})");
  EXPECT_EQ(from_msg(lines[2]), R"(,"msg":"record rejected and dead-lettered","error":"line 1:\n\"x\"",)"
                                R"("key":"key-9","offset":9,"partition":2,"reason":")" +
                                    std::string(to_string(RejectCode::invalid_json)) +
                                    R"(","scope":"org-1","status":"rejected","type":"todo.create"})");
}

// The extra fields of the lines that have them, in their place among the result's: a conflict's
// constraint, and how many replays were held back before the one that is logged.
TEST(Logging, ConflictAndRateLimitedLinesCarryTheirExtraFieldsInNameOrder) {
  configure_logging("info", "json");
  CapturedStderr captured;
  LoggingObserver observer(2);
  CommandResult conflict = result_of(Status::conflict, 1);
  conflict.entity = nullptr;
  conflict.error = json{{"constraint", "todos_title_key"}};
  observer.on_result_published(conflict, 0);
  for (std::int64_t offset = 2; offset <= 4; ++offset) {  // two pass, the third is held back
    observer.on_result_published(result_of(Status::duplicate, offset), 0);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(600));  // one token back at 2/s
  observer.on_result_published(result_of(Status::duplicate, 5), 0);
  observer.on_results_published();
  const auto lines = captured.lines();
  ASSERT_EQ(lines.size(), 4u);
  const auto from_msg = [](const std::string& line) { return line.substr(line.find(R"(,"msg":)")); };
  EXPECT_EQ(from_msg(lines[0]), R"(,"msg":"command conflicts with existing data","constraint":"todos_title_key",)"
                                R"("key":"key-1","offset":1,"partition":2,"scope":"org-1","status":"conflict",)"
                                R"("type":"todo.create"})");
  EXPECT_EQ(from_msg(lines[3]), R"(,"msg":"replayed stored result","entity_id":45,"key":"key-5","offset":5,)"
                                R"("partition":2,"scope":"org-1","status":"duplicate","suppressed_before":1,)"
                                R"("type":"todo.create"})");
}

// The contract's order ({"ts","level","msg",...fields}), and a line's own keys stay its own: a
// field named like one of them comes out renamed, not in place of it nor as a duplicate key.
TEST(Logging, JsonLinesStartWithTsLevelMsgAndFieldsCannotReplaceThem) {
  configure_logging("info", "json");
  CapturedStderr captured;
  log_event(LogLevel::info, "said \"hi\"\n",
            {{"msg", "not the message"}, {"level", 3}, {"ts", "x"}, {"b", 1}, {"a", "\x1f"}, {"field_ts", "mine"}});
  const auto lines = captured.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].rfind(R"({"ts":")", 0), 0u) << lines[0];
  EXPECT_NE(lines[0].find(R"(","level":"info","msg":"said \"hi\"\n","a":)"), std::string::npos) << lines[0];
  const auto line = json::parse(lines[0]);
  EXPECT_EQ(line.size(), 9u) << lines[0];  // ts, level, msg, a, b, field_ts and three renamed
  EXPECT_EQ(line.at("msg"), "said \"hi\"\n");
  EXPECT_EQ(line.at("level"), "info");
  EXPECT_EQ(line.at("field_msg"), "not the message");
  EXPECT_EQ(line.at("field_level"), 3);
  EXPECT_EQ(line.at("field_ts"), "mine");
  EXPECT_EQ(line.at("field_field_ts"), "x");
  EXPECT_EQ(line.at("a"), "\x1f");
  EXPECT_EQ(line.at("b"), 1);
}

// Plain spdlog calls (libraries, start-up messages) go through the same formatter: whatever their
// text, they come out as one JSON line of their own, with no fields (a field separator or JSON in
// the text is just text), and a log_event line before them lends them none of its fields.
TEST(Logging, PlainSpdlogTextNeverPassesForFields) {
  configure_logging("info", "json");
  CapturedStderr captured;
  log_event(LogLevel::info, "with fields", {{"scope", "org-1"}});
  spdlog::info("broker said: \x1f{{\"scope\":\"forged\"}} and \xff");
  spdlog::warn("{}", std::string("nul \0 inside", 13));
  const auto lines = captured.lines();
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(json::parse(lines[0]).at("scope"), "org-1");
  const auto plain = json::parse(lines[1]);
  EXPECT_EQ(plain.size(), 3u) << lines[1];  // ts, level, msg
  EXPECT_FALSE(plain.contains("scope"));
  EXPECT_NE(plain.at("msg").get<std::string>().find(R"({"scope":"forged"})"), std::string::npos);
  const auto nul = json::parse(lines[2]);
  EXPECT_EQ(nul.size(), 3u) << lines[2];
  EXPECT_EQ(nul.at("msg").get<std::string>(), std::string("nul \0 inside", 13));
}

// Above the level, nothing is written, and callers that check first skip building their fields.
TEST(Logging, LogEnabledFollowsTheConfiguredLevel) {
  configure_logging("warn", "json");
  EXPECT_FALSE(log_enabled(LogLevel::info));
  EXPECT_TRUE(log_enabled(LogLevel::warn));
  EXPECT_TRUE(log_enabled(LogLevel::error));
  CapturedStderr captured;
  LoggingObserver observer;
  observer.on_result_published(result_of(Status::created, 1), 0.01);
  observer.on_results_published();
  log_event(LogLevel::info, "hidden", {{"k", 1}});
  EXPECT_TRUE(captured.lines().empty());
  configure_logging("info", "json");
  EXPECT_TRUE(log_enabled(LogLevel::info));
}

TEST(Logging, TextFormatIsForHumans) {
  configure_logging("info", "text");
  CapturedStderr captured;
  log_event(LogLevel::warn, "database attempt failed", {{"kind", "transient"}});
  const auto lines = captured.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("warning database attempt failed kind=transient"), std::string::npos) << lines[0];
  EXPECT_THROW(json::parse(lines[0]), json::parse_error);
}

// The text format reads the fields back to write key=value pairs: a number past a double's range
// inside an id (which nlohmann's parser refuses) keeps its digits and the line keeps every field.
TEST(Logging, TextFormatKeepsEveryFieldWhateverTheNumbers) {
  configure_logging("info", "text");
  CapturedStderr captured;
  LoggingObserver observer;
  CommandResult created = result_of(Status::created, 7);
  created.entity = json{{"id", json{{"n", exact_number("1e400")}}}};
  observer.on_result_published(created, 0);
  observer.on_results_published();
  const auto lines = captured.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find(R"( entity_id={"n":1e400} key=key-7 offset=7 partition=2 scope=org-1)"
                         R"( status=created type=todo.create)"),
            std::string::npos)
      << lines[0];
}

TEST(Logging, EveryCreationIsAuditedButReplaysAreRateLimited) {
  configure_logging("info", "json");
  CapturedStderr captured;
  LoggingObserver observer(/*repeated_lines_per_second=*/5);
  for (int i = 0; i < 50; ++i) observer.on_result_published(result_of(Status::created, i), 0);
  for (int i = 0; i < 50; ++i) observer.on_result_published(result_of(Status::duplicate, i), 0);
  observer.on_results_published();
  int created = 0;
  int replayed = 0;
  for (const auto& text : captured.lines()) {
    const auto line = json::parse(text);
    if (line.at("msg") == "entity created") ++created;
    if (line.at("msg") == "replayed stored result") ++replayed;
  }
  EXPECT_EQ(created, 50);  // the record of an effect is never dropped
  EXPECT_GE(replayed, 5);  // the burst allowance...
  EXPECT_LE(replayed, 7);  // ...and not much more, however many arrive
}

// A batch's per-record lines go out in one write when its results are all published (the worker
// then commits its offsets); an immediate line writes them first, so the order holds.
TEST(Logging, PerRecordLinesAreHeldUntilTheBatchsResultsArePublishedAndKeepTheirOrder) {
  configure_logging("info", "json");
  CapturedStderr captured;
  LoggingObserver observer;
  observer.on_result_published(result_of(Status::created, 1), 0.01);
  observer.on_result_published(result_of(Status::created, 2), 0.01);
  EXPECT_EQ(captured.bytes_written(), 0u) << "held while the batch's results are reported";
  observer.on_results_published();
  const auto batch_bytes = captured.bytes_written();
  EXPECT_GT(batch_bytes, 0u) << "written when they all are";
  observer.on_result_published(result_of(Status::created, 3), 0.01);
  EXPECT_EQ(captured.bytes_written(), batch_bytes);
  log_event(LogLevel::warn, "an immediate line");
  const auto lines = captured.lines();
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(json::parse(lines[0]).at("offset"), 1);
  EXPECT_EQ(json::parse(lines[1]).at("offset"), 2);
  EXPECT_EQ(json::parse(lines[2]).at("offset"), 3) << "the held line before the immediate one";
  EXPECT_EQ(json::parse(lines[3]).at("msg"), "an immediate line");
}

// However large a batch, no more than 64 KiB of lines wait in memory.
TEST(Logging, HeldLinesAreWrittenOnceTheyReach64KiB) {
  configure_logging("info", "json");
  CapturedStderr captured;
  LoggingObserver observer;
  for (int i = 0; i < 2'000; ++i) observer.on_result_published(result_of(Status::created, i), 0);
  const auto before_batch_end = captured.bytes_written();
  observer.on_results_published();
  const auto all = captured.bytes_written();
  constexpr std::size_t kBound = std::size_t{64} * 1024;
  EXPECT_GT(all, 3 * kBound) << "the test needs several times the bound";
  EXPECT_GE(before_batch_end + kBound, all) << "at most 64 KiB were still held";
  EXPECT_EQ(captured.lines().size(), 2'000u);
}

TEST(Logging, HeldBackLinesAreCountedOnTheNextOneThatPasses) {
  RateLimiter limiter(2);
  std::size_t suppressed = 0;
  EXPECT_TRUE(limiter.allow(suppressed));
  EXPECT_TRUE(limiter.allow(suppressed));
  EXPECT_FALSE(limiter.allow(suppressed));
  EXPECT_FALSE(limiter.allow(suppressed));
  std::this_thread::sleep_for(std::chrono::milliseconds(600));  // one token back at 2/s
  EXPECT_TRUE(limiter.allow(suppressed));
  EXPECT_EQ(suppressed, 2u);
}

TEST(Logging, BadLevelOrFormatNamesTheFlag) {
  try {
    configure_logging("loud", "json");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), "--log-level");
  }
  try {
    configure_logging("info", "xml");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), "--log-format");
  }
}

}  // namespace
}  // namespace dedup
