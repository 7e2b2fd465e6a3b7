#pragma once
// A test double of leank::Engine with the real one's observable behaviour and no
// model: byte-level tokenizer, a deterministic "model" (the next token is a hash of
// the last few), and a small paged-block scheduler with continuous batching, a token
// budget, chunked prefill, FCFS admission and preemption by recompute (newest
// first). Greedy outputs depend only on the prompt, never on batching or
// preemption, like a correct engine's. Used by the server unit tests and by
// leank-fake-server, which runs the e2e suite without a model.

#include <cstdint>
#include <functional>
#include <memory>

#include "engine/core/engine.h"

namespace leank::testing {

// Vocabulary: ids 0..255 are bytes; then these special tokens.
inline constexpr int32_t kFakeEos = 256;      // "<|endoftext|>"
inline constexpr int32_t kFakeImStart = 257;  // "<|im_start|>"
inline constexpr int32_t kFakeImEnd = 258;    // "<|im_end|>"
inline constexpr int kFakeVocab = 259;
inline constexpr int64_t kFakeBytesPerToken = 1024;  // KV bytes a token "uses"

std::unique_ptr<Tokenizer> MakeFakeTokenizer();

struct FakeEngineOptions {
  int step_us = 2000;  // sleep per step, so streams take observable time
  // Called on the engine's thread inside each Step(), after the step's batch is planned
  // and before its sleep, with the step's 0-based index. Tests block in it to act while
  // a known step runs (the caller cannot see what it submits meanwhile until the next).
  std::function<void(int64_t step)> in_step;
};

// options.kv_cache_bytes / kFakeBytesPerToken tokens of KV (0: 1 Mi tokens);
// max_model_len 0 means 2048.
absl::StatusOr<std::unique_ptr<Engine>> CreateFakeEngine(const EngineOptions& options,
                                                         const FakeEngineOptions& fake = {});

}  // namespace leank::testing
