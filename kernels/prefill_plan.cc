// PrefillAttention: host plan (per-sequence info, block tables, query tiles heaviest
// first) and the per-layer launch.

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "kernels/internal.h"

namespace leank::kernels {

namespace {

constexpr int kPrefillRows = 64;  // mma rows per CTA (prefill_kernel.cu)

}  // namespace

PrefillAttention::PrefillAttention(const DeviceMeta& meta) : meta_(meta) {}
PrefillAttention::~PrefillAttention() = default;

absl::Status PrefillAttention::Plan(std::span<const PrefillSeq> seqs, cudaStream_t stream) {
  const AttentionShape& sh = meta_.shape();
  const int H = sh.num_kv_heads, B = sh.block_size, G = sh.num_q_heads / H;
  const int qt = kPrefillRows / G;
  std::vector<detail::PrefillSeqInfo> info;
  std::vector<int32_t> full_ptr(1, 0), pruned_ptr(1, 0), full_idx, pruned_idx;
  std::vector<std::pair<int64_t, detail::PrefillTile>> tiles;
  int64_t q_offset = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const PrefillSeq& ps = seqs[s];
    const int64_t total = ps.start_pos + ps.num_new_tokens;
    const int64_t mb = MiddleTokens(sh, meta_.dense(), ps.start_pos);
    if (ps.start_pos < 0 || ps.num_new_tokens <= 0 || total > (int64_t(1) << 30))
      return absl::InvalidArgumentError(absl::StrCat("prefill seq ", s, ": start_pos ",
                                                     ps.start_pos, ", new ", ps.num_new_tokens));
    const int64_t need_full = (total - mb + B - 1) / B;
    if (static_cast<int64_t>(ps.full.size()) < need_full ||
        static_cast<int64_t>(ps.pruned.size()) < mb / B)
      return absl::InvalidArgumentError(
          absl::StrCat("prefill seq ", s, ": ", ps.full.size(), " full / ", ps.pruned.size(),
                       " pruned blocks, need ", need_full, " / ", mb / B));
    info.push_back({static_cast<int32_t>(ps.start_pos), static_cast<int32_t>(ps.num_new_tokens),
                    static_cast<int32_t>(mb), static_cast<int32_t>(q_offset)});
    full_idx.insert(full_idx.end(), ps.full.begin(), ps.full.begin() + need_full);
    pruned_idx.insert(pruned_idx.end(), ps.pruned.begin(), ps.pruned.begin() + mb / B);
    full_ptr.push_back(static_cast<int32_t>(full_idx.size()));
    pruned_ptr.push_back(static_cast<int32_t>(pruned_idx.size()));
    for (int h = 0; h < H; ++h) {
      for (int64_t q0 = 0; q0 < ps.num_new_tokens; q0 += qt) {
        const int64_t q1 = std::min<int64_t>(ps.num_new_tokens, q0 + qt);
        tiles.push_back({ps.start_pos + q1,  // keys to visit: the heaviest tiles go first
                         detail::PrefillTile{static_cast<int32_t>(s), h, static_cast<int32_t>(q0),
                                             static_cast<int32_t>(q1)}});
      }
    }
    q_offset += ps.num_new_tokens;
  }
  std::stable_sort(tiles.begin(), tiles.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<detail::PrefillTile> tile_list;
  for (const auto& t : tiles) tile_list.push_back(t.second);
  plan_.Clear();
  off_seq_ = plan_.Append(info.data(), info.size());
  off_full_ptr_ = plan_.Append(full_ptr.data(), full_ptr.size());
  off_full_idx_ = plan_.Append(full_idx.data(), full_idx.size());
  off_pruned_ptr_ = plan_.Append(pruned_ptr.data(), pruned_ptr.size());
  off_pruned_idx_ = plan_.Append(pruned_idx.data(), pruned_idx.size());
  off_tiles_ = plan_.Append(tile_list.data(), tile_list.size());
  plan_.Upload(stream);
  num_seqs_ = static_cast<int>(seqs.size());
  num_tiles_ = static_cast<int>(tile_list.size());
  total_tokens_ = q_offset;
  return absl::OkStatus();
}

void PrefillAttention::Run(int layer, const bf16* q, const bf16* full, const bf16* pruned,
                           float scale, bf16* out, cudaStream_t stream) const {
  const AttentionShape& sh = meta_.shape();
  const int H = sh.num_kv_heads, D = sh.head_dim;
  const unsigned char* base = plan_.device();
  detail::PrefillParams p{};
  p.q = q;
  p.full = full;
  p.pruned = pruned;
  p.out = out;
  p.seqs = reinterpret_cast<const detail::PrefillSeqInfo*>(base + off_seq_);
  p.full_ptr = reinterpret_cast<const int32_t*>(base + off_full_ptr_);
  p.full_idx = reinterpret_cast<const int32_t*>(base + off_full_idx_);
  p.pruned_ptr = reinterpret_cast<const int32_t*>(base + off_pruned_ptr_);
  p.pruned_idx = reinterpret_cast<const int32_t*>(base + off_pruned_idx_);
  p.tiles = reinterpret_cast<const detail::PrefillTile*>(base + off_tiles_);
  p.kept = meta_.d_kept() + layer * H;
  p.k_off = meta_.d_k_off() + layer * H;
  p.v_off = meta_.d_v_off() + layer * H;
  p.channels = meta_.d_channels() + size_t(layer) * H * D;
  p.pruned_block_elems = meta_.pruned_block_elems(layer);
  p.num_kv_heads = H;
  p.group = sh.num_q_heads / H;
  p.block_size = sh.block_size;
  p.log2_block = sh.block_size == 16 ? 4 : sh.block_size == 32 ? 5 : 6;
  p.sink = sh.sink;
  p.recent = sh.recent;
  p.dense = meta_.dense() ? 1 : 0;
  p.scale_log2 = scale * 1.4426950408889634f;
  detail::LaunchPrefill(p, D, num_tiles_, stream);
}

}  // namespace leank::kernels
