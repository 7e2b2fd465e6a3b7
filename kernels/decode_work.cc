// Split-KV work lists of a decode step (decode_work.h). Pure host code.

#include "kernels/decode_work.h"

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <memory>
#include <queue>
#include <utility>

#include "kernels/host_pool.h"

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

// Piece length (tokens, whole tiles) of `g` (tokens >= 1) for a target of `target` bytes
// per CTA: about bytes / target equal pieces, at most kMaxSplit; the last may be shorter.
// 32-bit divisions: this runs for every segment of every layer at every step.
int PieceTokens(const Seg& g, double target) {
  const int max_split = std::min(detail::kMaxSplit, (g.tokens + kTileTokens - 1) / kTileTokens);
  // Rounded half away from zero (as lround), clamped before the conversion to int.
  const int split = static_cast<int>(std::clamp(
      std::round(double(g.tokens * g.bytes_per_token) / target), 1.0, double(max_split)));
  static_assert((kTileTokens & (kTileTokens - 1)) == 0);
  return ((g.tokens + split - 1) / split + kTileTokens - 1) & ~(kTileTokens - 1);
}

// PieceTokens at one target, memoized by (tokens, bytes per token): a batch's segments
// repeat a few shapes (equal lengths, a handful of kept counts).
class PieceMemo {
 public:
  explicit PieceMemo(double target) : target_(target) {
    for (Entry& e : slots_) e.tokens = -1;
  }
  int operator()(const Seg& g) {
    const uint64_t h = uint64_t(g.tokens) * 0x9E3779B97F4A7C15ull ^
                       uint64_t(g.bytes_per_token) * 0xC2B2AE3D27D4EB4Full;
    Entry& e = slots_[h >> 58];
    if (e.tokens != g.tokens || e.bytes_per_token != g.bytes_per_token) {
      e = {g.tokens, g.bytes_per_token, PieceTokens(g, target_)};
    }
    return e.chunk;
  }

 private:
  struct Entry {
    int tokens;
    int64_t bytes_per_token;
    int chunk;
  };
  double target_;
  std::array<Entry, 64> slots_;
};

// Token ranges [b, e) of `g` cut in pieces of `chunk` tokens.
template <typename F>
void ForEachPiece(const Seg& g, int chunk, F&& f) {
  for (int b = 0; b < g.tokens; b += chunk) f(b, std::min(g.tokens, b + chunk));
}

int CountPieces(const std::vector<Seg>& segs, double target) {
  PieceMemo piece(target);
  int n = 0;
  for (const Seg& g : segs) {
    const int chunk = piece(g);
    n += (g.tokens + chunk - 1) / chunk;
  }
  return n;
}

