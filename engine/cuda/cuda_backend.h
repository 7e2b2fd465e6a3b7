#pragma once
// The CUDA backend: the whole model on one GPU, bf16 weights (converted once at load
// from bf16/f16/f32), fp32 residual stream, cuBLASLt GEMMs (fused QKV and gate/up), the
// LeanK paged KV cache in device memory (bf16, cache/README.md), compaction each step,
// decode through kernels::DecodeAttention, prefill chunks through the generic paged
// attention of kernels/model (kernels::PrefillAttention once it is built). Computes the
// same function as the CPU reference (engine/cpu) at bf16 precision.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cache/kv_cache.h"
#include "engine/core/backend.h"
#include "engine/model/weights.h"

namespace leank {

struct CudaBackendOptions {
  int device = 0;
  // Rows (tokens) of the largest step: activation buffers are sized for it up front
  // (they grow if a larger step comes).
  int max_batched_tokens = 512;
  // Largest number of sequences asking for logits in one step (logit buffers).
  int max_num_seqs = 64;
  // Tests: run every attention through the generic kernel even where the fast
  // kernels (head_dim 64/128) apply.
  bool force_generic_attention = false;
  // Decode-only steps (every sequence one token, all wanting logits, fast attention):
  // everything between two attention launches is replayed from CUDA graphs captured per
  // batch-size bucket (CudaGraphBatchSize; the attention kernels' work lists change every
  // step, so they are launched directly between the graphs).
  bool cuda_graphs = true;
  // GEMMs of 1-2 rows through the small-batch GEMV kernel instead of cuBLASLt.
  bool small_batch_gemv = true;
  // With small_batch_gemv, for 1-2 rows: RMSNorm fused into the QKV and gate/up GEMVs
  // (kernels/model/gemv.cu).
  bool fused_norm = true;
};

// Batch size of the CUDA graphs a decode step of `rows` rows replays: the smallest of
// 1, 2, 4, 8, 16, 24, 32, 48, ..., 256 (every 16 from 32) that is >= rows; the extra rows
// are padding. 0 when rows > 256 (such steps run without graphs) or rows < 1.
int CudaGraphBatchSize(int rows);

// Device memory the backend needs besides the KV pool (weights as bf16, activations
// for `max_batched_tokens` rows and `max_num_seqs` logit rows, each rounded up to the
// graph batch size of the largest decode step, cuBLASLt workspace).
int64_t CudaWeightBytes(const ModelConfig& config);
int64_t CudaActivationBytes(const ModelConfig& config, int max_batched_tokens, int max_num_seqs);
// Bytes of the KV pools for `sizes` (bf16 layout).
int64_t CudaKvBytes(const cache::CacheLayout& layout, cache::PoolSizes sizes);
// Free device memory now (cudaMemGetInfo), Unavailable with the CUDA error when there
// is no usable GPU.
absl::StatusOr<int64_t> CudaFreeMemory(int device = 0);

// Preflight then allocation: if weights + activations + KV pool exceed the free device
// memory, ResourceExhausted with every number, before anything is allocated.
// `layout` must outlive the backend and use elem_bytes = 2.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const ModelConfig& config,
                                                           const ModelWeights& weights,
                                                           const cache::CacheLayout& layout,
                                                           cache::PoolSizes sizes,
                                                           const CudaBackendOptions& options);

// Weights already on the device, shared by several backends (benchmarks compare cache
// layouts without uploading 16 GB again). Opaque outside engine/cuda.
namespace cuda {
struct PackedWeights;
}
absl::StatusOr<std::shared_ptr<const cuda::PackedWeights>> UploadCudaWeights(
    const ModelConfig& config, const ModelWeights& weights, int device = 0);
// As above, over uploaded weights (the preflight counts no weight bytes).
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(
    const ModelConfig& config, std::shared_ptr<const cuda::PackedWeights> weights,
    const cache::CacheLayout& layout, cache::PoolSizes sizes, const CudaBackendOptions& options);

// Benchmarks: fills the whole KV pool of a CUDA backend with random bf16 values in
// [-1, 1) so decode can be timed over sequences that were allocated (KvCacheManager)
// but never prefilled: decode reads the same bytes whatever they hold.
absl::Status FillCudaCacheRandom(Backend* backend, uint64_t seed);
// Tests: the decode-step CUDA graphs of a CUDA backend so far, and its decode plans.
// InvalidArgument for another backend.
struct CudaGraphStats {
  int64_t captures = 0;      // graph sets captured (one per bucket, again after a reallocation)
  int64_t replays = 0;       // steps replayed from graphs
  int64_t padded_rows = 0;   // padding rows those steps ran (bucket - rows, summed)
  std::vector<int> buckets;  // batch sizes with graphs now, ascending
  // Decode attention plans, and those whose work lists were built ahead, while the GPU
  // ran the step before (kernels/decode_work.h: the batch was that step's, a token on).
  int64_t decode_plans = 0;
  int64_t decode_plans_prepared = 0;
};
absl::StatusOr<CudaGraphStats> GetCudaGraphStats(const Backend* backend);
// Read bandwidth of the device in bytes/s (a read-only pass over `bytes` bytes, median of
// several runs): the denominator of the weight-bandwidth bound of decode.
absl::StatusOr<double> MeasureCudaReadBandwidth(int64_t bytes, int device = 0);

}  // namespace leank
