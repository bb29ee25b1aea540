#include <CivetServer.h>
#include <arpa/inet.h>
#include <civetweb.h>
#include <prometheus/text_serializer.h>

#include <array>
#include <charconv>
#include <functional>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "dedup/errors.hpp"
#include "dedup/metrics.hpp"

namespace dedup {
namespace {

constexpr const char* kFlag = "--metrics-addr";
constexpr const char* kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";
constexpr const char* kTextContentType = "text/plain; charset=utf-8";
constexpr const char* kAllowedMethods = "GET, HEAD";

// Enough request threads that a slow scrape never delays a kubelet probe.
constexpr const char* kRequestThreads = "4";
// A stalled client must not hold a request thread forever.
constexpr const char* kRequestTimeoutMs = "10000";

[[noreturn]] void invalid(std::string_view address, std::string_view problem) {
  throw ConfigError(kFlag, "\"" + std::string(address) + "\": " + std::string(problem));
}

struct Response {
  int status = 200;
  const char* content_type = kTextContentType;
  std::string body;
};

int send(mg_connection* connection, const Response& response, bool head_only,
         const char* allow = nullptr) {
  mg_response_header_start(connection, response.status);
  mg_response_header_add(connection, "Content-Type", response.content_type, -1);
  const std::string length = std::to_string(response.body.size());
  mg_response_header_add(connection, "Content-Length", length.c_str(), -1);
  mg_response_header_add(connection, "Cache-Control", "no-store", -1);
  if (allow != nullptr) mg_response_header_add(connection, "Allow", allow, -1);
  mg_response_header_send(connection);
  if (!head_only && !response.body.empty()) {
    mg_write(connection, response.body.data(), response.body.size());
  }
  return response.status;
}

// civetweb is C underneath CivetServer: no exception may reach it. What can throw here is
// serialization running out of memory, answered as 500.
template <typename MakeResponse>
int send_guarded(mg_connection* connection, const MakeResponse& make, bool head_only,
                 const char* allow = nullptr) noexcept {
  try {
    return send(connection, make(), head_only, allow);
  } catch (...) {
    try {
      return send(connection, {500, kTextContentType, "internal error\n"}, false);
    } catch (...) {
      return 500;
    }
  }
}

Response not_found() { return {404, kTextContentType, "not found\n"}; }
Response method_not_allowed() { return {405, kTextContentType, "method not allowed\n"}; }
Response alive() { return {200, kTextContentType, "ok\n"}; }

// A CivetHandler dispatches only GET, POST, HEAD, PUT, DELETE, OPTIONS and PATCH; any other method
// civetweb knows (CONNECT, PROPFIND, REPORT, ...) would fall through to civetweb's own 404. So the
// method is checked once, for every request, before routing: anything but GET and HEAD is 405.
// (Only for paths: civetweb keeps answering what no handler on "/" would see, such as OPTIONS *.)
int refuse_other_methods(mg_connection* connection) noexcept {
  const mg_request_info* request = mg_get_request_info(connection);
  const std::string_view method = request->request_method != nullptr ? request->request_method : "";
  const bool is_path = request->local_uri != nullptr && request->local_uri[0] == '/';
  if (method == "GET" || method == "HEAD" || !is_path) return 0;  // on to the handlers
  return send_guarded(connection, method_not_allowed, false, kAllowedMethods);
}

// One endpoint: GET and HEAD on exactly `path`. civetweb also routes "/metrics/x" and "/metricsx"
// to the handler of "/metrics", so any other path is answered 404 here. Without `respond`, every
// request is 404 (the catch-all handler on "/").
class Endpoint final : public CivetHandler {
 public:
  Endpoint(std::string path, std::function<Response()> respond)
      : path_(std::move(path)), respond_(std::move(respond)) {}

  using CivetHandler::handleGet;
  using CivetHandler::handleHead;
  bool handleGet(CivetServer* /*server*/, mg_connection* connection, int* status) override {
    *status = answer(connection, false);
    return true;
  }
  bool handleHead(CivetServer* /*server*/, mg_connection* connection, int* status) override {
    *status = answer(connection, true);
    return true;
  }

