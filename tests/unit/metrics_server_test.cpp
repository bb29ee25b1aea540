// dedup::MetricsServer: /metrics, /healthz and /readyz over real HTTP on a port picked by the OS.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "dedup/errors.hpp"
#include "dedup/metrics.hpp"

namespace dedup {
namespace {

struct HttpResponse {
  int status = 0;
  std::string head;  // status line and headers
  std::string body;
};

// A minimal HTTP/1.0 client: one request per connection, read until the server closes.
HttpResponse http(std::uint16_t port, const std::string& path, const std::string& method = "GET") {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("socket() failed");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    ::close(fd);
    throw std::runtime_error("connect() failed");
  }
  const std::string request = method + " " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  if (::send(fd, request.data(), request.size(), 0) != static_cast<ssize_t>(request.size())) {
    ::close(fd);
    throw std::runtime_error("send() failed");
  }
  std::string raw;
  char buffer[4096];
  for (ssize_t n; (n = ::recv(fd, buffer, sizeof buffer, 0)) > 0;) raw.append(buffer, n);
  ::close(fd);

  HttpResponse response;
  const auto end_of_head = raw.find("\r\n\r\n");
  if (raw.rfind("HTTP/1.", 0) != 0 || end_of_head == std::string::npos) {
    throw std::runtime_error("not an HTTP response: " + raw);
  }
  response.status = std::stoi(raw.substr(raw.find(' ') + 1, 3));
  response.head = raw.substr(0, end_of_head);
  response.body = raw.substr(end_of_head + 4);
  return response;
}

CommandResult duplicate_of(const std::string& type) {
  CommandResult r;
  r.status = Status::duplicate;
  r.replayed = true;
  r.type = type;
  return r;
}

class MetricsServerTest : public ::testing::Test {
 protected:
  Metrics metrics_{{"todo.create"}, "9.9.9"};
  std::atomic<bool> ready_{false};
  MetricsServer server_{"127.0.0.1:0", metrics_.registry(), [this] { return ready_.load(); }};
};

TEST_F(MetricsServerTest, PicksAFreePortWhenAskedForZero) { EXPECT_NE(server_.port(), 0); }

TEST_F(MetricsServerTest, ServesTheRegistryInTheTextFormat) {
  for (int i = 0; i < 3; ++i) metrics_.on_result_published(duplicate_of("todo.create"), 0.2);
  metrics_.on_result_published(duplicate_of("made.up"), 0.2);

  const auto response = http(server_.port(), "/metrics");
  EXPECT_EQ(response.status, 200);
  EXPECT_NE(response.head.find("Content-Type: text/plain; version=0.0.4"), std::string::npos)
      << response.head;
  EXPECT_NE(response.body.find("# TYPE dedup_commands_total counter"), std::string::npos);
  EXPECT_NE(response.body.find("dedup_idempotent_hits_total{type=\"todo.create\"} 3"),
            std::string::npos)
      << response.body;
  EXPECT_NE(response.body.find("dedup_idempotent_hits_total{type=\"unknown\"} 1"),
            std::string::npos);
  EXPECT_NE(response.body.find("dedup_commands_total{status=\"created\",type=\"todo.create\"} 0"),
            std::string::npos);
  EXPECT_NE(response.body.find("dedup_build_info{version=\"9.9.9\"} 1"), std::string::npos);
  EXPECT_NE(response.body.find("dedup_end_to_end_seconds_bucket{le=\"0.25\"} 4"),
            std::string::npos);
  EXPECT_EQ(response.body.find("made.up"), std::string::npos);
}

TEST_F(MetricsServerTest, HealthzAnswersWhileTheProcessRuns) {
  const auto response = http(server_.port(), "/healthz");
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(response.body, "ok\n");
}

TEST_F(MetricsServerTest, ReadyzFollowsTheReadinessCheck) {
  EXPECT_EQ(http(server_.port(), "/readyz").status, 503);
  ready_ = true;
  EXPECT_EQ(http(server_.port(), "/readyz").status, 200);
  EXPECT_EQ(http(server_.port(), "/readyz").body, "ready\n");
  ready_ = false;
  EXPECT_EQ(http(server_.port(), "/readyz").status, 503);
  // Liveness does not depend on readiness.
  EXPECT_EQ(http(server_.port(), "/healthz").status, 200);
}

TEST_F(MetricsServerTest, UnknownPathsAndMethodsAreRefused) {
  EXPECT_EQ(http(server_.port(), "/").status, 404);
  EXPECT_EQ(http(server_.port(), "/metrics/extra").status, 404);
  EXPECT_EQ(http(server_.port(), "/metrics", "POST").status, 405);
  const auto head = http(server_.port(), "/metrics", "HEAD");
  EXPECT_EQ(head.status, 200);
  EXPECT_TRUE(head.body.empty());
}

TEST(MetricsServer, AThrowingReadinessCheckMeansNotReady) {
  Metrics metrics({}, "test");
  MetricsServer server("127.0.0.1:0", metrics.registry(),
                       []() -> bool { throw std::runtime_error("cannot tell"); });
  EXPECT_EQ(http(server.port(), "/readyz").status, 503);
}

TEST(MetricsServer, WithoutAReadinessCheckItIsNeverReady) {
  Metrics metrics({}, "test");
  MetricsServer server("localhost:0", metrics.registry(), nullptr);
  EXPECT_EQ(http(server.port(), "/readyz").status, 503);
  EXPECT_EQ(http(server.port(), "/healthz").status, 200);
}

TEST(MetricsServer, APortInUseIsARuntimeErrorNotAConfigError) {
  Metrics metrics({}, "test");
  MetricsServer first("127.0.0.1:0", metrics.registry(), nullptr);
  const std::string taken = "127.0.0.1:" + std::to_string(first.port());
  try {
    MetricsServer second(taken, metrics.registry(), nullptr);
    FAIL() << "a second server listened on " << taken;
  } catch (const ConfigError&) {
    FAIL() << "a well-formed address must not be reported as a config error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("--metrics-addr"), std::string::npos) << error.what();
  }
}

TEST(MetricsAddress, AcceptsHostAndPortForms) {
  EXPECT_EQ(to_listening_port("0.0.0.0:9464"), "0.0.0.0:9464");
  EXPECT_EQ(to_listening_port("127.0.0.1:0"), "127.0.0.1:0");
  EXPECT_EQ(to_listening_port("localhost:8080"), "127.0.0.1:8080");
  EXPECT_EQ(to_listening_port(":9464"), "9464");
}

TEST(MetricsAddress, RejectsMalformedAddressesNamingTheFlag) {
  for (const char* bad :
       {"", "9464", "0.0.0.0", "0.0.0.0:", "0.0.0.0:http", "0.0.0.0:65536", "0.0.0.0:-1",
        "0.0.0.0:80x", "example.com:9464", "300.0.0.1:9464", "[::1:9464", "[nonsense]:9464"}) {
    try {
      to_listening_port(bad);
      ADD_FAILURE() << "accepted \"" << bad << "\"";
    } catch (const ConfigError& error) {
      EXPECT_EQ(error.field(), "--metrics-addr") << bad;
    }
  }
  EXPECT_THROW(MetricsServer("nope", nullptr, nullptr), ConfigError);
}

}  // namespace
}  // namespace dedup
