#pragma once
// CUDA attention over the LeanK paged KV cache (layout: cache/README.md).
//
//   DeviceMeta      per-layer channel metadata (kept counts, kept channel indices,
//                   pruned-tile offsets), uploaded once per model.
//   DecodeAttention plan/run split decode attention: Plan() once per step (host:
//                   block tables and a byte-balanced split-KV work list per layer,
//                   one upload), Run() once per layer (one launch: the last CTA of
//                   each (sequence, kv head) merges the splits by log-sum-exp).
//   LaunchCompact   full recent blocks -> pruned blocks, many sequences and layers
//                   in one launch.
//   PrefillAttention causal chunk of queries of one or more sequences against the
//                   paged cache, with the per-query middle boundary.
//
// Decode semantics (cache/README.md): the decode query at position n - 1 treats key j
// as middle when S <= j < S + M(n): q.k over the head's kept channels only, and keys
// skipped entirely for heads with 0 kept channels. The decode kernel expects the
// compaction of this step to be done first (LaunchCompact), so that the middle region
// is exactly the pruned blocks: SeqView takes the full-block table AFTER compaction
// (DecodeFullBlocksAfterCompaction builds it from an AppendPlan's table).

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/plan_buffer.h"

namespace leank::kernels {

using bf16 = __nv_bfloat16;

struct AttentionShape {
  int num_layers = 0;
  int num_kv_heads = 0;
  int num_q_heads = 0;  // a multiple of num_kv_heads; group size <= 16
  int head_dim = 0;     // 64 or 128
  int block_size = 16;  // 16, 32 or 64
  int sink = 128;       // multiple of block_size
  int recent = 768;     // multiple of block_size
};

// M(n) of cache/README.md (0 in dense mode).
int64_t MiddleTokens(const AttentionShape& shape, bool dense, int64_t num_tokens);

// Channel metadata of every layer, on the device.
class DeviceMeta {
 public:
  // kept_channels[layer][kv_head]: ascending kept channel indices, count a multiple of
  // 16 (0 allowed). Empty outer vector: dense mode (no pruned region at all).
  static absl::StatusOr<DeviceMeta> Create(
      const AttentionShape& shape, const std::vector<std::vector<std::vector<int>>>& kept_channels);
  DeviceMeta(DeviceMeta&& other) noexcept;
  DeviceMeta& operator=(DeviceMeta&& other) noexcept;
  DeviceMeta(const DeviceMeta&) = delete;
  ~DeviceMeta();

  const AttentionShape& shape() const { return shape_; }
  bool dense() const { return dense_; }
  int kept(int layer, int head) const;
  std::span<const int32_t> kept_table() const { return kept_; }  // [layers][H]
  // Offsets (elements) inside a pruned block of `layer`, as in cache/README.md.
  int32_t pruned_k_offset(int layer, int head) const;  // -1 when kept == 0
  int32_t pruned_v_offset(int layer, int head) const;  // -1 when kept == 0
  int64_t pruned_block_elems(int layer) const;
  int64_t full_block_elems() const;  // one layer: 2 * H * B * D
  // Start of `layer`'s arena in the pruned pool (elements).
  int64_t pruned_layer_base(int layer, int64_t num_pruned_blocks) const;

  // Device arrays: [layers][H] ints, [layers][H][head_dim] uint8 channels.
  const int32_t* d_kept() const { return d_kept_; }
  const int32_t* d_k_off() const { return d_k_off_; }
  const int32_t* d_v_off() const { return d_v_off_; }
  const uint8_t* d_channels() const { return d_channels_; }

