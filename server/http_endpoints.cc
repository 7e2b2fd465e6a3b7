#include "server/http_endpoints.h"

#include "absl/strings/str_cat.h"
#include "httplib.h"

namespace leank::server {

HttpEndpoints::HttpEndpoints(const Metrics* metrics, const ServerStatus* status)
    : metrics_(metrics), status_(status), http_(std::make_unique<httplib::Server>()) {}

HttpEndpoints::~HttpEndpoints() { Stop(); }

absl::StatusOr<int> HttpEndpoints::Start(const std::string& host, int port) {
  http_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_->Render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  http_->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  http_->Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
    if (status_->draining.load()) {
      res.status = 503;
      res.set_content("draining\n", "text/plain");
    } else if (!status_->ready.load()) {
      res.status = 503;
      res.set_content("loading\n", "text/plain");
    } else {
      res.set_content("ready\n", "text/plain");
    }
  });
  int bound = port;
  if (port == 0) {
    bound = http_->bind_to_any_port(host.c_str());
  } else if (!http_->bind_to_port(host.c_str(), port)) {
    bound = -1;
  }
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", host, ":", port));
  }
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  return bound;
}

void HttpEndpoints::Stop() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace leank::server
