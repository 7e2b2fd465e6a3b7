#pragma once
// Token sampling on the GPU: one CTA per sampled logits row, one launch per step.
//
// Per row, in the order of the CPU sampler (engine/sampling/sampler.h, vLLM's order):
//   1. banned tokens -> -inf (in place; part of the "raw" logits, as the engine's CPU path
//      writes -inf before Sampler::Sample),
//   2. log-sum-exp of the raw row (for the chosen token's logprob),
//   3. repetition penalty (HF, prompt + output), presence/frequency penalties (output),
//      in place, bit-exact with ApplyPenalties (no FMA contraction),
//   4. temperature 0: argmax bit-exact with the CPU ArgMax (first maximum; NaN never
//      beats a number, but a NaN at index 0 wins because the CPU starts from index 0),
//   5. otherwise x / temperature, top-k and top-p thresholds by 8-bit radix select over
//      the row (no sort), min-p against the maximum, then a Gumbel-max draw over the kept
//      set: argmax_v (x_v / T + G_v) with G_v = -log(-log U_v) gives exactly the filtered
//      softmax distribution. U_v is a Philox4x32-10 draw keyed by (seed, step, v), so a
//      request's tokens depend only on its seed and step, never on the batch.
//
// Differences from the CPU sampler (documented in engine/sampling/README.md): top-p keeps
// every token tied with the boundary value (the CPU keeps ties in index order up to the
// cut; top-k keeps the ties on both); the top-p and min-p boundaries are decided in fp32
// (the CPU uses fp64), so a token within ~1e-6 relative of a boundary may fall the other
// way; NaN logits count as -inf in the sampled path and the log-sum-exp (the CPU's
// logprob becomes NaN).
//
// This header is C++17-clean (nvcc) and host C++20.

#include <cuda_runtime.h>

#include <cstdint>

namespace leank::kernels::model {

// One sampled row. Plain data, copied to the device as bytes.
struct SampleRowParams {
  uint64_t seed = 0;
  uint64_t step = 0;
  int32_t row = 0;           // logits row; tokens/logprobs are written at this index
  float temperature = 1.0f;  // 0: greedy
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int32_t entry_begin = 0;  // this row's entries: entries[entry_begin, entry_begin + num_entries)
  int32_t num_entries = 0;
};

// A token touched by bans or penalties, unique within a row (any order).
struct SampleEntry {
  int32_t token = 0;
  // bit 0: banned; bit 1: seen in prompt or output (repetition penalty applies);
  // bits 2..31: occurrences in the output (presence/frequency penalties apply when > 0).
  int32_t flags = 0;
};
constexpr int32_t kSampleBanned = 1;
constexpr int32_t kSampleSeen = 2;
constexpr int kSampleCountShift = 2;

// logits: [rows][vocab] fp32 (device), modified in place on sampled rows (bans, penalties).
// params: [num_sampled] (device). entries: [total entries] (device).
// saved: [total entries] fp32 scratch (device): the raw value of each entry's token.
// tokens: [rows] int32, logprobs: [rows] fp32 (device), written at params[i].row only.
// logprob = raw[token] - logsumexp(raw), raw = the logits after bans, before penalties.
void SampleLogits(float* logits, int vocab, const SampleRowParams* params, int num_sampled,
                  const SampleEntry* entries, float* saved, int32_t* tokens, float* logprobs,
                  cudaStream_t stream);

// The uniform (0, 1) that decides token `token` of draw (seed, step): the device's RNG on
// the host, for tests that want to reproduce a draw.
double SampleUniform(uint64_t seed, uint64_t step, uint32_t token);

}  // namespace leank::kernels::model
