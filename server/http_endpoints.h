#pragma once
// The HTTP side: GET /metrics (Prometheus text), /healthz (process alive),
// /readyz (200 once the model serves, 503 while loading or draining).

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "server/metrics.h"
#include "server/service.h"

namespace httplib {
class Server;
}

namespace leank::server {

class HttpEndpoints {
 public:
  HttpEndpoints(const Metrics* metrics, const ServerStatus* status);
  ~HttpEndpoints();
  // Binds and serves on a thread; returns the bound port (port 0 picks one).
  absl::StatusOr<int> Start(const std::string& host, int port);
  void Stop();

 private:
  const Metrics* metrics_;
  const ServerStatus* status_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
};

}  // namespace leank::server
