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

// A minimal HTTP/1.0 client: one request per connection, read until the server closes. To
// 127.0.0.1, or to ::1 with `ipv6`.
HttpResponse http(std::uint16_t port, const std::string& path, const std::string& method = "GET",
                  bool ipv6 = false) {
  const int fd = ::socket(ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("socket() failed");
  sockaddr_storage address{};
  socklen_t length = 0;
  if (ipv6) {
    auto& v6 = reinterpret_cast<sockaddr_in6&>(address);
    v6.sin6_family = AF_INET6;
    v6.sin6_port = htons(port);
    v6.sin6_addr = in6addr_loopback;
    length = sizeof v6;
  } else {
    auto& v4 = reinterpret_cast<sockaddr_in&>(address);
    v4.sin_family = AF_INET;
    v4.sin_port = htons(port);
    v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    length = sizeof v4;
  }
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), length) != 0) {
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

// The value of header `name` in a response head ("" when absent). Names compare exactly: the server
// spells its headers one way.
std::string header_value(const HttpResponse& response, const std::string& name) {
  const std::string prefix = "\r\n" + name + ": ";
  const auto start = response.head.find(prefix);
  if (start == std::string::npos) return "";
  const auto value = start + prefix.size();
  return response.head.substr(value, response.head.find("\r\n", value) - value);
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

TEST_F(MetricsServerTest, EveryAnswerCarriesItsLengthAndIsNotCached) {
  ready_ = true;
  for (const char* path : {"/metrics", "/healthz", "/readyz", "/nowhere"}) {
    const auto response = http(server_.port(), path);
    EXPECT_EQ(header_value(response, "Content-Length"), std::to_string(response.body.size()))
        << path;
    EXPECT_EQ(header_value(response, "Cache-Control"), "no-store") << path;
  }
  EXPECT_EQ(header_value(http(server_.port(), "/healthz"), "Content-Type"),
            "text/plain; charset=utf-8");
  EXPECT_EQ(header_value(http(server_.port(), "/metrics"), "Content-Type"),
            "text/plain; version=0.0.4; charset=utf-8");
}

TEST_F(MetricsServerTest, UnknownPathsAreNotFound) {
  // civetweb itself would route "/metrics/extra" and "/metricsx" to the /metrics handler.
  for (const char* path :
       {"/", "/nowhere", "/metrics/extra", "/metricsx", "/healthz/", "/readyz/x", "/METRICS"}) {
    const auto response = http(server_.port(), path);
    EXPECT_EQ(response.status, 404) << path;
    EXPECT_EQ(response.body, "not found\n") << path;
  }
  const auto head = http(server_.port(), "/nowhere", "HEAD");
  EXPECT_EQ(head.status, 404);
  EXPECT_TRUE(head.body.empty());
}

TEST_F(MetricsServerTest, MethodsOtherThanGetAndHeadAreNotAllowed) {
  // POST .. PATCH are the methods a CivetHandler is offered; CONNECT, PROPFIND and REPORT are
  // methods civetweb knows but would never hand to one.
  for (const char* method :
       {"POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "PROPFIND", "REPORT"}) {
    for (const char* path : {"/metrics", "/healthz", "/readyz", "/nowhere"}) {
      const auto response = http(server_.port(), path, method);
      EXPECT_EQ(response.status, 405) << method << " " << path;
      EXPECT_EQ(header_value(response, "Allow"), "GET, HEAD") << method << " " << path;
      EXPECT_EQ(header_value(response, "Cache-Control"), "no-store") << method << " " << path;
      EXPECT_EQ(response.body, "method not allowed\n") << method << " " << path;
    }
  }
  EXPECT_EQ(header_value(http(server_.port(), "/healthz"), "Allow"), "");
}

TEST_F(MetricsServerTest, HeadAnswersLikeGetWithoutABody) {
  ready_ = true;
  for (const char* path : {"/metrics", "/healthz", "/readyz"}) {
    const auto get = http(server_.port(), path);
    const auto head = http(server_.port(), path, "HEAD");
    EXPECT_EQ(head.status, 200) << path;
    EXPECT_TRUE(head.body.empty()) << path;
    EXPECT_EQ(header_value(head, "Content-Type"), header_value(get, "Content-Type")) << path;
    EXPECT_EQ(header_value(head, "Cache-Control"), "no-store") << path;
    if (std::string(path) != "/metrics") {  // /metrics may change between the two requests
      EXPECT_EQ(header_value(head, "Content-Length"), std::to_string(get.body.size())) << path;
    }
  }
  ready_ = false;
  const auto head = http(server_.port(), "/readyz", "HEAD");
  EXPECT_EQ(head.status, 503);
  EXPECT_EQ(header_value(head, "Content-Length"), "10");  // "not ready\n"
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

// Debian's civetweb 1.15 is built without IPv6: there a bracketed address is a ConfigError naming
// the flag (what CI checks). Where civetweb has IPv6, the server listens on ::1 when the machine
// has one, and fails naming the flag when it has none. Every branch asserts; none is skipped.
TEST(MetricsServer, ABracketedIpv6AddressIsServedOrRefusedNamingTheFlag) {
  try {
    EXPECT_EQ(to_listening_port("[::1]:9464"), "[::1]:9464");
    EXPECT_EQ(to_listening_port("[::]:0"), "[::]:0");
  } catch (const ConfigError& error) {
    EXPECT_EQ(error.field(), "--metrics-addr");
    EXPECT_NE(std::string(error.what()).find("IPv6 is not supported"), std::string::npos)
        << error.what();
    EXPECT_THROW(MetricsServer("[::1]:0", nullptr, nullptr), ConfigError);
    return;
  }
  const int probe = ::socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 loopback{};
  loopback.sin6_family = AF_INET6;
  loopback.sin6_addr = in6addr_loopback;
  const bool has_ipv6 = probe >= 0 && ::bind(probe, reinterpret_cast<const sockaddr*>(&loopback),
                                             sizeof loopback) == 0;
  if (probe >= 0) ::close(probe);
  Metrics metrics({}, "test");
  if (!has_ipv6) {
    try {
      MetricsServer server("[::1]:0", metrics.registry(), nullptr);
      ADD_FAILURE() << "listened on ::1 although this machine has no IPv6 loopback";
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find("--metrics-addr"), std::string::npos)
          << error.what();
    }
    return;
  }
  MetricsServer server("[::1]:0", metrics.registry(), nullptr);
  EXPECT_NE(server.port(), 0);
  EXPECT_EQ(http(server.port(), "/healthz", "GET", true).status, 200);
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
