// DecodeAttention: host-side plan (block tables + byte-balanced split-KV work lists of
// every layer, one upload per step) and the per-layer launch.

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <queue>

#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "kernels/internal.h"

namespace leank::kernels {

using detail::DecodeItem;
using detail::kTileTokens;

namespace {

int CeilDiv(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

// A (sequence, kv head, region) stretch of tokens, all at one cost per token.
struct Seg {
  int seq, head, region, tokens;
  int64_t bytes_per_token;
};

// Token ranges of `g` for a target of `target` bytes per CTA: about bytes / target equal
// pieces of whole tiles, at most kMaxSplit.
template <typename F>
void ForEachPiece(const Seg& g, double target, F&& f) {
  const int max_split = std::min(detail::kMaxSplit, CeilDiv(g.tokens, kTileTokens));
  const int split = std::clamp(
      static_cast<int>(std::lround(double(g.tokens * g.bytes_per_token) / target)), 1, max_split);
  const int chunk = CeilDiv(CeilDiv(g.tokens, split), kTileTokens) * kTileTokens;
  for (int b = 0; b < g.tokens; b += chunk) f(b, std::min(g.tokens, b + chunk));
}

int CountPieces(const std::vector<Seg>& segs, double target) {
  int n = 0;
  for (const Seg& g : segs) ForEachPiece(g, target, [&](int, int) { ++n; });
  return n;
}

// Fixed cost of one work item (prologue: item, block table and q loads before the first
// tile lands; epilogue: warp merge, partial write, slot merge), in bytes that one resident
// CTA would stream meanwhile. Measured on H100: dense 8 x 32K took 387.7 / 405.4 / 429.1 us
// with 1 / 3.9 / 7.8 items per resident CTA, about 6 us (~70 KB at 3.1 TB/s / 264) each.
constexpr int64_t kItemOverheadBytes = int64_t{70} << 10;

// Predicted makespan of one layer's items on `slots` resident CTAs, as the hardware runs
// them: largest first, each to the slot that frees first, each paying kItemOverheadBytes.
int64_t Makespan(const std::vector<Seg>& segs, double target, int slots) {
  std::vector<int64_t> cost;
  for (const Seg& g : segs) {
    ForEachPiece(g, target, [&](int b, int e) {
      cost.push_back((e - b) * g.bytes_per_token + kItemOverheadBytes);
    });
  }
  std::sort(cost.begin(), cost.end(), std::greater<>());
  if (cost.empty()) return 0;
  if (static_cast<int>(cost.size()) <= slots) return cost.front();  // one item per slot
  std::priority_queue<int64_t, std::vector<int64_t>, std::greater<>> free_at(
      std::greater<>(), std::vector<int64_t>(slots, 0));
  int64_t end = 0;
  for (int64_t c : cost) {
    const int64_t t = free_at.top() + c;
    free_at.pop();
    free_at.push(t);
    end = std::max(end, t);
  }
  return end;
}

}  // namespace

DecodeAttention::DecodeAttention(const DeviceMeta& meta) : meta_(meta) {
  int dev = 0;
  LEANK_CUDA_CHECK(cudaGetDevice(&dev));
  LEANK_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, dev));
}

DecodeAttention::~DecodeAttention() {
  cudaFree(d_partial_);
  cudaFree(d_counters_);
}