// Writes `list` to out[0, list.size()) sorted by `bytes` (one per item) descending, equal
// bytes in list order: what std::stable_sort gives, by counting. The distinct byte counts are few
// (the pieces of a segment share a length but the last), so they are hashed, ranked and counted.
void WriteLargestFirst(const std::vector<DecodeItem>& list, const std::vector<int64_t>& bytes,
                       DecodeItem* out) {
  thread_local std::vector<int32_t> table;   // open addressing: index into distinct, -1 empty
  thread_local std::vector<int32_t> key_of;  // per item: index into distinct
  thread_local std::vector<int64_t> distinct;
  thread_local std::vector<int32_t> order, start;  // distinct indices by bytes; run starts
  const size_t n = list.size();
  size_t cap = 16;
  while (cap < 2 * n) cap *= 2;
  table.assign(cap, -1);
  key_of.resize(n);
  distinct.clear();
  for (size_t i = 0; i < n; ++i) {
    size_t h = ((uint64_t(bytes[i]) * 0x9E3779B97F4A7C15ull) >> 20) & (cap - 1);
    while (table[h] >= 0 && distinct[table[h]] != bytes[i]) h = (h + 1) & (cap - 1);
    if (table[h] < 0) {
      table[h] = static_cast<int32_t>(distinct.size());
      distinct.push_back(bytes[i]);
    }
    key_of[i] = table[h];
  }
  const size_t k = distinct.size();
  order.resize(k);
  for (size_t d = 0; d < k; ++d) order[d] = static_cast<int32_t>(d);
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t b) { return distinct[a] > distinct[b]; });
  // start[d]: where distinct value d's items begin in the output (counts, then prefix sums).
  start.assign(k, 0);
  for (size_t i = 0; i < n; ++i) ++start[key_of[i]];
  int32_t at = 0;
  for (int32_t d : order) {
    const int32_t c = start[d];
    start[d] = at;
    at += c;
  }
  for (size_t i = 0; i < n; ++i) out[start[key_of[i]]++] = list[i];
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
  PieceMemo piece(target);
  for (const Seg& g : segs) {
    ForEachPiece(g, piece(g), [&](int b, int e) {
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
  // Below one wave too: rounding the splits can give more items than the target (a
  // second, nearly empty wave at small batches).
  constexpr int kEighths[] = {4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64};
  constexpr int kCandidates = sizeof(kEighths) / sizeof(kEighths[0]);
  int64_t predicted[kCandidates];
  int64_t best = INT64_MAX;
  for (int i = 0; i < kCandidates && !saturated; ++i) {
    const int c = std::max(1, resident * kEighths[i] / 8);
    predicted[i] = Makespan(segs, std::max(1.0, double(total) / c), resident);
    best = std::min(best, predicted[i]);
  }
  // Of the candidates the model cannot tell apart (within 0.1%), the most CTAs: the
  // model runs every slot at the same rate, so it sees no gain in cutting the largest
  // segments further, but the hardware's slots do not progress alike, and more, smaller
  // items of more even size finish closer together. H100, LeanK 64 x 16K: the model gives 1024
  // items (one per segment) and 792 CTAs the same makespan; measured 949.7 vs 914.5 us.
  for (int i = 0; i < kCandidates && !saturated; ++i) {
    if (predicted[i] - best <= best / 1000) ctas = std::max(1, resident * kEighths[i] / 8);
  }
  const int max_waves = CeilDiv(CountPieces(segs, std::max(1.0, double(total) / ctas)), resident);
  return {segs.size(), total, ctas, max_waves};
}

}  // namespace

void BuildDecodeWork(const AttentionShape& sh, std::span<const int32_t> seq_tokens,
                     std::span<const int32_t> kept, int resident, int target_ctas,
                     const DecodeCtaChoice& last, DecodeWork* work, HostPool* pool) {
  const int S = static_cast<int>(seq_tokens.size() / 2), H = sh.num_kv_heads, D = sh.head_dim,
            L = sh.num_layers;
  DecodeWork& w = *work;  // its vectors keep their capacity from the last step
  // Scratch kept across calls too: a step allocates (and page-faults) nothing new once
  // the batch stops growing. The per-layer scratch is the calling thread's; pool threads
  // use it for the layers they are given, and their own for the rest.
  // (Lambdas do not capture thread_locals: these references name the caller's.)
  thread_local std::vector<std::vector<Seg>> caller_segs;
  thread_local std::vector<double> caller_target;
  std::vector<std::vector<Seg>>& layer_segs = caller_segs;
  std::vector<double>& layer_target = caller_target;
  if (static_cast<int>(layer_segs.size()) < L) layer_segs.resize(L);
  layer_target.assign(L, 0.0);
  // Work lists: every (seq, kv head, region) segment cut into token ranges of about
  // layer_bytes / ctas bytes, whole 64-token tiles, largest first (the hardware then hands
  // the next item to whichever CTA slot frees first). Equal segments (dense) fit one wave
  // exactly and pay the per-item cost once; uneven ones (LeanK heads) need a few waves to
  // balance. Measured on H100 (docs/benchmarks.md): the previous rule, ~1 MB items up to
  // 8 waves, left dense 8 x 32K ... 32 x 16K at 86-87% of read bandwidth, one wave 90-92%.
  //
  // Layers with the same kept counts (every layer when no sequence has a middle yet, e.g.
  // dense mode) get the same segments, hence the same list: built once, copied after.
  bool any_middle = false;
  for (int s = 0; s < S; ++s) any_middle |= seq_tokens[2 * s + 1] > 0;
  std::vector<int> source(L), sources;  // the first layer whose list a layer repeats
  for (int l = 0; l < L; ++l) {
    source[l] = l;
    for (int p = 0; p < l && source[l] == l; ++p) {
      if (source[p] == p &&
          (!any_middle ||
           std::equal(kept.begin() + l * H, kept.begin() + (l + 1) * H, kept.begin() + p * H))) {
        source[l] = p;
      }
    }
    if (source[l] == l) sources.push_back(l);
  }
  // Layers in parallel on `pool` when the plan is large enough to pay for the hand-off.
  const bool parallel = pool != nullptr && pool->threads() > 1 &&
                        int64_t{S} * H * static_cast<int64_t>(sources.size()) >= 4096;
  auto for_sources = [&](const std::function<void(int)>& fn) {
    if (parallel) {
      pool->ParallelFor(static_cast<int>(sources.size()), [&](int i) { fn(sources[i]); });
    } else {
      for (int l : sources) fn(l);
    }
  };

  w.layer_bytes.assign(L, 0);
  for_sources([&](int l) {
    std::vector<Seg>& segs = layer_segs[l];
    segs.clear();
    int64_t bytes = 0;
    for (int s = 0; s < S; ++s) {
      const int n = seq_tokens[2 * s], m = seq_tokens[2 * s + 1];
      for (int h = 0; h < H; ++h) {
        segs.push_back({s, h, detail::kRegionFull, n - m, int64_t(4) * D});
        const int k = m > 0 ? kept[l * H + h] : 0;
        if (k > 0) segs.push_back({s, h, detail::kRegionPruned, m, 2 * int64_t(k + D)});
      }
    }
    for (const Seg& g : segs) bytes += g.tokens * g.bytes_per_token;
    w.layer_bytes[l] = bytes;
  });
  int heaviest = 0;
  for (int l = 0; l < L; ++l) {
    if (source[l] != l) w.layer_bytes[l] = w.layer_bytes[source[l]];
    if (w.layer_bytes[l] > w.layer_bytes[heaviest]) heaviest = l;  // a source layer
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

  // Each layer's target and item count, then where its items and merge ranges go.
  w.layer_items.assign(L, 0);
  for_sources([&](int l) {
    // Another layer's splits can round to more items than the heaviest's: fewer, larger
    // ones then, so that no layer starts an extra, nearly empty wave (LeanK 1 x 4K: 291
    // items on 264 slots took 22.0 us instead of 17.1).
    double target = std::max(1.0, double(w.layer_bytes[l]) / ctas);
    int n = CountPieces(layer_segs[l], target);
    for (int i = 0; i < 4 && max_waves > 0 && n > max_waves * resident; ++i) {
      target *= double(n) / (max_waves * resident);
      n = CountPieces(layer_segs[l], target);
    }
    layer_target[l] = target;
    w.layer_items[l] = n;
  });
  w.layer_item_offset.assign(L, 0);
  w.max_items = 0;
  int total = 0;
  for (int l = 0; l < L; ++l) {
    if (source[l] != l) w.layer_items[l] = w.layer_items[source[l]];
    w.layer_item_offset[l] = total;
    total += w.layer_items[l];
    w.max_items = std::max(w.max_items, w.layer_items[l]);
  }
  const size_t row = size_t(S) * H + 1;  // merge_ptr entries per layer
  w.items.resize(total);
  w.merge_ptr.resize(L * row);

  for_sources([&](int l) {
    thread_local std::vector<DecodeItem> layer_list;
    thread_local std::vector<int64_t> item_bytes;  // of layer_list's items
    layer_list.clear();
    item_bytes.clear();
    int32_t* merge = w.merge_ptr.data() + l * row;
    int slot = 0;
    PieceMemo piece(layer_target[l]);
    for (const Seg& g : layer_segs[l]) {
      if (g.region == detail::kRegionFull) *merge++ = slot;  // first seg of (s, h)
      ForEachPiece(g, piece(g), [&](int b, int e) {
        item_bytes.push_back((e - b) * g.bytes_per_token);
        layer_list.push_back(DecodeItem{g.seq, g.head, g.region, b, e, slot++});
      });
    }
    *merge = slot;
    WriteLargestFirst(layer_list, item_bytes, w.items.data() + w.layer_item_offset[l]);
  });
  for (int l = 0; l < L; ++l) {
    if (source[l] == l) continue;
    std::copy_n(w.items.begin() + w.layer_item_offset[source[l]], w.layer_items[l],
                w.items.begin() + w.layer_item_offset[l]);
    std::copy_n(w.merge_ptr.begin() + source[l] * row, row, w.merge_ptr.begin() + l * row);
  }
}

DecodePlanner::DecodePlanner(const AttentionShape& shape, bool dense, std::span<const int32_t> kept,
                             int resident, int threads)
    : shape_(shape),
      dense_(dense),
      kept_(kept.begin(), kept.end()),
      resident_(resident),
      pool_(std::make_unique<HostPool>(threads)),
      work_(std::make_unique<DecodeWork>()),
      next_(std::make_unique<DecodeWork>()) {}

DecodePlanner::~DecodePlanner() = default;

const DecodeWork& DecodePlanner::Plan(std::span<const int32_t> seq_tokens, int target_ctas) {
  ++plans_;
  const bool same =
      next_valid_ && target_ctas <= 0 && next_from_ == choice_ &&
      std::equal(seq_tokens.begin(), seq_tokens.end(), next_tokens_.begin(), next_tokens_.end());
  next_valid_ = false;
  if (same) {
    std::swap(work_, next_);
    ++prepared_used_;
  } else {
    BuildDecodeWork(shape_, seq_tokens, kept_, resident_, target_ctas, choice_, work_.get(),
                    pool_.get());
  }
  if (target_ctas <= 0) choice_ = work_->choice;
  tokens_.assign(seq_tokens.begin(), seq_tokens.end());
  return *work_;
}

void DecodePlanner::PrepareNext() {
  next_tokens_.resize(tokens_.size());
  for (size_t s = 0; s < tokens_.size(); s += 2) {
    const int64_t n = int64_t{tokens_[s]} + 1;
    next_tokens_[s] = static_cast<int32_t>(n);
    next_tokens_[s + 1] = static_cast<int32_t>(MiddleTokens(shape_, dense_, n));
  }
  BuildDecodeWork(shape_, next_tokens_, kept_, resident_, 0, choice_, next_.get(), pool_.get());
  next_from_ = choice_;
  next_valid_ = !tokens_.empty();
}

}  // namespace leank::kernels
