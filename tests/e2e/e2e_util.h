#pragma once
// Helpers of the e2e suite: a server child process on loopback ports, gRPC calls
// that collect a whole stream, /metrics scraping. Every wait is bounded.

#include <sys/types.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "leank/v1/leank.grpc.pb.h"

namespace leank::e2e {

int FreeLoopbackPort();

class ServerProcess {
 public:
  // Starts `binary` with `args` plus --host/--port/--metrics-port on free loopback
  // ports. The child's output goes to `log_path`.
  static std::unique_ptr<ServerProcess> Start(const std::string& binary,
                                              std::vector<std::string> args,
                                              const std::string& log_path,
                                              std::map<std::string, std::string> env = {});
  ~ServerProcess();  // SIGKILL if still running

  // True once the gRPC port accepts TCP connections.
  bool Listening() const;
  // Polls grpc.health.v1 until SERVING; false on timeout or if the child died.
  bool WaitServing(std::chrono::seconds timeout);
  // Start + WaitServing. The free ports are picked before the child binds them, so a
  // concurrent test may take one first; the server then exits with "cannot listen" and
  // this retries on fresh ports (up to 3 times). Returns the process whether or not it
  // became SERVING; `*serving` says which.
  static std::unique_ptr<ServerProcess> StartServing(const std::string& binary,
                                                     const std::vector<std::string>& args,
                                                     const std::string& log_path,
                                                     std::chrono::seconds timeout, bool* serving,
                                                     std::map<std::string, std::string> env = {});
  void Signal(int sig);
  // Exit code, or nullopt on timeout (-signal if killed by a signal).
  std::optional<int> WaitExit(std::chrono::seconds timeout);
  bool Alive();
  std::string Log() const;

  std::string target() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_port_; }
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  std::unique_ptr<v1::LeankService::Stub> Stub() const;
  // NOT_SERVING / SERVING / UNKNOWN; nullopt when the call itself failed.
  std::optional<grpc::health::v1::HealthCheckResponse::ServingStatus> Health(
      const std::string& service = "");

 private:
  pid_t pid_ = -1;
  int grpc_port_ = 0, http_port_ = 0;
  std::string log_path_;
  std::optional<int> exit_code_;
  std::shared_ptr<grpc::Channel> channel_;
};

// A whole Generate stream.
struct StreamResult {
  grpc::Status status;
  std::string text;
  std::vector<int32_t> token_ids;
  std::vector<v1::GenerateResponse> chunks;
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
};

StreamResult Generate(v1::LeankService::Stub& stub, const v1::GenerateRequest& req,
                      std::chrono::milliseconds deadline = std::chrono::minutes(5));

// HTTP GET on the server's metrics port; body, or "" with *status = -1 on failure.
std::string HttpGet(int port, const std::string& path, int* status = nullptr);
// Value of a metric line "name{labels} value" (labels given verbatim, "" for none).
std::optional<double> MetricValue(const std::string& metrics_text, const std::string& name,
                                  const std::string& labels = "");

}  // namespace leank::e2e