 private:
  DeviceMeta() = default;
  void Release();
  AttentionShape shape_;
  bool dense_ = true;
  std::vector<int32_t> kept_, k_off_, v_off_;  // [layer * H + head]
  std::vector<int64_t> block_elems_, layer_prefix_;
  int32_t* d_kept_ = nullptr;
  int32_t* d_k_off_ = nullptr;
  int32_t* d_v_off_ = nullptr;
  uint8_t* d_channels_ = nullptr;
};

// One sequence at a decode step, after this step's compaction.
struct SeqView {
  int64_t num_tokens = 0;           // n, including the token being decoded
  std::span<const int32_t> full;    // sink blocks then recent blocks: ceil((n - M(n)) / B)
  std::span<const int32_t> pruned;  // middle blocks in token order: M(n) / B
};

// full_blocks of an AppendPlan (before compaction) minus the `num_compactions`
// blocks that the step moves to the pruned pool.
std::vector<int32_t> DecodeFullBlocksAfterCompaction(const AttentionShape& shape,
                                                     std::span<const int32_t> full_blocks,
                                                     int num_compactions);

class DecodePlanner;  // decode_work.h
namespace detail {
class DecodeTmaCache;  // decode_tma.h
}

// How the decode kernel moves K/V into shared memory (process-wide; default kTma, or
// LEANK_DECODE_LOADS=tma|cpasync at start-up). kTma: one thread issues a TMA copy per K and
// per V block of a head (sm_90+, at most 8 kv heads; otherwise the cp.async path is used).
// kCpAsync: every thread issues 16-byte cp.async copies. Both give the same result.
enum class DecodeLoads { kTma, kCpAsync };
void SetDecodeLoads(DecodeLoads loads);
DecodeLoads GetDecodeLoads();

// Programmatic dependent launch of the decode kernel (process-wide, sm_90+): its CTAs may
// start while the previous kernel of the stream finishes, reading their work item and
// block-table pointers, and wait for that kernel before touching q, the cache or the
// split partials; they let the next kernel launch early. On by default; LEANK_CUDA_PDL=0
// turns it off (the same switch as the model kernels', kernels/model/ops.h).
void SetDecodeProgrammaticLaunch(bool enabled);
bool DecodeProgrammaticLaunch();

// The CTA count a decode plan chose, reused by the next plan while the batch keeps its
// segments and its heaviest layer's bytes stay within 1/64 (decode grows a token a step).
struct DecodeCtaChoice {
  size_t num_segs = 0;  // (seq, kv head, region) segments of the heaviest layer
  int64_t bytes = 0;    // the heaviest layer's K/V bytes
  int ctas = 0;         // CTAs per layer aimed at
  int max_waves = 0;    // no layer's items may exceed max_waves * resident (0: no limit)
  bool operator==(const DecodeCtaChoice&) const = default;
};

// Split-KV decode attention. Not thread-safe; one per stream.
class DecodeAttention {
 public:
  explicit DecodeAttention(const DeviceMeta& meta);
  ~DecodeAttention();
  DecodeAttention(const DecodeAttention&) = delete;
  DecodeAttention& operator=(const DecodeAttention&) = delete;

  // Host: validates the tables, builds every layer's work list (byte-balanced splits
  // so all SMs are busy even at batch 1), uploads it with one asynchronous copy on
  // `stream` (no host wait in steady state: plan_buffer.h). Kernels of the previous
  // Plan that are still queued must be on the same stream.
  // `target_ctas` > 0 forces the number of CTAs per layer the plan aims at (tests, benchmarks).
  absl::Status Plan(std::span<const SeqView> seqs, cudaStream_t stream, int target_ctas = 0);

  // Host: builds the work lists of the planned batch one token longer each, for the next
  // Plan to take if its batch is exactly that. Call it once this step's kernels are queued
  // and the host would wait for the GPU anyway. Never changes a plan's result.
  void PrepareNextStep();
  int64_t plans() const;
  int64_t prepared_plans() const;  // plans whose work lists PrepareNextStep built

  // Attention of layer `layer` for the planned batch.
  // q:      [num_seqs][num_q_heads][head_dim] bf16 (after RoPE)
  // full:   this layer's full blocks [num_full_blocks][2][H][B][head_dim] bf16
  // pruned: this layer's pruned arena [num_pruned_blocks][pruned_block_elems(layer)] bf16
  // out:    [num_seqs][num_q_heads][head_dim] bf16
  // scale multiplies q.k (usually 1/sqrt(head_dim)).
  void Run(int layer, const bf16* q, const bf16* full, const bf16* pruned, float scale, bf16* out,
           cudaStream_t stream) const;

