#pragma once
// Structures shared by the host-side plans (.cc) and the kernels (.cu). Not public.

#include <cuda.h>  // CUtensorMap
#include <cuda_bf16.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda_check.h"

namespace leank::kernels::detail {

constexpr int kRegionFull = 0;    // sink + recent tokens, full K/V blocks
constexpr int kRegionPruned = 1;  // middle tokens, pruned blocks
constexpr int kTileTokens = 64;   // tokens per pipeline stage of the decode kernel
constexpr int kMaxGroup = 16;     // query heads per kv head handled by one mma row tile
constexpr int kMaxSplit = 128;    // CTAs per region of one (sequence, kv head): the merging
                                  // CTA holds 2 * kMaxSplit slot weights in shared memory

// One CTA of the decode kernel: a token range of one region of one (sequence, kv head).
struct DecodeItem {
  int32_t seq;
  int32_t kv_head;
  int32_t region;     // kRegionFull or kRegionPruned
  int32_t tok_begin;  // region-relative token range [tok_begin, tok_end)
  int32_t tok_end;
  int32_t slot;  // partial-result slot (slots of a (seq, kv head) are contiguous)
};

struct DecodeParams {
  const __nv_bfloat16* q;       // [seqs][Hq][D]
  const __nv_bfloat16* full;    // layer's full blocks [nfull][2][H][B][D]
  const __nv_bfloat16* pruned;  // layer's pruned arena [npruned][block_elems]
  __nv_bfloat16* out;           // [seqs][Hq][D]
  const int32_t* seq_tokens;    // [seqs][2]: n, M(n)
  const int32_t* full_ptr;      // [seqs + 1] into full_idx
  const int32_t* full_idx;
  const int32_t* pruned_ptr;  // [seqs + 1] into pruned_idx
  const int32_t* pruned_idx;
  const DecodeItem* items;   // this layer's work list
  const int32_t* merge_ptr;  // [seqs * H + 1]: slot range of each (seq, kv head)
  const int32_t* kept;       // [H] (this layer)
  const int32_t* k_off;      // [H]
  const int32_t* v_off;      // [H]
  const uint8_t* channels;   // [H][D]
  int64_t pruned_block_elems;
  float* partial_o;    // [slots][G][D]
  float* partial_lse;  // [slots][G] (log2 domain)
  int32_t* counters;   // [seqs * H] finished CTAs per (seq, kv head); zero between launches
  int num_kv_heads;
  int group;  // query heads per kv head
  int block_size;
  int log2_block;
  float scale_log2;  // scale * log2(e)
};

// TMA descriptors of one layer for the decode kernel's whole-block loads (a
// __grid_constant__ kernel parameter). A box is one head's rows of one block, split in
// parts of 64 channels (128-byte rows, 128-byte swizzle), 32 (64-byte swizzle) and 16
// (32-byte swizzle), so ldmatrix reads them without bank conflicts and every TMA request
// moves whole rows. Dimensions, innermost first:
constexpr int kMaxTmaKvHeads = 8;  // more kv heads: the cp.async path
struct DecodeTmaMaps {
  CUtensorMap full;                 // {64, B, D / 64, 2H, blocks}: K or V of a head
  CUtensorMap k64[kMaxTmaKvHeads];  // pruned K, channels [0, 64a): {64, B, a, blocks}
  CUtensorMap k32[kMaxTmaKvHeads];  // pruned K, the next 32 channels: {32, B, blocks}
  CUtensorMap k16[kMaxTmaKvHeads];  // pruned K, the last 16 channels: {16, B, blocks}
  CUtensorMap v[kMaxTmaKvHeads];    // pruned V: {64, B, D / 64, blocks}
};

// CTAs of the decode kernel for `head_dim` resident per SM (occupancy API: registers and
// the pipeline's shared memory), for the plan's wave sizing.
int DecodeBlocksPerSm(int head_dim);
// maps == nullptr: every thread issues 16-byte cp.async copies; otherwise thread 0 issues
// one TMA copy per K and V block. pdl: launched as a programmatic dependent of the
// previous kernel in the stream (DecodeProgrammaticLaunch).
void LaunchDecode(const DecodeParams& p, const DecodeTmaMaps* maps, int head_dim, int num_items,
                  int num_seqs, bool pdl, cudaStream_t stream);

// Prefill: one CTA = up to kPrefillRows (query token, q head) rows of one (seq, kv head).
struct PrefillTile {
  int32_t seq;
  int32_t kv_head;
  int32_t q_begin;  // chunk-relative first query of the tile
  int32_t q_end;
};

struct PrefillSeqInfo {
  int32_t start_pos;      // tokens cached before the chunk
  int32_t num_new;        // queries
  int32_t middle_before;  // M(start_pos): storage boundary
  int32_t q_offset;       // row of the first query in q/out
};

struct PrefillParams {
  const __nv_bfloat16* q;  // [total_new][Hq][D]
  const __nv_bfloat16* full;
  const __nv_bfloat16* pruned;
  __nv_bfloat16* out;
  const PrefillSeqInfo* seqs;
  const int32_t* full_ptr;
  const int32_t* full_idx;
  const int32_t* pruned_ptr;
  const int32_t* pruned_idx;
  const PrefillTile* tiles;
  const int32_t* kept;
  const int32_t* k_off;
  const int32_t* v_off;
  const uint8_t* channels;
  int64_t pruned_block_elems;
  int num_kv_heads;
  int group;
  int block_size;
  int log2_block;
  int sink;
  int recent;
  int dense;
  float scale_log2;
};

// Same layout as kernels::CompactJob.
struct CompactJobRaw {
  int32_t src_full_block;
  int32_t dst_pruned_block;
};

constexpr int kMaxLayers = 128;  // kernel parameters hold the per-layer tables (2 KB)

struct CompactParams {
  const __nv_bfloat16* full;
  __nv_bfloat16* pruned;
  const CompactJobRaw* jobs;
  const int32_t* kept;              // [layers][H]
  const int32_t* k_off;             // [layers][H]
  const int32_t* v_off;             // [layers][H]
  const uint8_t* channels;          // [layers][H][D]
  int64_t layer_base[kMaxLayers];   // per launched layer: pruned arena start (elements)
  int64_t block_elems[kMaxLayers];  // per launched layer
  int64_t num_full_blocks;
  int layer_begin;
  int H, B, D;
};

void LaunchCompactKernel(const CompactParams& p, int num_jobs, int num_layers, cudaStream_t stream);

void LaunchPrefill(const PrefillParams& p, int head_dim, int num_tiles, cudaStream_t stream);

}  // namespace leank::kernels::detail
