#include "server/health.h"

#include <algorithm>
#include <chrono>
#include <utility>

namespace leank::server {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

HealthService::HealthService(std::vector<std::string> services) : services_(std::move(services)) {}

bool HealthService::Known(const std::string& service) const {
  return service.empty() ||
         std::find(services_.begin(), services_.end(), service) != services_.end();
}

void HealthService::SetServing(bool serving) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (shut_down_ || serving_ == serving) return;
    serving_ = serving;
    ++version_;
  }
  changed_.notify_all();
}

void HealthService::Shutdown() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (shut_down_) return;
    shut_down_ = true;
    serving_ = false;
    ++version_;
  }
  changed_.notify_all();
}

grpc::Status HealthService::Check(grpc::ServerContext* /*context*/,
                                  const HealthCheckRequest* request,
                                  HealthCheckResponse* response) {
  if (!Known(request->service())) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        "unknown service '" + request->service() + "'");
  }
  std::lock_guard<std::mutex> l(mu_);
  response->set_status(serving_ ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING);
  return grpc::Status::OK;
}

grpc::Status HealthService::Watch(grpc::ServerContext* context, const HealthCheckRequest* request,
                                  grpc::ServerWriter<HealthCheckResponse>* writer) {
  const bool known = Known(request->service());
  std::unique_lock<std::mutex> l(mu_);
  uint64_t sent_version = 0;
  bool sent_any = false;
  ServingStatus sent = HealthCheckResponse::UNKNOWN;
  for (;;) {
    const ServingStatus now = !known     ? HealthCheckResponse::SERVICE_UNKNOWN
                              : serving_ ? HealthCheckResponse::SERVING
                                         : HealthCheckResponse::NOT_SERVING;
    const bool last = shut_down_;
    sent_version = version_;
    if (!sent_any || now != sent) {
      HealthCheckResponse response;
      response.set_status(now);
      l.unlock();
      const bool written = writer->Write(response);
      l.lock();
      if (!written) return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      sent_any = true;
      sent = now;
    }
    if (last) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "server is shutting down");
    // Wake on a change, and now and then to notice a cancelled call.
    changed_.wait_for(l, std::chrono::milliseconds(200),
                      [&] { return version_ != sent_version || context->IsCancelled(); });
    if (context->IsCancelled()) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled");
    }
  }
}

}  // namespace leank::server