absl::Status DecodeAttention::Plan(std::span<const SeqView> seqs, cudaStream_t stream,
                                   int target_ctas) {
  const AttentionShape& sh = meta_.shape();
  const int S = static_cast<int>(seqs.size()), H = sh.num_kv_heads, D = sh.head_dim,
            B = sh.block_size, L = sh.num_layers, G = sh.num_q_heads / sh.num_kv_heads;
  std::vector<int32_t> seq_tokens(2 * S), full_ptr(S + 1, 0), pruned_ptr(S + 1, 0), full_idx,
      pruned_idx;
  for (int s = 0; s < S; ++s) {
    const SeqView& v = seqs[s];
    const int64_t n = v.num_tokens, m = MiddleTokens(sh, meta_.dense(), n);
    if (n <= 0 || n > (int64_t(1) << 30))
      return absl::InvalidArgumentError(absl::StrCat("decode seq ", s, ": num_tokens ", n));
    if (static_cast<int64_t>(v.full.size()) != CeilDiv(n - m, B) ||
        static_cast<int64_t>(v.pruned.size()) != m / B)
      return absl::InvalidArgumentError(absl::StrCat(
          "decode seq ", s, ": ", v.full.size(), " full / ", v.pruned.size(),
          " pruned blocks, expected ", CeilDiv(n - m, B), " / ", m / B, " for ", n, " tokens"));
    seq_tokens[2 * s] = static_cast<int32_t>(n);
    seq_tokens[2 * s + 1] = static_cast<int32_t>(m);
    full_idx.insert(full_idx.end(), v.full.begin(), v.full.end());
    pruned_idx.insert(pruned_idx.end(), v.pruned.begin(), v.pruned.end());
    full_ptr[s + 1] = static_cast<int32_t>(full_idx.size());
    pruned_ptr[s + 1] = static_cast<int32_t>(pruned_idx.size());
  }

  // Work lists: every (seq, kv head, region) segment cut into token ranges of about
  // layer_bytes / ctas bytes, whole 64-token tiles, largest first (the hardware then hands
  // the next item to whichever CTA slot frees first). The CTA count is the candidate (0.5 to
  // 8 resident waves) with the smallest predicted makespan (Makespan: per-item fixed cost vs
  // balance) on the layer that moves the most bytes. Equal segments (dense) fit one wave
  // exactly and pay the per-item cost once; uneven ones (LeanK heads) need a few waves to
  // balance. Measured on H100 (docs/benchmarks.md): the previous rule, ~1 MB items up to
  // 8 waves, left dense 8 x 32K ... 32 x 16K at 86-87% of read bandwidth, one wave 90-92%.
  const int resident = num_sms_ * detail::DecodeBlocksPerSm(D);
  std::vector<std::vector<Seg>> layer_segs(L);
  int heaviest = 0;
  layer_bytes_.assign(L, 0);
  for (int l = 0; l < L; ++l) {
    std::vector<Seg>& segs = layer_segs[l];
    for (int s = 0; s < S; ++s) {
      const int n = seq_tokens[2 * s], m = seq_tokens[2 * s + 1];
      for (int h = 0; h < H; ++h) {
        segs.push_back({s, h, detail::kRegionFull, n - m, int64_t(4) * D});
        const int kept = meta_.kept(l, h);
        if (m > 0 && kept > 0)
          segs.push_back({s, h, detail::kRegionPruned, m, 2 * int64_t(kept + D)});
      }
    }
    for (const Seg& g : segs) layer_bytes_[l] += g.tokens * g.bytes_per_token;
    if (layer_bytes_[l] > layer_bytes_[heaviest]) heaviest = l;
  }
  int ctas = target_ctas;
  int max_waves = 0;  // 0: no limit (a caller's target_ctas)
  const CtaChoice& last = last_choice_;
  const int64_t heavy_bytes = layer_bytes_[heaviest];
  if (ctas <= 0 && last.ctas > 0 && last.num_segs == layer_segs[heaviest].size() &&
      std::abs(heavy_bytes - last.bytes) <= last.bytes / 64) {
    ctas = last.ctas;  // the same batch a few tokens on: the search would choose alike
    max_waves = last.max_waves;
  } else if (ctas <= 0) {
    // Eighths of a resident wave: below one wave too, because rounding the splits can
    // give more items than the target (a second, nearly empty wave at small batches).
    const double total = double(layer_bytes_[heaviest]);
    // Every segment already at its maximum split (one tile per item, or kMaxSplit) with
    // the largest target (short contexts): every candidate gives the same items, so skip
    // the search (the plan is built on the host while the step's first kernels run; batch
    // 1 x 1K lost 2.5% to it).
    const double min_target = std::max(1.0, total / std::max(1, resident / 2));
    const bool saturated =
        std::all_of(layer_segs[heaviest].begin(), layer_segs[heaviest].end(), [&](const Seg& g) {
          return g.tokens * g.bytes_per_token / min_target >=
                 std::min(detail::kMaxSplit, CeilDiv(g.tokens, kTileTokens)) - 0.5;
        });
    ctas = resident;
    int64_t best = INT64_MAX;
    for (int eighths : {4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64}) {  // 0.5 to 8 waves
      if (saturated) break;
      const int c = std::max(1, resident * eighths / 8);
      const int64_t t = Makespan(layer_segs[heaviest], std::max(1.0, total / c), resident);
      if (t < best) {
        best = t;
        ctas = c;
      }
    }
    max_waves = CeilDiv(CountPieces(layer_segs[heaviest], std::max(1.0, total / ctas)), resident);
    last_choice_ = {layer_segs[heaviest].size(), heavy_bytes, ctas, max_waves};
  }
  std::vector<DecodeItem> items;
  std::vector<int32_t> merge_ptr;
  layer_items_.assign(L, 0);
  layer_item_offset_.assign(L, 0);
  max_items_ = 0;
  std::vector<std::pair<int64_t, DecodeItem>> layer_list;
  for (int l = 0; l < L; ++l) {
    // Another layer's splits can round to more items than the heaviest's: fewer, larger
    // ones then, so that no layer starts an extra, nearly empty wave (LeanK 1 x 4K: 291
    // items on 264 slots took 22.0 us instead of 17.1).
    double target = std::max(1.0, double(layer_bytes_[l]) / ctas);
    for (int i = 0; i < 4 && max_waves > 0; ++i) {
      const int n = CountPieces(layer_segs[l], target);
      if (n <= max_waves * resident) break;
      target *= double(n) / (max_waves * resident);
    }
    layer_list.clear();
    int slot = 0;
    for (const Seg& g : layer_segs[l]) {
      if (g.region == detail::kRegionFull) merge_ptr.push_back(slot);  // first seg of (s, h)
      ForEachPiece(g, target, [&](int b, int e) {
        layer_list.push_back(
            {(e - b) * g.bytes_per_token, DecodeItem{g.seq, g.head, g.region, b, e, slot++}});
      });
    }
    merge_ptr.push_back(slot);
    std::stable_sort(layer_list.begin(), layer_list.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    layer_item_offset_[l] = static_cast<int>(items.size());
    layer_items_[l] = static_cast<int>(layer_list.size());
    max_items_ = std::max(max_items_, layer_items_[l]);
    for (const auto& [bytes, it] : layer_list) items.push_back(it);
  }

  plan_.Clear();
  off_tokens_ = plan_.Append(seq_tokens.data(), seq_tokens.size());
  off_full_ptr_ = plan_.Append(full_ptr.data(), full_ptr.size());
  off_full_idx_ = plan_.Append(full_idx.data(), full_idx.size());
  off_pruned_ptr_ = plan_.Append(pruned_ptr.data(), pruned_ptr.size());
  off_pruned_idx_ = plan_.Append(pruned_idx.data(), pruned_idx.size());
  off_items_ = plan_.Append(items.data(), items.size());
  off_merge_ptr_ = plan_.Append(merge_ptr.data(), merge_ptr.size());
  const size_t partial = size_t(std::max(1, max_items_)) * G * (D + 1) * sizeof(float);
  if (partial > partial_capacity_) {
    LEANK_CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaFree(d_partial_);
    partial_capacity_ = partial * 2;
    LEANK_CUDA_CHECK(cudaMalloc(&d_partial_, partial_capacity_));
  }
  if (size_t(S) * H > counters_capacity_) {
    LEANK_CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaFree(d_counters_);
    counters_capacity_ = size_t(S) * H * 2;
    LEANK_CUDA_CHECK(cudaMalloc(&d_counters_, counters_capacity_ * sizeof(int32_t)));
    LEANK_CUDA_CHECK(cudaMemsetAsync(d_counters_, 0, counters_capacity_ * sizeof(int32_t), stream));
  }
  plan_.Upload(stream);
  num_seqs_ = S;
  return absl::OkStatus();
}

void DecodeAttention::Run(int layer, const bf16* q, const bf16* full, const bf16* pruned,
                          float scale, bf16* out, cudaStream_t stream) const {
  const AttentionShape& sh = meta_.shape();
  const int H = sh.num_kv_heads, D = sh.head_dim, G = sh.num_q_heads / H;
  const unsigned char* base = plan_.device();
  detail::DecodeParams p{};
  p.q = q;
  p.full = full;
  p.pruned = pruned;
  p.out = out;
  p.seq_tokens = reinterpret_cast<const int32_t*>(base + off_tokens_);
  p.full_ptr = reinterpret_cast<const int32_t*>(base + off_full_ptr_);
  p.full_idx = reinterpret_cast<const int32_t*>(base + off_full_idx_);
  p.pruned_ptr = reinterpret_cast<const int32_t*>(base + off_pruned_ptr_);
  p.pruned_idx = reinterpret_cast<const int32_t*>(base + off_pruned_idx_);
  p.items = reinterpret_cast<const DecodeItem*>(base + off_items_) + layer_item_offset_[layer];
  p.merge_ptr =
      reinterpret_cast<const int32_t*>(base + off_merge_ptr_) + size_t(layer) * (num_seqs_ * H + 1);
  p.kept = meta_.d_kept() + layer * H;
  p.k_off = meta_.d_k_off() + layer * H;
  p.v_off = meta_.d_v_off() + layer * H;
  p.channels = meta_.d_channels() + size_t(layer) * H * D;
  p.pruned_block_elems = meta_.pruned_block_elems(layer);
  p.partial_o = d_partial_;
  p.partial_lse = d_partial_ + size_t(std::max(1, max_items_)) * G * D;
  p.counters = d_counters_;
  p.num_kv_heads = H;
  p.group = G;
  p.block_size = sh.block_size;
  p.log2_block = sh.block_size == 16 ? 4 : sh.block_size == 32 ? 5 : 6;
  p.scale_log2 = scale * 1.4426950408889634f;
  detail::LaunchDecode(p, D, layer_items_[layer], num_seqs_, stream);
}

}  // namespace leank::kernels
