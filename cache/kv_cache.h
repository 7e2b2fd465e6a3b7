#pragma once
// The LeanK paged KV cache: layout (shared by the CPU reference and the CUDA
// kernels), a block pool with a byte budget, and per-sequence block tables.
// cache/README.md documents the layout byte by byte.
//
// A sequence's tokens are in three regions: sink [0, S), middle [S, S + M(n)),
// recent [S + M(n), n), where M(n) = B * max(0, floor((n - S - W) / B)).
// Sink and recent tokens live in full blocks (K and V of every kv head); middle
// tokens live in pruned blocks (K of the kept channels only, V only of heads
// with a non-zero kept count). In dense mode (no mask) M(n) = 0: everything is full.

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cache/mask.h"

namespace leank::cache {

struct LayoutOptions {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int block_size = 16;  // B: tokens per block, a multiple of 16
  int sink = 128;       // S: a multiple of B, >= 0
  int recent = 768;     // W: a multiple of B, >= B (a query always sees itself with full K)
  int elem_bytes = 2;   // 2 for bf16 (GPU), 4 for f32 (CPU reference)
};

// Element offsets and sizes of full and pruned blocks. Immutable.
class CacheLayout {
 public:
  // mask == nullopt: dense mode. InvalidArgument for bad sizes or a mask of another shape.
  static absl::StatusOr<CacheLayout> Create(const LayoutOptions& options, std::optional<Mask> mask);

  const LayoutOptions& options() const { return options_; }
  bool dense() const { return !mask_.has_value(); }
  const std::optional<Mask>& mask() const { return mask_; }
  int block_size() const { return options_.block_size; }

  // M(n): tokens in the pruned middle region when the sequence holds n tokens.
  int64_t MiddleTokens(int64_t num_tokens) const;

  // Full block, one layer: [2 (K, V)][num_kv_heads][block_size][head_dim] elements.
  int64_t full_block_elems() const;
  // Pruned block of `layer`: K tiles [block_size][kept(h)] for heads with kept > 0 in
  // head order, then V tiles [block_size][head_dim] for those same heads.
  int64_t pruned_block_elems(int layer) const;
  int64_t pruned_k_offset(int layer, int head) const;  // elements, -1 if kept == 0
  int64_t pruned_v_offset(int layer, int head) const;  // elements, -1 if kept == 0
  int kept(int layer, int head) const;                 // head_dim in dense mode
  // Start (in elements) of layer `layer`'s pruned arena when the pool has
  // `num_pruned_blocks` blocks: layer arenas are laid out one after another.
  int64_t pruned_layer_base(int layer, int64_t num_pruned_blocks) const;

  // Bytes one token occupies, summed over layers.
  int64_t full_bytes_per_token() const;
  int64_t pruned_bytes_per_token() const;
  int64_t full_block_bytes() const;    // all layers
  int64_t pruned_block_bytes() const;  // all layers

 private:
  LayoutOptions options_;
  std::optional<Mask> mask_;
  std::vector<int64_t> pruned_block_elems_;   // [layer]
  std::vector<int64_t> k_offset_, v_offset_;  // [layer * heads + head]
  // [layer]: sum of pruned_block_elems of the earlier layers.
  std::vector<int64_t> pruned_layer_prefix_;
};

struct PoolSizes {
  int64_t num_full_blocks = 0;
  int64_t num_pruned_blocks = 0;
};

// Splits `budget_bytes` between full and pruned blocks so that sequences of
// `target_context` tokens use both kinds in proportion (dense: all full), after
// reserving the full blocks a step of `step_tokens` prefill tokens needs while it is
// written before compaction. The exact formula is in cache/README.md ("Budget").
PoolSizes SplitBudget(const CacheLayout& layout, int64_t budget_bytes, int64_t target_context,
                      int64_t step_tokens = 0);

using SeqId = int64_t;

// A sequence's block tables.
struct SeqBlocks {
  int64_t num_tokens = 0;
  int64_t middle_tokens = 0;           // M(num_tokens)
  std::vector<int32_t> full_blocks;    // sink blocks, then recent blocks
  std::vector<int32_t> pruned_blocks;  // middle blocks in token order
};

// What a backend needs for one step of one sequence that appends tokens.
// During the step, token position p lives at:
//   p < S:                                 full_blocks[p / B]            (slot p % B)
//   S <= p < S + middle_before:            pruned_blocks[(p - S) / B]
//   p >= S + middle_before:                full_blocks[S / B + (p - S - middle_before) / B]
// using the tables below (full_blocks as before compaction). After the step, the
// first (middle_after - middle_before) / B recent blocks are compacted into
// pruned_blocks[middle_before / B + i]: a backend copies them at the end of the
// step, per layer (kept K channels and live-head V) - their full blocks stay
// valid until EndStep().
struct AppendPlan {
  SeqId seq = 0;
  int64_t start_pos = 0;  // tokens already cached before this step
  int64_t num_new_tokens = 0;
  int64_t middle_before = 0;           // M(start_pos)
  int64_t middle_after = 0;            // M(start_pos + num_new_tokens)
  int block_size = 16;                 // B, copied from the layout
  std::vector<int32_t> full_blocks;    // before compaction
  std::vector<int32_t> pruned_blocks;  // after compaction (includes the destinations)
  int num_compactions() const;
};

// Blocks an Append would take from the free lists.
struct BlockDemand {
  int64_t full = 0;
  int64_t pruned = 0;
};

class SequenceLease;

// Pure accounting object (no device memory): free lists of full and pruned
// blocks, per-sequence tables. Frees are deferred to EndStep() so a block read
// in the current step is never handed out again in the same step.
// Cost: CanAppend/Demand are O(1); Append is O(table size) for the plan's copies.
// Not thread-safe: the engine thread owns it.
class KvCacheManager {
 public:
  KvCacheManager(const CacheLayout& layout, PoolSizes sizes);