  int num_items(int layer) const;
  // Run() calls so far that loaded K/V with TMA (DecodeLoads::kTma and supported).
  int64_t tma_launches() const { return tma_launches_; }
  // Bytes of K/V the planned batch must read for `layer` (the ideal traffic).
  int64_t kv_bytes(int layer) const;

 private:
  const DeviceMeta& meta_;
  int num_sms_ = 0;
  int num_seqs_ = 0;
  std::unique_ptr<DecodePlanner> planner_;       // the work lists (decode_work.h)
  std::unique_ptr<detail::DecodeTmaCache> tma_;  // tensor maps per (layer, storage)
  mutable int64_t tma_launches_ = 0;
  // Host tables of Plan, kept between steps (capacity reused).
  std::vector<int32_t> seq_tokens_, full_ptr_, pruned_ptr_, full_idx_, pruned_idx_;
  int max_items_ = 0;
  // Device buffers (grown on demand).
  PlanBuffer plan_;
  float* d_partial_ = nullptr;  // [max_items][G][head_dim + 1] (O then lse)
  size_t partial_capacity_ = 0;
  int32_t* d_counters_ = nullptr;  // [seqs * H], zero between launches
  size_t counters_capacity_ = 0;
  // Offsets into plan_ (bytes).
  size_t off_tokens_ = 0, off_full_ptr_ = 0, off_full_idx_ = 0, off_pruned_ptr_ = 0,
         off_pruned_idx_ = 0, off_items_ = 0, off_merge_ptr_ = 0;
};

// A compaction: full block -> pruned block (all layers in [layer_begin, layer_end)).
struct CompactJob {
  int32_t src_full_block = 0;
  int32_t dst_pruned_block = 0;
};

// full:   [layers][num_full_blocks][2][H][B][head_dim] bf16 (whole pool)
// pruned: per-layer arenas (whole pool), see DeviceMeta::pruned_layer_base
// jobs:   device array [num_jobs]
void LaunchCompact(const DeviceMeta& meta, int layer_begin, int layer_end, const bf16* full,
                   int64_t num_full_blocks, bf16* pruned, int64_t num_pruned_blocks,
                   const CompactJob* jobs, int num_jobs, cudaStream_t stream);

// One sequence's chunk of new tokens in a prefill step (AppendPlan semantics:
// storage positions use middle_before; the chunk's K/V are already written).
struct PrefillSeq {
  int64_t start_pos = 0;            // tokens cached before this chunk
  int64_t num_new_tokens = 0;       // queries of this chunk
  std::span<const int32_t> full;    // AppendPlan::full_blocks (before compaction)
  std::span<const int32_t> pruned;  // the first middle_before / B entries are read
};

// Causal chunked-prefill attention, GQA, tensor cores (mma.sync bf16).
class PrefillAttention {
 public:
  explicit PrefillAttention(const DeviceMeta& meta);
  ~PrefillAttention();
  PrefillAttention(const PrefillAttention&) = delete;
  PrefillAttention& operator=(const PrefillAttention&) = delete;

  absl::Status Plan(std::span<const PrefillSeq> seqs, cudaStream_t stream);
  // q:   [total_new_tokens][num_q_heads][head_dim] bf16, sequences one after another
  // out: same shape
  void Run(int layer, const bf16* q, const bf16* full, const bf16* pruned, float scale, bf16* out,
           cudaStream_t stream) const;
  int64_t total_tokens() const { return total_tokens_; }

 private:
  const DeviceMeta& meta_;
  int num_seqs_ = 0;
  int num_tiles_ = 0;
  int64_t total_tokens_ = 0;
  PlanBuffer plan_;
  size_t off_seq_ = 0, off_full_ptr_ = 0, off_full_idx_ = 0, off_pruned_ptr_ = 0,
         off_pruned_idx_ = 0, off_tiles_ = 0;
};

}  // namespace leank::kernels
