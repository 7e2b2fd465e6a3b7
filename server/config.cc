#include "server/config.h"

#include <iostream>
#include <string>
#include <variant>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace leank::server {
namespace {

using Field = std::variant<std::string ServerConfig::*, int ServerConfig::*,
                           int64_t ServerConfig::*, double ServerConfig::*, bool ServerConfig::*>;

struct FlagSpec {
  const char* name;  // without the leading "--"
  const char* env;
  Field field;
  bool size = false;  // byte size with units ("4GiB")
  const char* help;
};

// THE table: flag, env twin, the ServerConfig field (whose default is the default).
const FlagSpec kFlagTable[] = {
    {"model", "LEANK_MODEL", &ServerConfig::model, false,
     "Model folder (config.json, model.safetensors, tokenizer.json)"},
    {"masks", "LEANK_MASKS", &ServerConfig::masks, false,
     "LeanK masks.safetensors; empty serves dense"},
    {"backend", "LEANK_BACKEND", &ServerConfig::backend, false, "cpu | cuda"},
    {"served-model-name", "LEANK_SERVED_MODEL_NAME", &ServerConfig::served_model_name, false,
     "Model name reported by GetModelInfo; empty: from config.json"},
    {"kv-cache-memory", "LEANK_KV_CACHE_MEMORY", &ServerConfig::kv_cache_memory, true,
     "KV cache pool size in bytes (units accepted: 512MiB, 4GiB); 0: backend default"},
    {"block-size", "LEANK_BLOCK_SIZE", &ServerConfig::block_size, false,
     "Tokens per KV block (multiple of 16)"},
    {"sink", "LEANK_SINK", &ServerConfig::sink, false,
     "Sink tokens kept in full; -1: from the mask metadata"},
    {"recent", "LEANK_RECENT", &ServerConfig::recent, false,
     "Recent tokens kept in full; -1: from the mask metadata"},
    {"max-model-len", "LEANK_MAX_MODEL_LEN", &ServerConfig::max_model_len, false,
     "Context length served; 0: the model's"},
    {"target-context", "LEANK_TARGET_CONTEXT", &ServerConfig::target_context, false,
     "Context the KV pool's full/pruned split is sized for; 0: max-model-len"},
    {"max-num-seqs", "LEANK_MAX_NUM_SEQS", &ServerConfig::max_num_seqs, false,
     "Running sequences at most"},
    {"max-batched-tokens", "LEANK_MAX_BATCHED_TOKENS", &ServerConfig::max_batched_tokens, false,
     "Tokens per engine step (prefill chunks + decodes)"},
    {"max-waiting", "LEANK_MAX_WAITING", &ServerConfig::max_waiting, false,
     "Queued requests at most; beyond it RESOURCE_EXHAUSTED"},
    {"admission", "LEANK_ADMISSION", &ServerConfig::admission, false,
     "reserve: admit only when running requests fit at prompt + max_tokens (no preemption); "
     "optimistic: admit when the next chunk fits, preempt by recompute when blocks run out"},
    {"num-threads", "LEANK_NUM_THREADS", &ServerConfig::num_threads, false,
     "CPU backend threads; 0: all cores"},
    {"cpu-activations", "LEANK_CPU_ACTIVATIONS", &ServerConfig::cpu_activations, false,
     "CPU backend activations: f32 (the fp32 reference) | bf16 (rounded to bf16 where the CUDA "
     "backend stores them: a bf16-faithful reference for comparing the two)"},
    {"gpu-sampling", "LEANK_GPU_SAMPLING", &ServerConfig::gpu_sampling, false,
     "Draw tokens on the GPU when the backend can (cuda) and the request asks for no top "
     "logprobs; false: on the CPU from the copied logits"},
    {"host", "LEANK_HOST", &ServerConfig::host, false, "Address to listen on"},
    {"port", "LEANK_PORT", &ServerConfig::port, false, "gRPC port"},
    {"metrics-port", "LEANK_METRICS_PORT", &ServerConfig::metrics_port, false,
     "HTTP port of /metrics, /healthz, /readyz; 0: off"},
    {"drain-timeout", "LEANK_DRAIN_TIMEOUT", &ServerConfig::drain_timeout, false,
     "Seconds in-flight requests get to finish after SIGTERM/SIGINT"},
    {"log-level", "LEANK_LOG_LEVEL", &ServerConfig::log_level, false,
     "trace | debug | info | warn | error"},
    {"warmup", "LEANK_WARMUP", &ServerConfig::warmup, false,
     "Run one tiny generation before reporting SERVING"},
};

std::string DefaultText(const Field& field) {
  const ServerConfig defaults;
  return std::visit(
      [&](auto member) -> std::string {
        const auto& v = defaults.*member;
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) {
          return v;
        } else if constexpr (std::is_same_v<T, bool>) {
          return v ? "true" : "false";
        } else if constexpr (std::is_same_v<T, double>) {
          std::string s = absl::StrCat(v);
          return s;
        } else {
          return std::to_string(v);
        }
      },
      field);
}

std::string TypeName(const FlagSpec& spec) {
  if (spec.size) return "size";
  return std::visit(
      [](auto member) -> std::string {
        using T = std::decay_t<decltype(ServerConfig{}.*member)>;
        if constexpr (std::is_same_v<T, std::string>) return "string";
        if constexpr (std::is_same_v<T, bool>) return "bool";
        if constexpr (std::is_same_v<T, double>) return "float";
        return "int";
      },
      spec.field);
}

}  // namespace

