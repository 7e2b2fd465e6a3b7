#pragma once
// Draws the next token of a step's sampled rows on the GPU (kernels/model/sampling.h):
// the per-row parameters and ban/penalty token lists go up through pinned staging, one
// kernel samples every row, tokens and logprobs come back to pinned host memory, all
// enqueued on the caller's stream without synchronising. Read Results() after the caller
// has synchronised the stream.
//
// Buffers grow on demand; before growing (or rewriting the staging a previous step's
// copy may still read) it waits for that work, so a step never races the previous one.

#include <cuda_runtime.h>

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "engine/core/backend.h"
#include "engine/cuda/device_buffer.h"
#include "kernels/model/sampling.h"

namespace leank::cuda {

class GpuSampler {
 public:
  GpuSampler() = default;
  GpuSampler(const GpuSampler&) = delete;
  GpuSampler& operator=(const GpuSampler&) = delete;
  ~GpuSampler();

  // logits: [samples.size()][vocab] fp32 on the device; samples[i] == nullptr: row i is
  // not sampled. The sampled rows of `logits` are modified in place (bans -> -inf,
  // penalties), so copy them out first if the raw values are wanted. The spans inside
  // the DeviceSamples are read before this returns.
  absl::Status Enqueue(float* logits, int64_t vocab, std::span<const DeviceSample* const> samples,
                       cudaStream_t stream);
  // After the stream has been synchronised: one entry per row of the last Enqueue
  // (token -1 for the rows that were not sampled).
  void Results(std::vector<SampledToken>* out) const;

 private:
  // Appends the entries of one row (unique tokens with ban/penalty flags) to entries_.
  void BuildEntries(const DeviceSample& s, int64_t vocab);

  // Device: [params][entries] (one upload), [saved] scratch, [tokens][logprobs] results.
  DeviceBuffer upload_, saved_, results_;
  // Pinned host: the upload's staging and the results' landing place.
  PinnedBuffer staging_, results_host_;
  size_t staging_cap_ = 0, results_host_cap_ = 0;
  cudaEvent_t uploaded_ = nullptr;  // the last upload has finished reading staging_
  int64_t rows_ = 0;                // rows of the last Enqueue
  std::vector<char> sampled_;       // per row of the last Enqueue
  // Host scratch reused between steps; slot_: token -> index in entries_ (-1 = none).
  std::vector<kernels::model::SampleRowParams> params_;
  std::vector<kernels::model::SampleEntry> entries_;
  std::vector<int32_t> slot_;
};

}  // namespace leank::cuda
