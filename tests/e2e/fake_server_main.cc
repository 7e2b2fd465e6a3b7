// leank-fake-server: the real server (flags, gRPC, HTTP, engine loop, drain) over the
// FakeEngine, so the e2e suite runs in seconds with no model. LEANK_FAKE_STEP_US sets
// the fake step time (default 2000 us). With LEANK_FAKE_LOAD_UNTIL=PATH, "loading the
// model" lasts until PATH exists (at most 60 s), so a test can probe a server that is
// not ready yet for as long as it needs and then let it finish.
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
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
  const char* until = std::getenv("LEANK_FAKE_LOAD_UNTIL");
  const std::string load_until = until != nullptr ? until : "";
  return leank::server::RunServer(*config, [fake, load_until](const leank::EngineOptions& o) {
    for (int i = 0; i < 3000 && !load_until.empty() && !std::filesystem::exists(load_until); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return leank::testing::CreateFakeEngine(o, fake);
  });
}
