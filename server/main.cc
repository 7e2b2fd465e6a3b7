// leank-server: flags/env -> ServerConfig -> RunServer with the real engine.
#include <iostream>

#include "engine/core/engine.h"
#include "server/config.h"
#include "server/server.h"

int main(int argc, char** argv) {
  absl::StatusOr<leank::server::ServerConfig> config = leank::server::ParseConfig(argc, argv);
  if (!config.ok()) {
    if (absl::IsCancelled(config.status())) return 0;  // --help / --print-config-schema
    std::cerr << config.status().message() << "\n";
    return 2;
  }
  if (absl::Status s = leank::server::CheckConfig(*config); !s.ok()) {
    std::cerr << s.message() << "\n";
    return 2;
  }
  leank::server::SetUpLogging(config->log_level);
  return leank::server::RunServer(*config, &leank::Engine::Create);
}