EngineOptions ServerConfig::ToEngineOptions() const {
  EngineOptions o;
  o.model_dir = model;
  o.mask_path = masks;
  o.backend = backend;
  o.block_size = block_size;
  if (sink >= 0) o.sink = sink;
  if (recent >= 0) o.recent = recent;
  o.kv_cache_bytes = kv_cache_memory;
  o.target_context = target_context;
  o.max_model_len = max_model_len;
  o.max_num_seqs = max_num_seqs;
  o.max_batched_tokens = max_batched_tokens;
  o.max_waiting = max_waiting;
  o.admission = admission;
  o.num_threads = num_threads;
  o.cpu_bf16_activations = cpu_activations == "bf16";
  o.gpu_sampling = gpu_sampling;
  return o;
}

std::vector<FlagSchema> ConfigSchema() {
  std::vector<FlagSchema> out;
  for (const FlagSpec& spec : kFlagTable) {
    out.push_back({absl::StrCat("--", spec.name), spec.env, DefaultText(spec.field), TypeName(spec),
                   spec.help});
  }
  return out;
}

std::string ConfigSchemaJson() {
  nlohmann::json arr = nlohmann::json::array();
  for (const FlagSchema& f : ConfigSchema()) {
    arr.push_back({{"flag", f.flag},
                   {"env", f.env},
                   {"default", f.default_value},
                   {"type", f.type},
                   {"help", f.help}});
  }
  return arr.dump(2);
}

absl::StatusOr<ServerConfig> ParseConfig(int argc, char** argv) {
  ServerConfig config;
  CLI::App app{"leank-serve: gRPC LLM inference server with LeanK K-cache masks"};
  bool print_schema = false;
  app.add_flag("--print-config-schema", print_schema,
               "Print the flag/env/default table as JSON and exit");
  for (const FlagSpec& spec : kFlagTable) {
    const std::string name = absl::StrCat("--", spec.name);
    CLI::Option* opt = std::visit(
        [&](auto member) -> CLI::Option* {
          auto& ref = config.*member;
          using T = std::decay_t<decltype(ref)>;
          if constexpr (std::is_same_v<T, bool>) {
            // A bool takes a value ("--warmup=false") so the env twin can say false.
            return app.add_option(name, ref, spec.help);
          } else {
            return app.add_option(name, ref, spec.help);
          }
        },
        spec.field);
    opt->envname(spec.env)->capture_default_str();
    if (spec.size) opt->transform(CLI::AsSizeValue(false));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    app.exit(e);
    return absl::CancelledError("help printed");
  } catch (const CLI::ParseError& e) {
    return absl::InvalidArgumentError(absl::StrCat("flags: ", e.what()));
  }
  if (print_schema) {
    std::cout << ConfigSchemaJson() << std::endl;
    return absl::CancelledError("schema printed");
  }
  return config;
}

absl::Status CheckConfig(const ServerConfig& c) {
  auto bad = [](const char* flag, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", why));
  };
  if (c.model.empty()) return bad("model", "required (or LEANK_MODEL)");
  if (c.backend != "cpu" && c.backend != "cuda") return bad("backend", "must be cpu or cuda");
  if (c.port < 0 || c.port > 65535) return bad("port", "outside [0, 65535]");
  if (c.metrics_port < 0 || c.metrics_port > 65535)
    return bad("metrics-port", "outside [0, 65535]");
  if (c.block_size <= 0 || c.block_size % 16 != 0)
    return bad("block-size", "must be a positive multiple of 16");
  if (c.kv_cache_memory < 0) return bad("kv-cache-memory", "must be >= 0");
  if (c.max_num_seqs <= 0) return bad("max-num-seqs", "must be > 0");
  if (c.max_batched_tokens <= 0) return bad("max-batched-tokens", "must be > 0");
  if (c.max_waiting <= 0) return bad("max-waiting", "must be > 0");
  if (c.admission != "reserve" && c.admission != "optimistic") {
    return bad("admission", "must be 'reserve' or 'optimistic', got '" + c.admission + "'");
  }
  if (c.max_model_len < 0 || c.max_model_len == 1) {
    // 1 fits no request: one prompt token leaves no room for a generated one.
    return bad("max-model-len", "must be 0 (the model's) or >= 2, got " +
                                    std::to_string(c.max_model_len));
  }
  if (c.sink < -1) return bad("sink", "must be >= 0 (or -1 for the mask's)");
  if (c.recent < -1) return bad("recent", "must be >= 0 (or -1 for the mask's)");
  if (c.num_threads < 0) return bad("num-threads", "must be >= 0");
  if (c.cpu_activations != "f32" && c.cpu_activations != "bf16") {
    return bad("cpu-activations", "must be 'f32' or 'bf16', got '" + c.cpu_activations + "'");
  }
  if (c.cpu_activations == "bf16" && c.backend != "cpu") {
    return bad("cpu-activations", "bf16 applies to --backend cpu only (the " + c.backend +
                                      " backend has its own precision)");
  }
  if (!(c.drain_timeout >= 0)) return bad("drain-timeout", "must be >= 0");
  static const char* kLevels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  bool known = false;
  for (const char* l : kLevels) known |= c.log_level == l;
  if (!known) return bad("log-level", "unknown level '" + c.log_level + "'");
  return absl::OkStatus();
}

}  // namespace leank::server
