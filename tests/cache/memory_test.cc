// Memory figures with LeanK's released Llama-3.1-8B-Instruct mask at Llama-3.1-8B shapes
// (32 layers, 8 kv heads, head_dim 128, bf16): bytes per token and tokens per budget.

#include <cstdio>
#include <filesystem>

#include "cache/kv_cache.h"
#include "gtest/gtest.h"

namespace leank::cache {
namespace {

LayoutOptions Llama8B() {
  LayoutOptions o;
  o.num_layers = 32;
  o.num_kv_heads = 8;
  o.head_dim = 128;
  o.block_size = 16;
  o.sink = 128;
  o.recent = 768;
  o.elem_bytes = 2;  // bf16
  return o;
}

Mask LlamaMask() {
  auto mask = LoadMask(std::filesystem::path(LEANK_TEST_DATA_DIR) / "cache" /
                           "llama3.1-8b-instruct.leank.safetensors",
                       {32, 8, 128});
  EXPECT_TRUE(mask.ok()) << mask.status();
  return *mask;
}

TEST(MemoryTest, BytesPerTokenWithReleasedLlamaMask) {
  auto layout = CacheLayout::Create(Llama8B(), LlamaMask());
  ASSERT_TRUE(layout.ok()) << layout.status();
  const Mask& mask = *layout->mask();
  int64_t kept = 0, live = 0;
  for (int l = 0; l < 32; ++l) {
    for (int h = 0; h < 8; ++h) {
      kept += mask.KeptCount(l, h);
      live += mask.KeptCount(l, h) > 0;
    }
  }
  // K: 31.25% of channels; V: 209 of 256 heads.
  EXPECT_EQ(kept * 2, 20480);
  EXPECT_EQ(kept * 1.0 / (32 * 8 * 128), 0.3125);
  EXPECT_EQ(live, 209);
  const int64_t dense_k = 32 * 8 * 128 * 2, dense_v = dense_k;
  EXPECT_EQ(kept * 2 * 10000 / dense_k, 3125);
  EXPECT_EQ(live * 128 * 2 * 256, 209 * dense_v);

  EXPECT_EQ(layout->full_bytes_per_token(), 131072);   // 4096 B per layer
  EXPECT_EQ(layout->pruned_bytes_per_token(), 73984);  // 2312 B per layer on average
  EXPECT_EQ(layout->pruned_bytes_per_token(), kept * 2 + live * 128 * 2);
  EXPECT_EQ(layout->pruned_bytes_per_token() / 32, 2312);
  EXPECT_EQ(layout->full_block_bytes(), 16 * 131072);
  EXPECT_EQ(layout->pruned_block_bytes(), 16 * 73984);
  std::printf(
      "Llama-3.1-8B, bf16, per token: dense %lld B, LeanK middle %lld B (K %lld + V %lld), "
      "ratio %.4f\n",
      static_cast<long long>(layout->full_bytes_per_token()),
      static_cast<long long>(layout->pruned_bytes_per_token()), static_cast<long long>(kept * 2),
      static_cast<long long>(live * 256), layout->pruned_bytes_per_token() / 131072.0);
}

// Fills the pool with `seq_len`-token sequences the way a server grows them (prefill
// S + W tokens, then chunks of B) until an Append is refused. Returns the tokens held
// then (complete sequences and the refused one's partial tokens).
int64_t TokensThatFit(KvCacheManager& m, int64_t seq_len) {
  int64_t held = 0;
  const int64_t B = m.layout().block_size();
  const int64_t first = m.layout().options().sink + m.layout().options().recent;
  for (SeqId id = 0;; ++id) {
    for (int64_t n = 0; n < seq_len;) {
      const int64_t chunk = n == 0 ? std::min(first, seq_len) : std::min(B, seq_len - n);
      auto plan = m.Append(id, chunk);
      if (!plan.ok()) {
        EXPECT_EQ(plan.status().code(), absl::StatusCode::kResourceExhausted);
        EXPECT_TRUE(m.Validate().ok());
        return held;
      }
      m.EndStep();
      n += chunk;
      held += chunk;
    }
  }
}

TEST(MemoryTest, TokensPerBudgetAt32K) {
  constexpr int64_t kBudget = 40'000'000'000;  // 40 GB
  constexpr int64_t kSeqLen = 32768;
  auto leank = CacheLayout::Create(Llama8B(), LlamaMask());
  auto dense = CacheLayout::Create(Llama8B(), std::nullopt);
  ASSERT_TRUE(leank.ok() && dense.ok());
  const PoolSizes leank_sizes = SplitBudget(*leank, kBudget, kSeqLen);
  const PoolSizes dense_sizes = SplitBudget(*dense, kBudget, kSeqLen);
  EXPECT_LE(leank_sizes.num_full_blocks * leank->full_block_bytes() +
                leank_sizes.num_pruned_blocks * leank->pruned_block_bytes(),
            kBudget);
  KvCacheManager leank_m(*leank, leank_sizes);
  KvCacheManager dense_m(*dense, dense_sizes);
  const double leank_capacity = leank_m.TokenCapacity(), dense_capacity = dense_m.TokenCapacity();
  const int64_t leank_tokens = TokensThatFit(leank_m, kSeqLen);
  const int64_t dense_tokens = TokensThatFit(dense_m, kSeqLen);
  const int64_t leank_seqs = leank_tokens / kSeqLen, dense_seqs = dense_tokens / kSeqLen;
  // Bytes one 32K sequence holds: dense 2048 full blocks; LeanK ceil((S + W + B - 1) / B)
  // = 57 full blocks (+1 in growth) and M(32768) / B = 1992 pruned blocks.
  const double dense_seq_bytes = 2048.0 * dense->full_block_bytes();
  const double leank_seq_bytes =
      57.0 * leank->full_block_bytes() + 1992.0 * leank->pruned_block_bytes();
  std::printf(
      "budget 40 GB, 32K-token sequences: dense %lld full blocks -> %lld tokens, %lld "
      "complete sequences; LeanK %lld full + %lld pruned blocks -> %lld tokens (%.3fx), "
      "%lld sequences (%.2fx); bytes per sequence %.4g vs %.4g (%.3fx); one-sequence "
      "capacity of the empty pools %.0f vs %.0f tokens\n",
      static_cast<long long>(dense_sizes.num_full_blocks), static_cast<long long>(dense_tokens),
      static_cast<long long>(dense_seqs), static_cast<long long>(leank_sizes.num_full_blocks),
      static_cast<long long>(leank_sizes.num_pruned_blocks), static_cast<long long>(leank_tokens),
      static_cast<double>(leank_tokens) / dense_tokens, static_cast<long long>(leank_seqs),
      static_cast<double>(leank_seqs) / dense_seqs, dense_seq_bytes, leank_seq_bytes,
      dense_seq_bytes / leank_seq_bytes, dense_capacity, leank_capacity);
  EXPECT_EQ(dense_seqs, kBudget / static_cast<int64_t>(dense_seq_bytes));
  EXPECT_EQ(dense_tokens, kBudget / dense->full_block_bytes() * 16);
  EXPECT_GE(static_cast<double>(leank_tokens) / dense_tokens, 1.7);
  EXPECT_GE(static_cast<double>(leank_seqs) / dense_seqs, 1.7);
  EXPECT_GE(dense_seq_bytes / leank_seq_bytes, 1.7);
}

}  // namespace
}  // namespace leank::cache