  // Blocks `seq` (new or existing) needs from the free lists to grow by `num_new_tokens`.
  BlockDemand Demand(SeqId seq, int64_t num_new_tokens) const;
  // Whether Append(seq, num_new_tokens) would succeed now.
  bool CanAppend(SeqId seq, int64_t num_new_tokens) const;
  // Reserves the blocks (creating the sequence if new). ResourceExhausted when
  // blocks run out, InvalidArgument for a negative count; nothing changes then.
  absl::StatusOr<AppendPlan> Append(SeqId seq, int64_t num_new_tokens);
  // Releases every block of `seq` (returned to the free lists at EndStep). Unknown
  // sequences are ignored. Preemption = Free now, Append from token 0 later (recompute).
  void Free(SeqId seq);
  // Releases every block of `seq` at once. Meant for a sequence that takes no part in
  // the step being planned (the scheduler preempting it before the backend runs): its
  // blocks were last read in a finished step, so they may be handed out now. If `seq`
  // was appended during the current step, this falls back to Free (deferred), so a
  // block of an issued AppendPlan is never reused within its step.
  void Release(SeqId seq);
  // Ends a step: blocks freed or compacted during it become allocatable.
  void EndStep();

  // An RAII handle: the sequence's blocks are freed when the lease is destroyed.
  SequenceLease Lease(SeqId seq);

  bool Contains(SeqId seq) const;
  const SeqBlocks& blocks(SeqId seq) const;  // CHECKs that seq exists
  int64_t num_sequences() const { return static_cast<int64_t>(seqs_.size()); }

  const CacheLayout& layout() const { return layout_; }
  const PoolSizes& sizes() const { return sizes_; }
  int64_t free_full_blocks() const;
  int64_t free_pruned_blocks() const;
  // Blocks freed this step, allocatable after EndStep().
  int64_t pending_full_blocks() const { return static_cast<int64_t>(pending_full_.size()); }
  int64_t pending_pruned_blocks() const { return static_cast<int64_t>(pending_pruned_.size()); }
  // Fraction of pool bytes not free (in tables or pending), 0..1.
  double Usage() const;
  // Largest number of tokens one new sequence could hold now, growing to it from the
  // free lists only: LongestSequence(free full, free pruned).
  int64_t TokenCapacity() const;
  // Largest n such that one sequence alone in `full_blocks` + `pruned_blocks` reaches
  // every length up to n, a token at a time: past S + W tokens a step needs one full
  // block beyond the sink and recent ones (it is written before the oldest recent block
  // is compacted), so without that spare block a sequence stops at S + W.
  int64_t LongestSequence(int64_t full_blocks, int64_t pruned_blocks) const;

  // Checks the accounting (O(pool size), for tests): every block is in exactly one of
  // free list, pending list, a sequence table; table sizes match token counts.
  absl::Status Validate() const;

 private:
  CacheLayout layout_;
  PoolSizes sizes_;
  std::vector<int32_t> free_full_, free_pruned_;
  std::vector<int32_t> pending_full_, pending_pruned_;
  std::unordered_map<SeqId, SeqBlocks> seqs_;
  std::unordered_set<SeqId> appended_this_step_;  // guards Release
};

// Owns a sequence's cache blocks: Free() on destruction. Move-only. The manager must
// outlive the lease. Preempt() frees the blocks but keeps the lease, so the sequence
// can be appended again from token 0 (recompute).
class SequenceLease {
 public:
  SequenceLease() = default;
  SequenceLease(KvCacheManager* manager, SeqId seq) : manager_(manager), seq_(seq) {}
  SequenceLease(SequenceLease&& other) noexcept { *this = std::move(other); }
  SequenceLease& operator=(SequenceLease&& other) noexcept;
  SequenceLease(const SequenceLease&) = delete;
  SequenceLease& operator=(const SequenceLease&) = delete;
  ~SequenceLease() { Reset(); }

  absl::StatusOr<AppendPlan> Append(int64_t num_new_tokens);
  void Preempt();   // frees the blocks; the lease stays valid
  void Reset();     // frees the blocks and drops the manager
  SeqId Release();  // gives up ownership without freeing
  bool valid() const { return manager_ != nullptr; }
  SeqId seq() const { return seq_; }
  int64_t num_tokens() const;  // 0 when nothing is cached

 private:
  KvCacheManager* manager_ = nullptr;
  SeqId seq_ = 0;
};

}  // namespace leank::cache
