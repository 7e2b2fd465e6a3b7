#include "server/server.h"

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "server/engine_loop.h"
#include "server/health.h"
#include "server/http_endpoints.h"
#include "server/metrics.h"
#include "server/service.h"
#include "spdlog/spdlog.h"

namespace leank::server {
namespace {

constexpr char kServiceName[] = "leank.v1.LeankService";

// Set by the signal thread, read by RunServer.
struct Shutdown {
  std::mutex mu;
  std::condition_variable cv;
  bool requested = false;
  std::atomic<bool> serving{false};  // past startup: a signal drains instead of exiting
};

void StartSignalThread(Shutdown* shutdown) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([shutdown, set] {
    int seen = 0;
    for (;;) {
      int sig = 0;
      if (sigwait(&set, &sig) != 0) continue;
      ++seen;
      if (seen > 1) {
        spdlog::warn("second signal {}: exiting now", sig);
        spdlog::shutdown();
        std::_Exit(1);
      }
      if (!shutdown->serving.load()) {
        // Nothing in flight while loading: exit at once rather than wait for the model.
        spdlog::info("signal {} during startup: exiting", sig);
        spdlog::shutdown();
        std::_Exit(0);
      }
      spdlog::info("signal {}: draining", sig);
      {
        std::lock_guard<std::mutex> l(shutdown->mu);
        shutdown->requested = true;
      }
      shutdown->cv.notify_all();
    }
  }).detach();
}

// One tiny greedy generation through the whole path, so the first user does not
// pay for lazy initialisation, and so a broken model never reports SERVING. It is
// not counted in /metrics: no client sent it.
absl::Status WarmUp(EngineLoop& loop) {
  const Engine& engine = loop.engine();
  std::vector<int32_t> prompt;
  if (absl::StatusOr<std::vector<int32_t>> ids = engine.tokenizer().Encode("Hello", true);
      ids.ok()) {
    prompt = *std::move(ids);
  }
  if (prompt.empty()) prompt = {0};
  GenerationParams params;
  params.max_tokens = 2;
  params.sampling.temperature = 0;
  params.ignore_eos = true;
  absl::StatusOr<std::shared_ptr<RequestChannel>> channel =
      loop.Submit(0, "warmup", std::move(prompt), params, std::chrono::steady_clock::now(),
                  /*observe=*/false);
  if (!channel.ok()) return channel.status();
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::minutes(10);
  while (std::chrono::steady_clock::now() < give_up) {
    RequestChannel::Batch b = (*channel)->Wait(std::chrono::milliseconds(100));
    if (!b.rejected.ok()) return b.rejected;
    for (const RequestOutput& out : b.outputs) {
      if (!out.finished) continue;
      if (out.finish_reason == FinishReason::kError) return out.error;
      return absl::OkStatus();
    }
  }
  return absl::DeadlineExceededError("warm-up generation did not finish in 10 minutes");
}

// Waits until nothing is in flight or `timeout` passes; true when drained.
bool WaitIdle(const EngineLoop& loop, const ServerStatus& status, double timeout_s) {
  const auto until = std::chrono::steady_clock::now() +
                     std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                         std::chrono::duration<double>(timeout_s));
  for (;;) {
    if (loop.InFlight() == 0 && status.active_streams.load() == 0) return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace

void SetUpLogging(const std::string& level) {
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%L%$ %t %v");
  spdlog::set_level(spdlog::level::from_str(level));
}

int RunServer(const ServerConfig& config, const EngineFactory& factory) {
  static Shutdown shutdown;  // the signal thread outlives this call
  StartSignalThread(&shutdown);

  Metrics metrics;
  ServerStatus status;
  LeankServiceImpl service(&status, &metrics);
  HealthService health({kServiceName});  // NOT_SERVING until the model is loaded and warm

  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string address = absl::StrCat(config.host, ":", config.port);
  int grpc_port = 0;
  // No SO_REUSEPORT (gRPC's default on Linux): a second server on a port in use must fail,
  // not silently share the connections with the first one.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &grpc_port);
  builder.RegisterService(&service);
  builder.RegisterService(&health);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || grpc_port == 0) {
    spdlog::critical("gRPC: cannot listen on {} (address in use or not available; --host/--port)",
                     address);
    return 1;
  }

  HttpEndpoints http(&metrics, &status);
  int http_port = 0;
  if (config.metrics_port != 0) {
    absl::StatusOr<int> p = http.Start(config.host, config.metrics_port);
    if (!p.ok()) {
      spdlog::critical("{}", std::string(p.status().message()));
      health.Shutdown();
      server->Shutdown();
      return 1;
    }
    http_port = *p;
  }
  spdlog::info("listening: gRPC {}:{}, HTTP {}:{}; loading model {} (backend {})", config.host,
               grpc_port, config.host, http_port, config.model, config.backend);

  absl::StatusOr<std::unique_ptr<Engine>> engine = factory(config.ToEngineOptions());
  if (!engine.ok()) {
    spdlog::critical("loading the model failed: {}", engine.status().ToString());
    health.Shutdown();
    server->Shutdown();
    http.Stop();
    return 1;
  }
  const ModelInfo info = (*engine)->info();
  EngineLoop loop(*std::move(engine), config.max_waiting, &metrics);
  loop.Start();
  service.Attach(&loop, info, config.served_model_name);
  if (config.warmup) {
    if (absl::Status s = WarmUp(loop); !s.ok()) {
      spdlog::critical("warm-up generation failed: {}", s.ToString());
      health.Shutdown();
      server->Shutdown();
      http.Stop();
      loop.Stop();
      return 1;
    }
  }
  spdlog::info("serving {} ({}, {} backend, max_model_len {}, masked {}, kv capacity {} tokens)",
               info.model, info.architecture, info.backend, info.max_model_len, info.masked,
               info.kv_capacity_tokens);
  status.ready.store(true);
  metrics.SetReady(true, false);
  health.SetServing(true);
  shutdown.serving.store(true);

  {
    std::unique_lock<std::mutex> l(shutdown.mu);
    shutdown.cv.wait(l, [] { return shutdown.requested; });
  }

  // Drain: refuse new work, let in-flight requests finish up to the grace period.
  status.draining.store(true);
  metrics.SetReady(true, true);
  health.SetServing(false);
  spdlog::info("draining: {} requests in flight, up to {} s", loop.InFlight(),
               config.drain_timeout);
  if (!WaitIdle(loop, status, config.drain_timeout)) {
    spdlog::warn("drain timeout: aborting {} requests", loop.InFlight());
    loop.AbortAll();
    WaitIdle(loop, status, 5.0);
  }
  health.Shutdown();  // ends open Watch streams, which Shutdown would wait on
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  http.Stop();
  loop.Stop();
  spdlog::info("stopped");
  return 0;
}

}  // namespace leank::server
