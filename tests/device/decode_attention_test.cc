// Decode attention and compaction kernels against the float64 reference of the
// cache/README.md semantics (paged_fixture.h), at a bf16 budget.

#include <string>

#include "tests/device/paged_fixture.h"

namespace leank::kernels::testing {
namespace {

enum class MaskMode { kDense, kRandom, kAllOnes };

struct DecodeCase {
  std::string name;
  int head_dim, block_size, group, sink, recent;
  MaskMode mode;
  std::vector<int64_t> lengths;  // empty: boundary lengths derived from S, W, B
  int target_ctas = 0;           // 0: the plan's default
};

constexpr double kTol = 1.5e-2;  // relative L2 error of bf16 outputs (P rounded to bf16)

std::vector<int64_t> BoundaryLengths(int S, int W, int B, std::mt19937_64& rng) {
  std::vector<int64_t> v = {1,
                            2,
                            17,
                            S - 1,
                            S,
                            S + 1,
                            S + W - 1,
                            S + W,
                            S + W + 1,
                            S + W + B - 1,
                            S + W + B,
                            S + W + B + 1,
                            S + W + 3 * B + 5};
  for (int i = 0; i < 3; ++i) v.push_back(S + W + 1 + static_cast<int64_t>(rng() % 1500));
  v.erase(std::remove_if(v.begin(), v.end(), [](int64_t n) { return n < 1; }), v.end());
  return v;
}

struct Problem {
  AttentionShape shape;
  MaskChannels mask;
  std::vector<SeqData> seqs;
};

Problem MakeProblem(const DecodeCase& c, std::mt19937_64& rng) {
  Problem p;
  p.shape = AttentionShape{2, 4, 4 * c.group, c.head_dim, c.block_size, c.sink, c.recent};
  if (c.mode == MaskMode::kRandom) p.mask = RandomMask(p.shape, rng);
  if (c.mode == MaskMode::kAllOnes) p.mask = AllOnesMask(p.shape);
  auto lengths =
      c.lengths.empty() ? BoundaryLengths(c.sink, c.recent, c.block_size, rng) : c.lengths;
  const int H = p.shape.num_kv_heads, D = c.head_dim;
  for (int64_t n : lengths) {
    SeqData sd;
    sd.n = n;
    sd.k = RandomVec(size_t(n) * H * D, rng, 1.0f);
    sd.v = RandomVec(size_t(n) * H * D, rng, 1.0f);
    sd.q = RandomVec(size_t(p.shape.num_q_heads) * D, rng, 1.5f);
    p.seqs.push_back(std::move(sd));
  }
  return p;
}

class DecodeTest : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(DecodeTest, MatchesReference) {
  SKIP_WITHOUT_GPU();
  const DecodeCase& c = GetParam();
  std::mt19937_64 rng(TestSeed() ^ std::hash<std::string>()(c.name));
  Problem pb = MakeProblem(c, rng);
  auto meta = DeviceMeta::Create(pb.shape, pb.mask);
  ASSERT_TRUE(meta.ok()) << meta.status();
  const int L = pb.shape.num_layers, Hq = pb.shape.num_q_heads, D = c.head_dim;
  std::vector<int64_t> middle;
  for (const auto& s : pb.seqs) middle.push_back(MiddleTokens(pb.shape, meta->dense(), s.n));
  PagedPools pools =
      BuildPools(*meta, pb.mask, pb.seqs, middle, std::vector<int>(pb.seqs.size(), 0), rng);
  DeviceBuffer<__nv_bfloat16> d_full(pools.full.size()), d_pruned(pools.pruned.size());
  d_full.Upload(pools.full);
  d_pruned.Upload(pools.pruned);
  std::vector<SeqView> views;
  std::vector<__nv_bfloat16> q;
  for (size_t i = 0; i < pb.seqs.size(); ++i) {
    views.push_back({pb.seqs[i].n, pools.full_tables[i], pools.pruned_tables[i]});
    for (float x : pb.seqs[i].q) q.push_back(__float2bfloat16(x));
  }
  DeviceBuffer<__nv_bfloat16> d_q(q.size()), d_out(q.size());
  d_q.Upload(q);
  DecodeAttention attn(*meta);
  ASSERT_TRUE(attn.Plan(views, nullptr, c.target_ctas).ok());
  const float scale = 1.0f / std::sqrt(float(D));
  // Both load paths (TMA whole-block boxes, per-thread cp.async) on the same plan.
  for (DecodeLoads loads : {DecodeLoads::kTma, DecodeLoads::kCpAsync}) {
    SetDecodeLoads(loads);
    const char* path = loads == DecodeLoads::kTma ? "tma" : "cpasync";
    const int64_t tma_before = attn.tma_launches();
    for (int layer = 0; layer < L; ++layer) {
      CUDA_OK(cudaMemset(d_out.ptr, 0xff, d_out.n * sizeof(__nv_bfloat16)));  // NaN poison
      const __nv_bfloat16* full =
          d_full.ptr + size_t(layer) * pools.num_full * meta->full_block_elems();
      const __nv_bfloat16* pruned = d_pruned.ptr + meta->pruned_layer_base(layer, pools.num_pruned);
      attn.Run(layer, d_q.ptr, full, pruned, scale, d_out.ptr, nullptr);
      CUDA_OK(cudaDeviceSynchronize());
      auto out = d_out.Download();
      for (size_t i = 0; i < pb.seqs.size(); ++i) {
        auto ref = ReferenceAttend(pb.shape, pb.mask, layer, pb.seqs[i], pb.seqs[i].n - 1,
                                   pb.seqs[i].q.data(), scale);
        const double err = RelError(out, i * Hq * D, ref);
        EXPECT_LT(err, kTol) << c.name << " " << path << " layer " << layer << " seq " << i
                             << " n=" << pb.seqs[i].n << " items=" << attn.num_items(layer);
      }
    }
    // The TMA path must really run (the shapes here have 4 kv heads), not fall back.
    EXPECT_EQ(attn.tma_launches() - tma_before, loads == DecodeLoads::kTma ? L : 0) << path;
  }
  SetDecodeLoads(DecodeLoads::kTma);
}

std::vector<DecodeCase> Cases() {
  std::vector<DecodeCase> v;
  for (int d : {64, 128}) {
    for (int b : {16, 32, 64}) {
      const int S = b == 64 ? 64 : 32, W = b == 64 ? 128 : 64;
      for (MaskMode m : {MaskMode::kDense, MaskMode::kRandom, MaskMode::kAllOnes}) {
        const char* mn = m == MaskMode::kDense    ? "dense"
                         : m == MaskMode::kRandom ? "random"
                                                  : "allones";
        v.push_back({std::string(mn) + "_d" + std::to_string(d) + "_b" + std::to_string(b),
                     d,
                     b,
                     4,
                     S,
                     W,
                     m,
                     {},
                     0});
      }
    }
  }
  // Group sizes, split extremes (one CTA per segment / many small splits), real S and W.
  v.push_back({"group8_random", 128, 16, 8, 32, 64, MaskMode::kRandom, {}, 0});
  v.push_back({"group1_random", 64, 16, 1, 32, 64, MaskMode::kRandom, {}, 0});
  v.push_back({"nosplit_random", 128, 16, 4, 32, 64, MaskMode::kRandom, {}, 1});
  v.push_back({"manysplits_random", 128, 32, 4, 32, 64, MaskMode::kRandom, {}, 4000});
  v.push_back({"llama_sw_random", 128, 16, 4, 128, 768, MaskMode::kRandom, {900, 2000, 4097}, 0});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Kernels, DecodeTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return info.param.name; });

// A decode step that crosses a block boundary: LaunchCompact moves the oldest recent
// block of every sequence (all layers, one launch), then decode over the new layout.
TEST(CompactTest, CompactsThenDecodes) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(TestSeed() + 7);
  for (int d : {64, 128}) {
    for (int b : {16, 64}) {
      const int S = b, W = 2 * b;
      DecodeCase c{"compact", d, b, 4, S, W, MaskMode::kRandom, {}, 0};
      for (int x : {1, 2, 5, 9}) c.lengths.push_back(S + W + int64_t(b) * x);
      Problem pb = MakeProblem(c, rng);
      auto meta = DeviceMeta::Create(pb.shape, pb.mask);
      ASSERT_TRUE(meta.ok()) << meta.status();
      const int L = pb.shape.num_layers, H = pb.shape.num_kv_heads, Hq = pb.shape.num_q_heads;
      std::vector<int64_t> before;
      for (const auto& s : pb.seqs) {
        before.push_back(MiddleTokens(pb.shape, false, s.n - 1));
        ASSERT_EQ(MiddleTokens(pb.shape, false, s.n), before.back() + b);
      }
      PagedPools pools =
          BuildPools(*meta, pb.mask, pb.seqs, before, std::vector<int>(pb.seqs.size(), 1), rng);
      DeviceBuffer<__nv_bfloat16> d_full(pools.full.size()), d_pruned(pools.pruned.size());
      d_full.Upload(pools.full);
      d_pruned.Upload(pools.pruned);
      std::vector<CompactJob> jobs;
      for (size_t i = 0; i < pb.seqs.size(); ++i)
        jobs.push_back({pools.full_tables[i][S / b], pools.pruned_tables[i][before[i] / b]});
      DeviceBuffer<CompactJob> d_jobs(jobs.size());
      d_jobs.Upload(jobs);
      LaunchCompact(*meta, 0, L, d_full.ptr, pools.num_full, d_pruned.ptr, pools.num_pruned,
                    d_jobs.ptr, static_cast<int>(jobs.size()), nullptr);
      CUDA_OK(cudaDeviceSynchronize());
      // Every compacted value lands where cache/README.md says.
      auto pruned = d_pruned.Download();
      for (size_t i = 0; i < pb.seqs.size(); ++i) {
        for (int l = 0; l < L; ++l) {
          const __nv_bfloat16* blk =
              &pruned[meta->pruned_layer_base(l, pools.num_pruned) +
                      jobs[i].dst_pruned_block * meta->pruned_block_elems(l)];
          for (int h = 0; h < H; ++h) {
            const int kept = meta->kept(l, h);
            for (int slot = 0; slot < b && kept > 0; ++slot) {
              const int64_t pos = S + before[i] + slot;
              for (int j = 0; j < kept; ++j)
                ASSERT_EQ(__bfloat162float(blk[meta->pruned_k_offset(l, h) + slot * kept + j]),
                          pb.seqs[i].k[(pos * H + h) * d + pb.mask[l][h][j]]);
              for (int ch = 0; ch < d; ++ch)
                ASSERT_EQ(__bfloat162float(blk[meta->pruned_v_offset(l, h) + slot * d + ch]),
                          pb.seqs[i].v[(pos * H + h) * d + ch]);
            }
          }
        }
      }
      // Decode over the compacted layout.
      std::vector<std::vector<int32_t>> full_after;
      std::vector<SeqView> views;
      std::vector<__nv_bfloat16> q;
      for (size_t i = 0; i < pb.seqs.size(); ++i)
        full_after.push_back(DecodeFullBlocksAfterCompaction(pb.shape, pools.full_tables[i], 1));
      for (size_t i = 0; i < pb.seqs.size(); ++i) {
        views.push_back({pb.seqs[i].n, full_after[i], pools.pruned_tables[i]});
        for (float x : pb.seqs[i].q) q.push_back(__float2bfloat16(x));
      }
      DeviceBuffer<__nv_bfloat16> d_q(q.size()), d_out(q.size());
      d_q.Upload(q);
      DecodeAttention attn(*meta);
      ASSERT_TRUE(attn.Plan(views, nullptr).ok());
      const float scale = 1.0f / std::sqrt(float(d));
      for (int layer = 0; layer < L; ++layer) {
        CUDA_OK(cudaMemset(d_out.ptr, 0xff, d_out.n * sizeof(__nv_bfloat16)));
        attn.Run(layer, d_q.ptr,
                 d_full.ptr + size_t(layer) * pools.num_full * meta->full_block_elems(),
                 d_pruned.ptr + meta->pruned_layer_base(layer, pools.num_pruned), scale, d_out.ptr,
                 nullptr);
        CUDA_OK(cudaDeviceSynchronize());
        auto out = d_out.Download();
        for (size_t i = 0; i < pb.seqs.size(); ++i) {
          auto ref = ReferenceAttend(pb.shape, pb.mask, layer, pb.seqs[i], pb.seqs[i].n - 1,
                                     pb.seqs[i].q.data(), scale);
          EXPECT_LT(RelError(out, i * Hq * d, ref), kTol)
              << "d" << d << " b" << b << " layer " << layer << " seq " << i;
        }
      }
    }
  }
}

TEST(DecodePlanTest, RejectsWrongTables) {
  SKIP_WITHOUT_GPU();
  AttentionShape s{1, 2, 8, 128, 16, 32, 64};
  auto meta = DeviceMeta::Create(s, {});
  ASSERT_TRUE(meta.ok());
  DecodeAttention attn(*meta);
  std::vector<int32_t> blocks = {0, 1};
  std::vector<SeqView> views = {{100, blocks, {}}};  // 100 tokens need 7 blocks
  EXPECT_FALSE(attn.Plan(views, nullptr).ok());
}

}  // namespace
}  // namespace leank::kernels::testing
