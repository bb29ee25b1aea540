#include <arpa/inet.h>
#include <civetweb.h>
#include <prometheus/text_serializer.h>

#include <array>
#include <charconv>
#include <mutex>
#include <string>
#include <utility>

#include "dedup/errors.hpp"
#include "dedup/metrics.hpp"

namespace dedup {
namespace {

constexpr const char* kFlag = "--metrics-addr";
constexpr const char* kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";
constexpr const char* kTextContentType = "text/plain; charset=utf-8";

// Enough request threads that a slow scrape never delays a kubelet probe.
constexpr const char* kRequestThreads = "4";
// A stalled client must not hold a request thread forever.
constexpr const char* kRequestTimeoutMs = "10000";

// mg_init_library/mg_exit_library are reference-counted but not thread-safe.
std::mutex& civetweb_library_mutex() {
  static std::mutex mutex;
  return mutex;
}

[[noreturn]] void invalid(std::string_view address, std::string_view problem) {
  throw ConfigError(kFlag, "\"" + std::string(address) + "\": " + std::string(problem));
}

int send(mg_connection* connection, int status, const char* content_type, const std::string& body,
         bool head_only, const char* allow = nullptr) {
  mg_response_header_start(connection, status);
  mg_response_header_add(connection, "Content-Type", content_type, -1);
  const std::string length = std::to_string(body.size());
  mg_response_header_add(connection, "Content-Length", length.c_str(), -1);
  mg_response_header_add(connection, "Cache-Control", "no-store", -1);
  if (allow != nullptr) mg_response_header_add(connection, "Allow", allow, -1);
  mg_response_header_send(connection);
  if (!head_only && !body.empty()) mg_write(connection, body.data(), body.size());
  return status;
}

}  // namespace

std::string to_listening_port(std::string_view address) {
  const auto colon = address.rfind(':');
  if (colon == std::string_view::npos) invalid(address, "expected host:port");
  std::string_view host = address.substr(0, colon);
  const std::string_view port_text = address.substr(colon + 1);

  unsigned port = 0;
  const auto [end, error] =
      std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || error != std::errc{} || end != port_text.data() + port_text.size() ||
      port > 65535) {
    invalid(address, "the port must be a number from 0 to 65535");
  }
  std::string port_string = std::to_string(port);

  if (host.empty()) return port_string;  // every IPv4 interface
  if (host == "localhost") host = "127.0.0.1";

  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') invalid(address, "unterminated IPv6 address");
    const std::string ip(host.substr(1, host.size() - 2));
    std::array<unsigned char, 16> buffer{};
    if (inet_pton(AF_INET6, ip.c_str(), buffer.data()) != 1) {
      invalid(address, "not an IPv6 address");
    }
    if (mg_check_feature(MG_FEATURES_IPV6) == 0) {
      invalid(address, "IPv6 is not supported by this build of civetweb");
    }
    return "[" + ip + "]:" + port_string;
  }
  const std::string ip(host);
  std::array<unsigned char, 4> buffer{};
  if (inet_pton(AF_INET, ip.c_str(), buffer.data()) != 1) {
    invalid(address, "the host must be an IPv4 address, [IPv6 address], localhost or empty");
  }
  return ip + ":" + port_string;
}

void MetricsServer::ContextDeleter::operator()(mg_context* context) const noexcept {
  mg_stop(context);  // joins the request threads: no handler runs after this
  const std::lock_guard lock(civetweb_library_mutex());
  mg_exit_library();
}

MetricsServer::MetricsServer(std::string_view address,
                             std::shared_ptr<prometheus::Registry> registry, ReadinessCheck ready)
    : registry_(std::move(registry)), ready_(std::move(ready)) {
  const std::string listening_ports = to_listening_port(address);
  std::array<const char*, 7> options = {
      "listening_ports",    listening_ports.c_str(), "num_threads", kRequestThreads,
      "request_timeout_ms", kRequestTimeoutMs,       nullptr};
  mg_callbacks callbacks{};
  mg_init_data init{};
  init.callbacks = &callbacks;
  init.user_data = this;
  init.configuration_options = options.data();

  std::array<char, 256> error_text{};
  unsigned error_code = 0;
  mg_error_data error{};
  error.code = &error_code;
  error.text = error_text.data();
  error.text_buffer_size = error_text.size();

  {
    const std::lock_guard lock(civetweb_library_mutex());
    mg_init_library(0);
  }
  mg_context* context = mg_start2(&init, &error);
  if (context == nullptr) {
    const std::lock_guard lock(civetweb_library_mutex());
    mg_exit_library();
    throw Error(std::string(kFlag) + ": cannot listen on \"" + std::string(address) +
                "\": " + (error_text[0] != '\0' ? error_text.data() : "unknown civetweb error"));
  }
  context_.reset(context);
  // Every URI goes through one handler, which matches paths exactly (civetweb's own matching
  // would also route "/metrics/x" to "/metrics").
  mg_set_request_handler(context, "/", &MetricsServer::handle_request, this);

  std::array<mg_server_port, 4> ports{};
  const int count = mg_get_server_ports(context, static_cast<int>(ports.size()), ports.data());
  if (count < 1) {
    throw Error(std::string(kFlag) + ": listening on \"" + std::string(address) +
                "\", but civetweb reports no port");
  }
  port_ = static_cast<std::uint16_t>(ports[0].port);
}

MetricsServer::~MetricsServer() = default;

int MetricsServer::handle_request(mg_connection* connection, void* self) noexcept {
  try {
    return static_cast<const MetricsServer*>(self)->respond(connection);
  } catch (...) {
    // Serialization ran out of memory, most likely; civetweb is C and must not see exceptions.
    try {
      return send(connection, 500, kTextContentType, "internal error\n", false);
    } catch (...) {
      return 500;
    }
  }
}

int MetricsServer::respond(mg_connection* connection) const {
  const mg_request_info* request = mg_get_request_info(connection);
  const std::string_view method = request->request_method != nullptr ? request->request_method : "";
  const std::string_view path = request->local_uri != nullptr ? request->local_uri : "";
  const bool head_only = method == "HEAD";
  if (method != "GET" && !head_only) {
    return send(connection, 405, kTextContentType, "method not allowed\n", false, "GET, HEAD");
  }

  if (path == "/metrics") {
    const std::string body = prometheus::TextSerializer().Serialize(registry_->Collect());
    return send(connection, 200, kMetricsContentType, body, head_only);
  }
  if (path == "/healthz") return send(connection, 200, kTextContentType, "ok\n", head_only);
  if (path == "/readyz") {
    bool ready = false;
    try {
      ready = ready_ && ready_();
    } catch (...) {
      ready = false;  // a check that cannot tell is a "no"
    }
    return ready ? send(connection, 200, kTextContentType, "ready\n", head_only)
                 : send(connection, 503, kTextContentType, "not ready\n", head_only);
  }
  return send(connection, 404, kTextContentType, "not found\n", head_only);
}

}  // namespace dedup
