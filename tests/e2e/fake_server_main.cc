// leank-fake-server: the real server (flags, gRPC, HTTP, engine loop, drain) over the
// FakeEngine, so the e2e suite runs in seconds with no model. LEANK_FAKE_STEP_US sets
// the fake step time (default 2000 us); LEANK_FAKE_LOAD_MS makes "loading the model"
// take that long (default 0), so tests can probe a server that is not ready yet.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "server/config.h"
#include "server/server.h"
#include "tests/e2e/fake_engine.h"

int main(int argc, char** argv) {
  absl::StatusOr<leank::server::ServerConfig> config = leank::server::ParseConfig(argc, argv);
  if (!config.ok()) {
    if (absl::IsCancelled(config.status())) return 0;
    std::cerr << config.status().message() << "\n";
    return 2;
  }
  if (config->model.empty()) config->model = "fake";
  if (absl::Status s = leank::server::CheckConfig(*config); !s.ok()) {
    std::cerr << s.message() << "\n";
    return 2;
  }
  leank::server::SetUpLogging(config->log_level);
  leank::testing::FakeEngineOptions fake;
  if (const char* us = std::getenv("LEANK_FAKE_STEP_US")) fake.step_us = std::atoi(us);
  int load_ms = 0;
  if (const char* ms = std::getenv("LEANK_FAKE_LOAD_MS")) load_ms = std::atoi(ms);
  return leank::server::RunServer(*config, [fake, load_ms](const leank::EngineOptions& o) {
    std::this_thread::sleep_for(std::chrono::milliseconds(load_ms));
    return leank::testing::CreateFakeEngine(o, fake);
  });
}
