#pragma once
// The engine: model + tokenizer + KV cache manager + scheduler + sampler behind one
// single-threaded API. The generator command and the server both drive it: add
// requests, call Step() in a loop, forward each RequestOutput to its client.
// Not thread-safe: the server owns one engine thread that calls everything here.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/core/request.h"
#include "engine/model/config.h"
#include "engine/tokenizer/chat_template.h"
#include "engine/tokenizer/tokenizer.h"

namespace leank {

class Backend;

struct EngineOptions {
  std::filesystem::path model_dir;
  std::filesystem::path mask_path;  // empty: dense
  std::string backend = "cpu";      // "cpu" | "cuda"
  int block_size = 16;
  std::optional<int> sink;       // default: the mask's metadata (128)
  std::optional<int> recent;     // default: the mask's metadata (768)
  int64_t kv_cache_bytes = 0;    // 0: backend default (CPU: 1 GiB)
  int64_t target_context = 0;    // for the full/pruned split; 0: max_model_len
  int max_model_len = 0;         // 0: config.max_position_embeddings
  int max_num_seqs = 64;         // running sequences at most
  int max_batched_tokens = 512;  // tokens per step (prefill chunks + decodes)
  int max_waiting = 1024;        // queue bound: AddRequest -> ResourceExhausted beyond it
  // "reserve": admit only when every running request fits at prompt + max_tokens (no
  // preemption for requests that run to max_tokens); "optimistic": admit when the next
  // chunk fits, preempt by recompute when blocks run out (scheduler.h).
  std::string admission = "reserve";
  int num_threads = 0;  // CPU backend threads; 0: hardware concurrency
  // CPU backend: round activations to bf16 where the CUDA backend does
  // (CpuBackendOptions::bf16_activations); false: the fp32 reference. Ignored on "cuda".
  bool cpu_bf16_activations = false;
  // Draw tokens on the device when the backend can (Backend::samples_on_device) and the
  // request wants no top-n logprobs; false: always on the CPU from the returned logits.
  bool gpu_sampling = true;
  // Tests: wraps the backend the engine created (to fake or observe its steps).
  std::function<std::unique_ptr<Backend>(std::unique_ptr<Backend>)> wrap_backend;
};

struct EngineStats {
  int running = 0;
  int waiting = 0;
  double kv_usage = 0;             // fraction of KV bytes in use
  int64_t kv_capacity_tokens = 0;  // tokens one sequence could hold in an empty pool
  int64_t num_preemptions = 0;     // since start
  int64_t free_full_blocks = 0;
  int64_t free_pruned_blocks = 0;
};

struct ModelInfo {
  std::string model;
  std::string architecture;
  int max_model_len = 0;
  std::string dtype;  // compute dtype of the backend ("float32" on CPU)
  std::string backend;
  bool masked = false;
  double k_sparsity = 0;  // 1 - kept fraction (0 when dense)
  int sink = 0, recent = 0, block_size = 0;
  int64_t kv_capacity_tokens = 0;
  int vocab_size = 0;
};

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options);
  virtual ~Engine() = default;

  virtual const ModelConfig& config() const = 0;
  virtual const Tokenizer& tokenizer() const = 0;
  // nullptr when the model ships no (known) chat template.
  virtual const ChatTemplate* chat_template() const = 0;
  // Why chat_template() is nullptr (e.g. "unknown chat template"), OK otherwise.
  virtual absl::Status chat_template_status() const = 0;
  virtual ModelInfo info() const = 0;

  // Checks a request against the model (non-empty prompt, ids inside the vocabulary,
  // prompt + max_tokens within max_model_len, parameter ranges). InvalidArgument
  // naming the field otherwise. Does not enqueue.
  virtual absl::Status Validate(const std::vector<int32_t>& prompt,
                                const GenerationParams& params) const = 0;
  // Validates and enqueues. ResourceExhausted when the waiting queue is full;
  // AlreadyExists for a live id.
  virtual absl::Status AddRequest(RequestId id, std::vector<int32_t> prompt,
                                  GenerationParams params) = 0;
  // The request finishes with kAbort in the next Step(); its blocks are freed there.
  virtual void AbortRequest(RequestId id) = 0;
  virtual bool HasWork() const = 0;
  // One scheduler step: plan, run the backend, sample, detokenize, check stops.
  // Returns an output for every request that produced tokens or finished.
  virtual std::vector<RequestOutput> Step() = 0;
  virtual EngineStats stats() const = 0;
};

}  // namespace leank
