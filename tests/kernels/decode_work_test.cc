// BuildDecodeWork (kernels/decode_work.h) on the host: every layer's items cover each
// (sequence, kv head, region) exactly once in whole tiles, slots and merge ranges agree,
// items run largest first (a stable order), bytes are what the regions move, no layer rounds into
// an extra wave, dense equal segments take one wave, and the CTA choice is reused or forced as
// documented; a parallel build (HostPool) equals a serial one; DecodePlanner's lists built
// ahead equal fresh ones and are used only for the batch they were built for. Random
// batches from a fixed seed.
#include "kernels/decode_work.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/host_pool.h"

namespace leank::kernels {
namespace {

using detail::DecodeItem;
using detail::kRegionFull;
using detail::kRegionPruned;
using detail::kTileTokens;

constexpr int kResident = 264;  // H100: 132 SMs x 2 CTAs

struct Batch {
  AttentionShape shape;
  bool dense = false;
  std::vector<int32_t> seq_tokens;  // [seqs][2]: n, M(n)
  std::vector<int32_t> kept;        // [layers][H]
};

// Llama-3.1-8B attention shape with fewer layers; kept counts per head drawn from
// {0, 16, ..., 128} (0-kept and all-kept heads included) unless dense.
Batch MakeBatch(std::mt19937& rng, bool dense, std::vector<int64_t> lengths, int layers = 4) {
  Batch b;
  b.shape = {layers, 8, 32, 128, 16, 128, 768};
  b.dense = dense;
  for (int64_t n : lengths) {
    b.seq_tokens.push_back(static_cast<int32_t>(n));
    b.seq_tokens.push_back(static_cast<int32_t>(MiddleTokens(b.shape, dense, n)));
  }
  b.kept.resize(size_t(layers) * 8);
  for (size_t i = 0; i < b.kept.size(); ++i) {
    b.kept[i] = i % 8 == 0 ? 0 : i % 8 == 1 ? 128 : 16 * static_cast<int>(rng() % 9);
  }
  return b;
}

// Region sizes in tokens and bytes per token, computed here from the contract.
int RegionTokens(const Batch& b, int seq, int region) {
  const int n = b.seq_tokens[2 * seq], m = b.seq_tokens[2 * seq + 1];
  return region == kRegionFull ? n - m : m;
}
int64_t BytesPerToken(const Batch& b, int layer, int head, int region) {
  const int D = b.shape.head_dim;
  return region == kRegionFull ? 4 * D : 2 * (b.kept[layer * 8 + head] + D);
}

void CheckWork(const Batch& b, const DecodeWork& w) {
  const int L = b.shape.num_layers, H = b.shape.num_kv_heads;
  const int S = static_cast<int>(b.seq_tokens.size() / 2);
  ASSERT_EQ(static_cast<int>(w.layer_items.size()), L);
  ASSERT_EQ(w.merge_ptr.size(), size_t(L) * (S * H + 1));
  int max_items = 0, offset = 0;
  for (int l = 0; l < L; ++l) {
    SCOPED_TRACE(::testing::Message() << "layer " << l);
    ASSERT_EQ(w.layer_item_offset[l], offset);
    const int n_items = w.layer_items[l];
    max_items = std::max(max_items, n_items);
    const DecodeItem* items = w.items.data() + offset;
    offset += n_items;
    const int32_t* merge = w.merge_ptr.data() + size_t(l) * (S * H + 1);
    // Token ranges per (seq, head, region), slots seen once each.
    std::map<std::tuple<int, int, int>, std::vector<std::pair<int, int>>> ranges;
    std::vector<int> slot_seen(n_items, 0);
    int64_t bytes = 0, prev_bytes = INT64_MAX;
    for (int i = 0; i < n_items; ++i) {
      const DecodeItem& it = items[i];
      ASSERT_TRUE(it.seq >= 0 && it.seq < S && it.kv_head >= 0 && it.kv_head < H);
      ASSERT_TRUE(it.slot >= 0 && it.slot < n_items) << it.slot;
      ++slot_seen[it.slot];
      const int flat = it.seq * H + it.kv_head;
      EXPECT_GE(it.slot, merge[flat]);
      EXPECT_LT(it.slot, merge[flat + 1]);
      EXPECT_LT(it.tok_begin, it.tok_end);
      EXPECT_EQ(it.tok_begin % kTileTokens, 0);
      const int64_t item_bytes =
          int64_t(it.tok_end - it.tok_begin) * BytesPerToken(b, l, it.kv_head, it.region);
      EXPECT_LE(item_bytes, prev_bytes) << "item " << i << " is larger than the one before";
      // Equal sizes keep the order the pieces were cut in, which is the slot order.
      if (i > 0 && item_bytes == prev_bytes) {
        EXPECT_GT(it.slot, items[i - 1].slot) << "item " << i;
      }
      prev_bytes = item_bytes;
      bytes += item_bytes;
      ranges[{it.seq, it.kv_head, it.region}].push_back({it.tok_begin, it.tok_end});
    }
    for (int i = 0; i < n_items; ++i) EXPECT_EQ(slot_seen[i], 1) << "slot " << i;
    EXPECT_EQ(merge[S * H], n_items);
    int64_t expect_bytes = 0;
    for (int s = 0; s < S; ++s) {
      for (int h = 0; h < H; ++h) {
        EXPECT_LE(merge[s * H + h], merge[s * H + h + 1]);
        for (int region : {kRegionFull, kRegionPruned}) {
          const int tokens = RegionTokens(b, s, region);
          const bool read = region == kRegionFull || b.kept[l * H + h] > 0;
          auto& r = ranges[{s, h, region}];
          if (tokens == 0 || !read) {
            EXPECT_TRUE(r.empty()) << "seq " << s << " head " << h << " region " << region;
            continue;
          }
          expect_bytes += tokens * BytesPerToken(b, l, h, region);
          std::sort(r.begin(), r.end());
          ASSERT_FALSE(r.empty()) << "seq " << s << " head " << h << " region " << region;
          EXPECT_LE(static_cast<int>(r.size()), detail::kMaxSplit);
          EXPECT_EQ(r.front().first, 0);
          EXPECT_EQ(r.back().second, tokens);
          for (size_t k = 1; k < r.size(); ++k) EXPECT_EQ(r[k].first, r[k - 1].second);
        }
      }
    }
    EXPECT_EQ(bytes, expect_bytes);
    EXPECT_EQ(w.layer_bytes[l], expect_bytes);
  }
  EXPECT_EQ(offset, static_cast<int>(w.items.size()));
  EXPECT_EQ(w.max_items, max_items);
}

void ExpectSameWork(const DecodeWork& a, const DecodeWork& b) {
  ASSERT_EQ(a.items.size(), b.items.size());
  for (size_t i = 0; i < a.items.size(); ++i) {
    const DecodeItem &x = a.items[i], &y = b.items[i];
    ASSERT_TRUE(x.seq == y.seq && x.kv_head == y.kv_head && x.region == y.region &&
                x.tok_begin == y.tok_begin && x.tok_end == y.tok_end && x.slot == y.slot)
        << "item " << i;
  }
  EXPECT_EQ(a.merge_ptr, b.merge_ptr);
  EXPECT_EQ(a.layer_items, b.layer_items);
  EXPECT_EQ(a.layer_item_offset, b.layer_item_offset);
  EXPECT_EQ(a.layer_bytes, b.layer_bytes);
  EXPECT_EQ(a.max_items, b.max_items);
  EXPECT_TRUE(a.choice == b.choice);
}

TEST(DecodeWork, RandomBatchesCoverEveryRegionOnce) {
  std::mt19937 rng(2508);
  DecodeWork w;  // reused like DecodeAttention's: nothing of the last batch may remain
  for (int trial = 0; trial < 40; ++trial) {
    SCOPED_TRACE(::testing::Message() << "trial " << trial);
    const bool dense = trial % 3 == 0;
    std::vector<int64_t> lengths(1 + rng() % 24);
    for (auto& n : lengths) {
      // Region boundaries (sink 128, recent 768, blocks of 16) and long contexts.
      const int64_t picks[] = {1, 127, 128, 129, 896, 897, 911, 912, 913, 4096, 32768};
      n = rng() % 3 == 0 ? picks[rng() % 11] : 1 + static_cast<int64_t>(rng() % 70000);
    }
    Batch b = MakeBatch(rng, dense, lengths);
    BuildDecodeWork(b.shape, b.seq_tokens, b.kept, kResident, 0, {}, &w);
    CheckWork(b, w);
    EXPECT_GT(w.choice.ctas, 0);
    EXPECT_GT(w.choice.max_waves, 0);
    // No layer rounds into an extra wave, where its segment count allows.
    for (int l = 0; l < b.shape.num_layers; ++l) {
      EXPECT_LE(w.layer_items[l],
                std::max(w.choice.max_waves * kResident, static_cast<int>(2 * lengths.size() * 8)))
          << "layer " << l;
    }
  }
}

// Where the makespan model ties (every CTA count from half a wave to some point leaves
// each segment whole: the same items, the same prediction), the search takes the most
// CTAs among the tied, not the fewest (H100: LeanK 64 x 16K 914.5 us at 3 waves against
// 949.7 us for the whole segments).
TEST(DecodeWork, TiedPredictionsTakeTheMostCtas) {
  std::mt19937 rng(5);
  Batch b = MakeBatch(rng, false, std::vector<int64_t>(64, 16384));
  std::fill(b.kept.begin(), b.kept.end(), 32);  // pruned segments of ~5 MB, full of ~0.5 MB
  DecodeWork w;
  BuildDecodeWork(b.shape, b.seq_tokens, b.kept, kResident, 0, {}, &w);
  DecodeWork half, two;
  BuildDecodeWork(b.shape, b.seq_tokens, b.kept, kResident, kResident / 2, {}, &half);
  BuildDecodeWork(b.shape, b.seq_tokens, b.kept, kResident, 2 * kResident, {}, &two);
  ASSERT_EQ(half.items.size(), two.items.size()) << "the premise: the same items";
  EXPECT_GE(w.choice.ctas, 2 * kResident);
}

TEST(DecodeWork, DenseEqualSequencesTakeOneWave) {
  std::mt19937 rng(1);
  for (int batch : {8, 32, 64}) {
    for (int64_t context : {16384, 32768}) {
      Batch b = MakeBatch(rng, true, std::vector<int64_t>(batch, context));
      DecodeWork w;
      BuildDecodeWork(b.shape, b.seq_tokens, b.kept, kResident, 0, {}, &w);
      CheckWork(b, w);
      for (int l = 0; l < b.shape.num_layers; ++l) {
        // One wave, or one item per (seq, kv head) when those alone exceed a wave (64 x 8).
        EXPECT_LE(w.layer_items[l], std::max(kResident, batch * 8))
            << batch << " x " << context << " layer " << l;
        // Equal segments, equal pieces: the largest item is at most one tile over the smallest.
        const DecodeItem* it = w.items.data() + w.layer_item_offset[l];
        const int n = w.layer_items[l];
        EXPECT_LE(it[0].tok_end - it[0].tok_begin,
                  it[n - 1].tok_end - it[n - 1].tok_begin + kTileTokens)
            << batch << " x " << context;
      }
    }
  }
}

TEST(DecodeWork, ForcedCtasAndReusedChoice) {
  std::mt19937 rng(7);
  Batch b = MakeBatch(rng, false, {20000, 30000, 5000});
  // Forced: that CTA count, no wave limit.
  DecodeWork forced;
  BuildDecodeWork(b.shape, b.seq_tokens, b.kept, kResident, 50, {}, &forced);
  CheckWork(b, forced);
  EXPECT_EQ(forced.choice.ctas, 50);
  EXPECT_EQ(forced.choice.max_waves, 0);
  // Searched, then reused one token later (bytes within 1/64) and searched again when
  // the bytes moved more. 7 CTAs is no candidate of the search (eighths of 264).
  DecodeWork first;
  BuildDecodeWork(b.shape, b.seq_tokens, b.kept, kResident, 0, {}, &first);
  DecodeCtaChoice odd = first.choice;
  odd.ctas = 7;
  Batch next = b;
  for (size_t s = 0; s < next.seq_tokens.size(); s += 2) {
    ++next.seq_tokens[s];
    next.seq_tokens[s + 1] =
        static_cast<int32_t>(MiddleTokens(next.shape, false, next.seq_tokens[s]));
  }
  DecodeWork reused;
  BuildDecodeWork(next.shape, next.seq_tokens, next.kept, kResident, 0, odd, &reused);
  CheckWork(next, reused);
  EXPECT_EQ(reused.choice.ctas, 7);
  DecodeCtaChoice stale = odd;
  stale.bytes = odd.bytes * 2;
  DecodeWork searched;
  BuildDecodeWork(next.shape, next.seq_tokens, next.kept, kResident, 0, stale, &searched);
  EXPECT_NE(searched.choice.ctas, 7);
  EXPECT_EQ(
      searched.choice.bytes,
      reused.layer_bytes[std::max_element(reused.layer_bytes.begin(), reused.layer_bytes.end()) -
                         reused.layer_bytes.begin()]);
  // A batch with another segment count never reuses.
  DecodeCtaChoice other = odd;
  other.num_segs += 1;
  DecodeWork fresh;
  BuildDecodeWork(next.shape, next.seq_tokens, next.kept, kResident, 0, other, &fresh);
  EXPECT_NE(fresh.choice.ctas, 7);
}

TEST(DecodeWork, ShortBatchOneItemPerSegment) {
  // Contexts under one tile cannot split: one item per (seq, head), no search needed.
  std::mt19937 rng(3);
  Batch b = MakeBatch(rng, false, {1, 17, 63, 64});
  DecodeWork w;
  BuildDecodeWork(b.shape, b.seq_tokens, b.kept, kResident, 0, {}, &w);
  CheckWork(b, w);
  for (int l = 0; l < b.shape.num_layers; ++l) EXPECT_EQ(w.layer_items[l], 4 * 8);
}

// Decode steps of a batch: each sequence one token longer a step, past compactions
// (M grows by a block) and the CTA choice's 1/64 drift, so reuse and search both occur.
std::vector<int32_t> StepTokens(const Batch& b, int step) {
  std::vector<int32_t> t = b.seq_tokens;
  for (size_t s = 0; s < t.size(); s += 2) {
    t[s] += step;
    t[s + 1] = static_cast<int32_t>(MiddleTokens(b.shape, b.dense, t[s]));
  }
  return t;
}

TEST(DecodeWork, ParallelBuildEqualsSerial) {
  std::mt19937 rng(2026);
  HostPool pool(3);
  DecodeWork serial, parallel;  // both reused across batches
  for (int trial = 0; trial < 12; ++trial) {
    SCOPED_TRACE(::testing::Message() << "trial " << trial);
    // Above the parallel threshold (4096 seq x kv head x distinct layer segments): masked
    // batches of 32-63 sequences over 16-32 layers, dense ones (one distinct layer) of
    // 512-700 sequences.
    const bool dense = trial % 4 == 0;
    std::vector<int64_t> lengths(dense ? 512 + rng() % 189 : 32 + rng() % 32);
    for (auto& n : lengths) n = 1 + static_cast<int64_t>(rng() % 40000);
    Batch b = MakeBatch(rng, dense, lengths, dense ? 4 : 16 + static_cast<int>(rng() % 17));
    const int target = trial % 5 == 4 ? 300 : 0;
    BuildDecodeWork(b.shape, b.seq_tokens, b.kept, kResident, target, {}, &serial);
    BuildDecodeWork(b.shape, b.seq_tokens, b.kept, kResident, target, {}, &parallel, &pool);
    ExpectSameWork(serial, parallel);
    CheckWork(b, parallel);
  }
}

TEST(DecodePlanner, PreparedListsEqualFreshOnesAndAreUsed) {
  std::mt19937 rng(11);
  for (bool dense : {false, true}) {
    Batch b = MakeBatch(rng, dense, {900, 1200, 5000, 60});
    // The prepared planner also builds with 2 threads.
    DecodePlanner prepared(b.shape, dense, b.kept, kResident, 2),
        fresh(b.shape, dense, b.kept, kResident);
    constexpr int kSteps = 200;
    for (int step = 0; step < kSteps; ++step) {
      const std::vector<int32_t> tokens = StepTokens(b, step);
      const DecodeWork& p = prepared.Plan(tokens);
      const DecodeWork& f = fresh.Plan(tokens);
      ExpectSameWork(p, f);
      CheckWork(Batch{b.shape, dense, tokens, b.kept}, p);
      prepared.PrepareNext();
    }
    EXPECT_EQ(prepared.plans(), kSteps);
    EXPECT_EQ(prepared.prepared_used(), kSteps - 1);  // all but the first
    EXPECT_EQ(fresh.prepared_used(), 0);
  }
}

TEST(DecodePlanner, AnotherBatchIsBuiltAnew) {
  std::mt19937 rng(12);
  Batch b = MakeBatch(rng, false, {3000, 7000, 20000});
  DecodePlanner planner(b.shape, false, b.kept, kResident);
  DecodePlanner fresh(b.shape, false, b.kept, kResident);
  planner.Plan(b.seq_tokens);
  fresh.Plan(b.seq_tokens);
  planner.PrepareNext();
  // Two tokens on instead of one; a sequence gone; a forced CTA count: none may use the
  // prepared lists, each must equal a fresh plan.
  std::vector<int32_t> two = StepTokens(b, 2);
  ExpectSameWork(planner.Plan(two), fresh.Plan(two));
  planner.PrepareNext();
  std::vector<int32_t> fewer(two.begin(), two.end() - 2);
  for (size_t s = 0; s < fewer.size(); s += 2) {
    ++fewer[s];
    fewer[s + 1] = static_cast<int32_t>(MiddleTokens(b.shape, false, fewer[s]));
  }
  ExpectSameWork(planner.Plan(fewer), fresh.Plan(fewer));
  planner.PrepareNext();
  std::vector<int32_t> next = fewer;
  for (size_t s = 0; s < next.size(); s += 2) {
    ++next[s];
    next[s + 1] = static_cast<int32_t>(MiddleTokens(b.shape, false, next[s]));
  }
  ExpectSameWork(planner.Plan(next, 77), fresh.Plan(next, 77));
  EXPECT_EQ(planner.work().choice.ctas, 77);
  EXPECT_EQ(planner.prepared_used(), 0);
  // The forced plan left the held choice alone: the next default plan matches fresh.
  planner.PrepareNext();
  ExpectSameWork(planner.Plan(next), fresh.Plan(next));
  EXPECT_EQ(planner.prepared_used(), 0);  // it prepared next + 1, not next
}

}  // namespace
}  // namespace leank::kernels
