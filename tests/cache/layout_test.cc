// CacheLayout: validation, region boundaries, offsets and sizes, SplitBudget.

#include "cache/kv_cache.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cache/test_util.h"

namespace leank::cache {
namespace {

using ::testing::HasSubstr;

LayoutOptions Small() {
  LayoutOptions o;
  o.num_layers = 2;
  o.num_kv_heads = 3;
  o.head_dim = 64;
  o.block_size = 16;
  o.sink = 32;
  o.recent = 64;
  o.elem_bytes = 4;
  return o;
}

// Layer 0 keeps (32, 0, 64) channels, layer 1 keeps (16, 16, 0).
Mask SmallMask() {
  std::vector<uint8_t> kept(2 * 3 * 64, 0);
  for (int c = 0; c < 32; ++c) kept[0 * 64 + 2 * c] = 1;
  for (int c = 0; c < 64; ++c) kept[2 * 64 + c] = 1;
  for (int c = 0; c < 16; ++c) kept[3 * 64 + c] = 1;
  for (int c = 0; c < 16; ++c) kept[4 * 64 + 63 - c] = 1;
  auto mask = Mask::Create({2, 3, 64}, kept, 16);
  EXPECT_TRUE(mask.ok()) << mask.status();
  return *mask;
}

TEST(LayoutTest, RefusesBadOptions) {
  auto bad = [](LayoutOptions o, const std::string& what) {
    auto layout = CacheLayout::Create(o, std::nullopt);
    EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument) << what;
    EXPECT_THAT(std::string(layout.status().message()), HasSubstr(what));
  };
  LayoutOptions o = Small();
  o.block_size = 8;
  bad(o, "block_size 8 is not a positive multiple of 16");
  o = Small();
  o.sink = 24;
  bad(o, "sink 24 is not a multiple of block_size 16");
  o = Small();
  o.recent = 40;
  bad(o, "recent 40");
  o = Small();
  o.recent = 0;
  bad(o, "recent 0");
  o = Small();
  o.elem_bytes = 3;
  bad(o, "elem_bytes 3");
  o = Small();
  o.num_kv_heads = 0;
  bad(o, "must all be positive");
  auto mismatch = CacheLayout::Create(Small(), Mask::AllOnes({2, 3, 128}));
  EXPECT_THAT(std::string(mismatch.status().message()),
              HasSubstr("mask shape [2, 3, 128] does not match the model's [2, 3, 64]"));
}

TEST(LayoutTest, MiddleTokens) {
  auto layout = CacheLayout::Create(Small(), SmallMask());
  ASSERT_TRUE(layout.ok());
  // S + W = 96, B = 16: the middle grows by whole blocks once W + B tokens are recent.
  const std::vector<std::pair<int64_t, int64_t>> cases = {
      {0, 0}, {31, 0}, {32, 0}, {96, 0}, {111, 0}, {112, 16}, {127, 16}, {128, 32}, {1000, 896}};
  for (auto [n, m] : cases) EXPECT_EQ(layout->MiddleTokens(n), m) << "n=" << n;
  auto dense = CacheLayout::Create(Small(), std::nullopt);
  ASSERT_TRUE(dense.ok());
  EXPECT_EQ(dense->MiddleTokens(1000), 0);
  EXPECT_TRUE(dense->dense());
}

TEST(LayoutTest, OffsetsAndSizes) {
  auto layout = CacheLayout::Create(Small(), SmallMask());
  ASSERT_TRUE(layout.ok());
  const int64_t B = 16, D = 64;
  EXPECT_EQ(layout->full_block_elems(), 2 * 3 * B * D);
  // Layer 0: K tiles of heads 0 (32) and 2 (64), then V of heads 0 and 2.
  EXPECT_EQ(layout->kept(0, 0), 32);
  EXPECT_EQ(layout->pruned_k_offset(0, 0), 0);
  EXPECT_EQ(layout->pruned_k_offset(0, 1), -1);
  EXPECT_EQ(layout->pruned_v_offset(0, 1), -1);
  EXPECT_EQ(layout->pruned_k_offset(0, 2), B * 32);
  EXPECT_EQ(layout->pruned_v_offset(0, 0), B * 96);
  EXPECT_EQ(layout->pruned_v_offset(0, 2), B * 96 + B * D);
  EXPECT_EQ(layout->pruned_block_elems(0), B * (96 + 2 * D));
  // Layer 1: heads 0 and 1 keep 16 each, head 2 none.
  EXPECT_EQ(layout->pruned_k_offset(1, 1), B * 16);
  EXPECT_EQ(layout->pruned_v_offset(1, 0), B * 32);
  EXPECT_EQ(layout->pruned_v_offset(1, 1), B * 32 + B * D);
  EXPECT_EQ(layout->pruned_block_elems(1), B * (32 + 2 * D));
  EXPECT_EQ(layout->pruned_layer_base(0, 10), 0);
  EXPECT_EQ(layout->pruned_layer_base(1, 10), 10 * B * (96 + 2 * D));
  EXPECT_EQ(layout->full_bytes_per_token(), 2 * 2 * 3 * D * 4);
  EXPECT_EQ(layout->pruned_bytes_per_token(), ((96 + 2 * D) + (32 + 2 * D)) * 4);
  EXPECT_EQ(layout->full_block_bytes(), B * layout->full_bytes_per_token());
  EXPECT_EQ(layout->pruned_block_bytes(), B * layout->pruned_bytes_per_token());

  // All-ones: pruned blocks are exactly as large as full ones.
  auto ones = CacheLayout::Create(Small(), Mask::AllOnes({2, 3, 64}));
  ASSERT_TRUE(ones.ok());
  EXPECT_EQ(ones->pruned_block_bytes(), ones->full_block_bytes());
  EXPECT_EQ(ones->pruned_v_offset(1, 2), B * 3 * D + 2 * B * D);
}

TEST(LayoutTest, SplitBudgetFormula) {
  auto layout = CacheLayout::Create(Small(), SmallMask());
  ASSERT_TRUE(layout.ok());
  const int64_t fb = layout->full_block_bytes(), pb = layout->pruned_block_bytes();
  const int64_t budget = 1000 * fb + 12345;
  const int64_t target = 1000;
  // Per sequence: ceil(min(1000, 32 + 64 + 15) / 16) + 1 = 8 full, M(1000) / 16 = 56 pruned.
  const int64_t f = 8, p = 56;
  const PoolSizes sizes = SplitBudget(*layout, budget, target);
  const int64_t want_pruned =
      static_cast<int64_t>(static_cast<__int128>(budget) * p / (f * fb + p * pb));
  EXPECT_EQ(sizes.num_pruned_blocks, want_pruned);
  EXPECT_EQ(sizes.num_full_blocks, (budget - want_pruned * pb) / fb);
  EXPECT_LE(sizes.num_full_blocks * fb + sizes.num_pruned_blocks * pb, budget);
  EXPECT_GT(sizes.num_full_blocks * fb + sizes.num_pruned_blocks * pb, budget - fb);
  // Proportions: full / pruned blocks ~ f / p.
  EXPECT_NEAR(static_cast<double>(sizes.num_full_blocks) / sizes.num_pruned_blocks,
              static_cast<double>(f) / p, 0.01);
  // Short targets and dense mode: all full.
  EXPECT_EQ(SplitBudget(*layout, budget, 100).num_pruned_blocks, 0);
  EXPECT_EQ(SplitBudget(*layout, budget, 100).num_full_blocks, budget / fb);
  auto dense = CacheLayout::Create(Small(), std::nullopt);
  ASSERT_TRUE(dense.ok());
  EXPECT_EQ(SplitBudget(*dense, budget, target).num_pruned_blocks, 0);
  EXPECT_EQ(SplitBudget(*dense, budget, target).num_full_blocks, budget / fb);
  EXPECT_EQ(SplitBudget(*dense, 0, target).num_full_blocks, 0);
}

TEST(LayoutTest, SplitBudgetReservesAStepOfPrefillWithinTheBudget) {
  auto layout = CacheLayout::Create(Small(), SmallMask());
  ASSERT_TRUE(layout.ok());
  const int64_t fb = layout->full_block_bytes(), pb = layout->pruned_block_bytes();
  const int64_t budget = 1000 * fb + 12345, target = 1000, step = 512;
  const PoolSizes plain = SplitBudget(*layout, budget, target);
  const PoolSizes reserved = SplitBudget(*layout, budget, target, step);
  // R = ceil(512 / 16) + 1 = 33 full blocks on top of the split of what is left.
  const PoolSizes rest = SplitBudget(*layout, budget - 33 * fb, target);
  EXPECT_EQ(reserved.num_full_blocks, rest.num_full_blocks + 33);
  EXPECT_EQ(reserved.num_pruned_blocks, rest.num_pruned_blocks);
  EXPECT_GT(reserved.num_full_blocks, plain.num_full_blocks);
  // Whatever the budget, the pool never exceeds it (a tiny pool gets a smaller reserve).
  for (int64_t b : {fb, 3 * fb, 10 * fb + 7, 40 * fb, budget}) {
    const PoolSizes s = SplitBudget(*layout, b, target, step);
    EXPECT_LE(s.num_full_blocks * fb + s.num_pruned_blocks * pb, b) << b;
  }
}

}  // namespace
}  // namespace leank::cache
