#pragma once
// Assembles the server: gRPC (LeankService + grpc.health.v1 + reflection), the HTTP
// endpoints, the engine loop; loads and warms the model; serves until SIGTERM/SIGINT,
// then drains. main() calls RunServer with Engine::Create; tests may pass another
// factory (a fake engine) to exercise the same code.

#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "engine/core/engine.h"
#include "server/config.h"

namespace leank::server {

using EngineFactory =
    std::function<absl::StatusOr<std::unique_ptr<Engine>>(const EngineOptions& options)>;

// Blocks SIGTERM/SIGINT in the calling thread (call it before starting any thread),
// serves, drains on the first signal, and returns the process exit code: 0 after a
// drain, 1 when startup failed. A second signal exits at once with code 1.
int RunServer(const ServerConfig& config, const EngineFactory& factory);

// spdlog pattern and level for the process.
void SetUpLogging(const std::string& level);

}  // namespace leank::server