 private:
  int answer(mg_connection* connection, bool head_only) const noexcept {
    const mg_request_info* request = mg_get_request_info(connection);
    const std::string_view path = request->local_uri != nullptr ? request->local_uri : "";
    if (!respond_ || path != path_) return send_guarded(connection, not_found, head_only);
    return send_guarded(connection, respond_, head_only);
  }

  std::string path_;
  std::function<Response()> respond_;
};

// mg_init_library/mg_exit_library are reference-counted but not thread-safe, and CivetServer calls
// neither (its mg_start would fall back to an unguarded init that is never released). So every
// server holds one reference, taken and dropped under this lock.
class LibraryReference {
 public:
  LibraryReference() {
    const std::lock_guard lock(mutex());
    mg_init_library(0);
  }
  ~LibraryReference() {
    const std::lock_guard lock(mutex());
    mg_exit_library();
  }
  LibraryReference(const LibraryReference&) = delete;
  LibraryReference& operator=(const LibraryReference&) = delete;

 private:
  static std::mutex& mutex() {
    static std::mutex instance;
    return instance;
  }
};

CivetCallbacks callbacks() {
  CivetCallbacks result;
  result.begin_request = &refuse_other_methods;
  return result;
}

}  // namespace

// Members in the order they must exist: the library before the server, the handlers (and what they
// read) until the server has stopped and joined its request threads, which ~CivetServer does.
// (CivetServer copies the callbacks; callbacks_ is a member only to be built before server_.)
class MetricsServer::Listener {
 public:
  Listener(const std::string& listening_ports, std::shared_ptr<prometheus::Registry> registry,
           ReadinessCheck ready)
      : metrics_("/metrics",
                 [registry = std::move(registry)] {
                   return Response{200, kMetricsContentType,
                                   prometheus::TextSerializer().Serialize(registry->Collect())};
                 }),
        healthz_("/healthz", alive),
        readyz_("/readyz",
                [ready = std::move(ready)] {
                  bool is_ready = false;
                  try {
                    is_ready = ready && ready();
                  } catch (...) {
                    is_ready = false;  // a check that cannot tell is a "no"
                  }
                  return is_ready ? Response{200, kTextContentType, "ready\n"}
                                  : Response{503, kTextContentType, "not ready\n"};
                }),
        not_found_("/", nullptr),
        callbacks_(callbacks()),
        server_({"listening_ports", listening_ports, "num_threads", kRequestThreads,
                 "request_timeout_ms", kRequestTimeoutMs},
                &callbacks_) {
    server_.addHandler("/metrics", metrics_);
    server_.addHandler("/healthz", healthz_);
    server_.addHandler("/readyz", readyz_);
    server_.addHandler("/", not_found_);  // every other path: "/" is a prefix of them all
  }

  std::vector<int> ports() { return server_.getListeningPorts(); }

 private:
  LibraryReference library_;
  Endpoint metrics_;
  Endpoint healthz_;
  Endpoint readyz_;
  Endpoint not_found_;
  CivetCallbacks callbacks_;
  CivetServer server_;
};

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

MetricsServer::MetricsServer(std::string_view address,
                             std::shared_ptr<prometheus::Registry> registry, ReadinessCheck ready) {
  const std::string listening_ports = to_listening_port(address);
  try {
    listener_ = std::make_unique<Listener>(listening_ports, std::move(registry), std::move(ready));
  } catch (const CivetException& error) {
    // civetweb 1.15's CivetServer gives no reason (it calls mg_start, not mg_start2); binding is
    // what fails for a well-formed address.
    throw Error(std::string(kFlag) + ": cannot listen on \"" + std::string(address) +
                "\" (port in use, or address not on this machine); civetweb: " + error.what());
  }
  const std::vector<int> ports = listener_->ports();
  if (ports.empty()) {
    throw Error(std::string(kFlag) + ": listening on \"" + std::string(address) +
                "\", but civetweb reports no port");
  }
  port_ = static_cast<std::uint16_t>(ports.front());
}

MetricsServer::~MetricsServer() = default;

}  // namespace dedup
