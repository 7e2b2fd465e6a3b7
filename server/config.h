#pragma once
// Server configuration: every knob is a flag with an environment-variable twin, and
// all of them are listed in ONE table (kFlagTable in config.cc). The deployment
// manifests are checked against that table through `--print-config-schema`.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/engine.h"

namespace leank::server {

struct ServerConfig {
  // Model.
  std::string model;              // model folder (config.json, model.safetensors, tokenizer.json)
  std::string masks;              // LeanK masks.safetensors; empty: dense
  std::string backend = "cpu";    // "cpu" | "cuda"
  std::string served_model_name;  // name reported by GetModelInfo; empty: the config's
  // Cache and scheduler.
  int64_t kv_cache_memory = 0;  // bytes ("4GiB" accepted); 0: backend default
  int block_size = 16;
  int sink = -1;               // -1: the mask's metadata
  int recent = -1;             // -1: the mask's metadata
  int max_model_len = 0;       // 0: the model's max_position_embeddings
  int64_t target_context = 0;  // 0: max_model_len
  int max_num_seqs = 64;
  int max_batched_tokens = 512;
  int max_waiting = 1024;  // queued requests beyond this: RESOURCE_EXHAUSTED
  std::string admission = "reserve";  // reserve | optimistic (engine/core/scheduler.h)
  int num_threads = 0;     // CPU backend threads; 0: all cores
  std::string cpu_activations = "f32";  // f32 | bf16 (CpuBackendOptions::bf16_activations)
  // Sample on the device when the backend can (EngineOptions::gpu_sampling).
  bool gpu_sampling = true;
  // Network.
  std::string host = "0.0.0.0";
  int port = 50051;         // gRPC
  int metrics_port = 9090;  // HTTP /metrics, /healthz, /readyz; 0: off
  // Operations.
  double drain_timeout = 30;       // seconds in-flight requests get after SIGTERM
  std::string log_level = "info";  // trace|debug|info|warn|error
  bool warmup = true;              // one tiny generation before reporting SERVING

  EngineOptions ToEngineOptions() const;
};

struct FlagSchema {
  std::string flag;           // "--port"
  std::string env;            // "LEANK_PORT"
  std::string default_value;  // as text, as an env var would carry it
  std::string type;           // "string" | "int" | "size" | "float" | "bool"
  std::string help;
};

// The table, with defaults taken from a default-constructed ServerConfig.
std::vector<FlagSchema> ConfigSchema();
// JSON array of {flag, env, default, type, help}.
std::string ConfigSchemaJson();

// Parses argv and the LEANK_* environment (a flag wins over its env var).
// Returns nullopt-like status kCancelled when the process should exit 0 at once
// (--help, --print-config-schema already printed); InvalidArgument for bad input.
absl::StatusOr<ServerConfig> ParseConfig(int argc, char** argv);

// Checks ranges (ports, positive sizes, known backend); InvalidArgument naming the flag.
absl::Status CheckConfig(const ServerConfig& config);

}  // namespace leank::server
