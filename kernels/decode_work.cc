// Split-KV work lists of a decode step (decode_work.h). Pure host code.

#include "kernels/decode_work.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <queue>
#include <utility>

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

// The CTA count: eighths of a resident wave from 0.5 to 8 waves, the smallest predicted
// makespan on the heaviest layer's segments (`total` bytes).
DecodeCtaChoice SearchCtas(const std::vector<Seg>& segs, int64_t total, int resident) {
  // Every segment already at its maximum split (one tile per item, or kMaxSplit) with
  // the largest target (short contexts): every candidate gives the same items, so skip
  // the search (the plan is built on the host while the step's first kernels run; batch
  // 1 x 1K lost 2.5% to it).
  const double min_target = std::max(1.0, double(total) / std::max(1, resident / 2));
  const bool saturated = std::all_of(segs.begin(), segs.end(), [&](const Seg& g) {
    return g.tokens * g.bytes_per_token / min_target >=
           std::min(detail::kMaxSplit, CeilDiv(g.tokens, kTileTokens)) - 0.5;
  });
  int ctas = resident;
  int64_t best = INT64_MAX;
  // Below one wave too: rounding the splits can give more items than the target (a
  // second, nearly empty wave at small batches).
  for (int eighths : {4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64}) {
    if (saturated) break;
    const int c = std::max(1, resident * eighths / 8);
    const int64_t t = Makespan(segs, std::max(1.0, double(total) / c), resident);
    if (t < best) {
      best = t;
      ctas = c;
    }
  }
  const int max_waves = CeilDiv(CountPieces(segs, std::max(1.0, double(total) / ctas)), resident);
  return {segs.size(), total, ctas, max_waves};
}

}  // namespace

DecodeWork BuildDecodeWork(const AttentionShape& sh, std::span<const int32_t> seq_tokens,
                           std::span<const int32_t> kept, int resident, int target_ctas,
                           const DecodeCtaChoice& last) {
  const int S = static_cast<int>(seq_tokens.size() / 2), H = sh.num_kv_heads, D = sh.head_dim,
            L = sh.num_layers;
  DecodeWork w;
  // Work lists: every (seq, kv head, region) segment cut into token ranges of about
  // layer_bytes / ctas bytes, whole 64-token tiles, largest first (the hardware then hands
  // the next item to whichever CTA slot frees first). Equal segments (dense) fit one wave
  // exactly and pay the per-item cost once; uneven ones (LeanK heads) need a few waves to
  // balance. Measured on H100 (docs/benchmarks.md): the previous rule, ~1 MB items up to
  // 8 waves, left dense 8 x 32K ... 32 x 16K at 86-87% of read bandwidth, one wave 90-92%.
  std::vector<std::vector<Seg>> layer_segs(L);
  int heaviest = 0;
  w.layer_bytes.assign(L, 0);
  for (int l = 0; l < L; ++l) {
    std::vector<Seg>& segs = layer_segs[l];
    segs.reserve(size_t(2) * S * H);
    for (int s = 0; s < S; ++s) {
      const int n = seq_tokens[2 * s], m = seq_tokens[2 * s + 1];
      for (int h = 0; h < H; ++h) {
        segs.push_back({s, h, detail::kRegionFull, n - m, int64_t(4) * D});
        const int k = m > 0 ? kept[l * H + h] : 0;
        if (k > 0) segs.push_back({s, h, detail::kRegionPruned, m, 2 * int64_t(k + D)});
      }
    }
    for (const Seg& g : segs) w.layer_bytes[l] += g.tokens * g.bytes_per_token;
    if (w.layer_bytes[l] > w.layer_bytes[heaviest]) heaviest = l;
  }
  const int64_t heavy_bytes = w.layer_bytes[heaviest];
  if (target_ctas > 0) {
    w.choice = {layer_segs[heaviest].size(), heavy_bytes, target_ctas, 0};
  } else if (last.ctas > 0 && last.num_segs == layer_segs[heaviest].size() &&
             std::abs(heavy_bytes - last.bytes) <= last.bytes / 64) {
    w.choice = last;  // the same batch a few tokens on: the search would choose alike
  } else {
    w.choice = SearchCtas(layer_segs[heaviest], heavy_bytes, resident);
  }
  const int ctas = w.choice.ctas, max_waves = w.choice.max_waves;

  w.layer_items.assign(L, 0);
  w.layer_item_offset.assign(L, 0);
  w.merge_ptr.reserve(size_t(L) * (size_t(S) * H + 1));
  std::vector<std::pair<int64_t, DecodeItem>> layer_list;
  for (int l = 0; l < L; ++l) {
    // Another layer's splits can round to more items than the heaviest's: fewer, larger
    // ones then, so that no layer starts an extra, nearly empty wave (LeanK 1 x 4K: 291
    // items on 264 slots took 22.0 us instead of 17.1).
    double target = std::max(1.0, double(w.layer_bytes[l]) / ctas);
    for (int i = 0; i < 4 && max_waves > 0; ++i) {
      const int n = CountPieces(layer_segs[l], target);
      if (n <= max_waves * resident) break;
      target *= double(n) / (max_waves * resident);
    }
    layer_list.clear();
    int slot = 0;
    for (const Seg& g : layer_segs[l]) {
      if (g.region == detail::kRegionFull) w.merge_ptr.push_back(slot);  // first seg of (s, h)
      ForEachPiece(g, target, [&](int b, int e) {
        layer_list.push_back(
            {(e - b) * g.bytes_per_token, DecodeItem{g.seq, g.head, g.region, b, e, slot++}});
      });
    }
    w.merge_ptr.push_back(slot);
    std::stable_sort(layer_list.begin(), layer_list.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    w.layer_item_offset[l] = static_cast<int>(w.items.size());
    w.layer_items[l] = static_cast<int>(layer_list.size());
    w.max_items = std::max(w.max_items, w.layer_items[l]);
    for (const auto& [bytes, it] : layer_list) w.items.push_back(it);
  }
  return w;
}

}  // namespace leank::kernels
