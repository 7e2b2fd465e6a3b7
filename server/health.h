#pragma once
// grpc.health.v1.Health (Check and Watch) with a status that starts NOT_SERVING.
// grpc++'s default health service starts at SERVING the moment the server starts,
// so a probe in the instant between BuildAndStart and the first SetServingStatus saw
// a loading server as ready; this one is registered like any service and says
// SERVING only after SetServing(true). It answers for "" (the whole server) and for
// the service names given at construction; other names get NOT_FOUND from Check and
// SERVICE_UNKNOWN from Watch, as the health protocol specifies.

#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"

namespace leank::server {

class HealthService final : public grpc::health::v1::Health::Service {
 public:
  explicit HealthService(std::vector<std::string> services);

  // Every known service (and "") becomes SERVING or NOT_SERVING; open Watch
  // streams get the change.
  void SetServing(bool serving);
  // NOT_SERVING for good: later SetServing calls are ignored and open Watch
  // streams end after sending it. Call before grpc::Server::Shutdown, so that
  // Shutdown does not wait on the streams.
  void Shutdown();

  grpc::Status Check(grpc::ServerContext* context,
                     const grpc::health::v1::HealthCheckRequest* request,
                     grpc::health::v1::HealthCheckResponse* response) override;
  grpc::Status Watch(grpc::ServerContext* context,
                     const grpc::health::v1::HealthCheckRequest* request,
                     grpc::ServerWriter<grpc::health::v1::HealthCheckResponse>* writer) override;

 private:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;
  bool Known(const std::string& service) const;

  const std::vector<std::string> services_;  // "" included
  std::mutex mu_;
  std::condition_variable changed_;
  bool serving_ = false;    // guarded by mu_
  bool shut_down_ = false;  // guarded by mu_
  uint64_t version_ = 0;    // guarded by mu_; bumped on every change
};

}  // namespace leank::server
