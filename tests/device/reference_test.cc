// The CUDA kernels against the team's CPU reference (cache/reference.h) over real
// KvCacheManager steps: chunked prefill, then decode steps that cross compaction
// boundaries. Each step: the CPU writes K/V (float storage of bf16-representable values),
// the full pool is mirrored to the GPU, the GPU compacts (LaunchCompact) into its own
// pruned pool, which must equal the CPU's bit for bit, and the GPU attention (prefill or
// batched decode) must match cache::Attend at a bf16 budget.

#include "cache/reference.h"

#include <optional>

#include "cache/kv_cache.h"
#include "tests/cache/test_util.h"
#include "tests/device/paged_fixture.h"

namespace leank::kernels::testing {
namespace {

struct RefCase {
  int head_dim, block_size;
  bool dense;
};

class ReferenceTest : public ::testing::TestWithParam<RefCase> {};

TEST_P(ReferenceTest, StepsMatchCacheReference) {
  SKIP_WITHOUT_GPU();
  const RefCase rc = GetParam();
  const int L = 2, H = 4, G = 4, D = rc.head_dim, B = rc.block_size, S = 2 * B, W = 4 * B;
  std::mt19937 rng(static_cast<uint32_t>(TestSeed() + D + B + rc.dense));
  cache::LayoutOptions lo{L, H, D, B, S, W, 4};
  std::optional<cache::Mask> mask;
  MaskChannels channels;
  if (!rc.dense) {
    mask = cache::testing::RandomMask({L, H, D}, 16, static_cast<uint32_t>(rng()));
    channels.resize(L, std::vector<std::vector<int>>(H));
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < H; ++h) channels[l][h] = mask->KeptChannels(l, h);
  }
  auto layout = cache::CacheLayout::Create(lo, mask);
  ASSERT_TRUE(layout.ok()) << layout.status();
  AttentionShape shape{L, H, H * G, D, B, S, W};
  auto meta = DeviceMeta::Create(shape, channels);
  ASSERT_TRUE(meta.ok()) << meta.status();
  const cache::PoolSizes sizes{160, 160};
  for (int l = 0; l < L && !rc.dense; ++l) {  // one layout, two implementations of it
    ASSERT_EQ(meta->pruned_block_elems(l), layout->pruned_block_elems(l));
    ASSERT_EQ(meta->pruned_layer_base(l, sizes.num_pruned_blocks),
              layout->pruned_layer_base(l, sizes.num_pruned_blocks));
    for (int h = 0; h < H; ++h) {
      if (layout->kept(l, h) == 0) continue;
      ASSERT_EQ(meta->pruned_k_offset(l, h), layout->pruned_k_offset(l, h));
      ASSERT_EQ(meta->pruned_v_offset(l, h), layout->pruned_v_offset(l, h));
    }
  }
  cache::KvCacheManager mgr(*layout, sizes);
  const int64_t fbe = layout->full_block_elems();
  std::vector<float> full(size_t(L) * sizes.num_full_blocks * fbe, 0.f);
  int64_t pruned_elems = 0;
  for (int l = 0; l < L && !rc.dense; ++l)
    pruned_elems += sizes.num_pruned_blocks * layout->pruned_block_elems(l);
  std::vector<float> pruned(std::max<int64_t>(pruned_elems, 1), 0.f);
  cache::FloatStorage st{full.data(), rc.dense ? nullptr : pruned.data(), sizes};
  DeviceBuffer<__nv_bfloat16> d_full(full.size()), d_pruned(pruned.size());
  CUDA_OK(cudaMemset(d_pruned.ptr, 0, d_pruned.n * 2));
  const float scale = 1.0f / std::sqrt(float(D));
  auto bf = [](const std::vector<float>& v) {
    std::vector<__nv_bfloat16> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = __float2bfloat16(v[i]);
    return o;
  };
  auto rnd = [&](size_t n) {
    auto v = cache::testing::RandomFloats(n, rng);
    for (float& x : v) x = Bf16Round(x);
    return v;
  };
  DecodeAttention decode(*meta);
  PrefillAttention prefill(*meta);
  // Steps: {seq, new tokens}. Prefill chunks first, then decode steps of all 3 sequences.
  std::vector<std::vector<std::pair<int, int>>> steps = {{{0, 3 * B + 5}, {1, 7}},
                                                         {{0, 2 * B + 3}, {2, S + W + 2 * B + 1}}};
  for (int i = 0; i < 3 * B + 3; ++i) steps.push_back({{0, 1}, {1, 1}, {2, 1}});
  steps.push_back({{0, 2 * B + 7}});  // a prefill chunk over pruned blocks (middle_before > 0)
  int checked = 0;
  for (size_t si = 0; si < steps.size(); ++si) {
    std::vector<cache::AppendPlan> plans;
    for (auto [seq, n] : steps[si]) {
      auto plan = mgr.Append(seq, n);
      ASSERT_TRUE(plan.ok()) << plan.status();
      plans.push_back(*plan);
    }
    // CPU: write, compact, attend; q per plan.
    std::vector<std::vector<float>> qs(plans.size()), refs(plans.size() * L);
    for (int l = 0; l < L; ++l) {
      for (size_t p = 0; p < plans.size(); ++p) {
        const int64_t n = plans[p].num_new_tokens;
        auto k = rnd(size_t(n) * H * D), v = rnd(size_t(n) * H * D);
        cache::WriteKv(*layout, st, l, plans[p], k.data(), v.data());
      }
    }
    d_full.Upload(bf(full));  // the GPU sees the same full blocks
    std::vector<CompactJob> jobs;
    for (size_t p = 0; p < plans.size(); ++p) {
      for (int l = 0; l < L; ++l) {
        cache::Compact(*layout, st, l, plans[p]);
        if (l == 0) qs[p] = rnd(size_t(plans[p].num_new_tokens) * H * G * D);
        refs[p * L + l].resize(qs[p].size());
        cache::Attend(*layout, st, l, plans[p], H * G, scale, qs[p].data(), refs[p * L + l].data());
      }
      const int nc = plans[p].num_compactions();
      for (int i = 0; i < nc; ++i)
        jobs.push_back({plans[p].full_blocks[S / B + i],
                        plans[p].pruned_blocks[plans[p].middle_before / B + i]});
    }
    if (!jobs.empty()) {
      DeviceBuffer<CompactJob> d_jobs(jobs.size());
      d_jobs.Upload(jobs);
      LaunchCompact(*meta, 0, L, d_full.ptr, sizes.num_full_blocks, d_pruned.ptr,
                    sizes.num_pruned_blocks, d_jobs.ptr, static_cast<int>(jobs.size()), nullptr);
      CUDA_OK(cudaDeviceSynchronize());
      const auto gpu_pruned = d_pruned.Download();
      for (const CompactJob& j : jobs)
        for (int l = 0; l < L; ++l) {
          const int64_t base = layout->pruned_layer_base(l, sizes.num_pruned_blocks) +
                               j.dst_pruned_block * layout->pruned_block_elems(l);
          for (int64_t e = 0; e < layout->pruned_block_elems(l); ++e)
            ASSERT_EQ(__bfloat162float(gpu_pruned[base + e]), pruned[base + e])
                << "step " << si << " layer " << l << " pruned block " << j.dst_pruned_block;
        }
    }
    // GPU attention: decode steps batched, prefill chunks through PrefillAttention.
    const bool is_decode = plans[0].num_new_tokens == 1 && plans.size() == 3 && si >= 2;
    std::vector<std::vector<int32_t>> full_after;
    std::vector<SeqView> views;
    std::vector<PrefillSeq> pseqs;
    std::vector<float> q_all;
    for (size_t p = 0; p < plans.size(); ++p) {
      q_all.insert(q_all.end(), qs[p].begin(), qs[p].end());
      full_after.push_back(
          DecodeFullBlocksAfterCompaction(shape, plans[p].full_blocks, plans[p].num_compactions()));
    }
    for (size_t p = 0; p < plans.size(); ++p) {
      views.push_back({plans[p].start_pos + 1, full_after[p], plans[p].pruned_blocks});
      pseqs.push_back({plans[p].start_pos, plans[p].num_new_tokens, plans[p].full_blocks,
                       plans[p].pruned_blocks});
    }
    if (is_decode) {
      auto s = decode.Plan(views, nullptr);
      ASSERT_TRUE(s.ok()) << s;
    } else {
      auto s = prefill.Plan(pseqs, nullptr);
      ASSERT_TRUE(s.ok()) << s;
    }
    DeviceBuffer<__nv_bfloat16> d_q(q_all.size()), d_out(q_all.size());
    d_q.Upload(bf(q_all));
    for (int l = 0; l < L; ++l) {
      CUDA_OK(cudaMemset(d_out.ptr, 0xff, d_out.n * 2));
      const __nv_bfloat16* fl = d_full.ptr + size_t(l) * sizes.num_full_blocks * fbe;
      const __nv_bfloat16* pl =
          d_pruned.ptr + (rc.dense ? 0 : layout->pruned_layer_base(l, sizes.num_pruned_blocks));
      if (is_decode)
        decode.Run(l, d_q.ptr, fl, pl, scale, d_out.ptr, nullptr);
      else
        prefill.Run(l, d_q.ptr, fl, pl, scale, d_out.ptr, nullptr);
      CUDA_OK(cudaDeviceSynchronize());
      const auto out = d_out.Download();
      size_t row = 0;
      for (size_t p = 0; p < plans.size(); ++p) {
        for (int64_t t = 0; t < plans[p].num_new_tokens; ++t, ++row) {
          std::vector<double> ref(refs[p * L + l].begin() + t * H * G * D,
                                  refs[p * L + l].begin() + (t + 1) * H * G * D);
          ASSERT_LT(RelError(out, row * H * G * D, ref), 1.5e-2)
              << "step " << si << " layer " << l << " seq " << steps[si][p].first << " pos "
              << plans[p].start_pos + t << (is_decode ? " decode" : " prefill");
          ++checked;
        }
      }
    }
    mgr.EndStep();
  }
  EXPECT_GT(checked, 300);
}

INSTANTIATE_TEST_SUITE_P(Kernels, ReferenceTest,
                         ::testing::Values(RefCase{128, 16, false}, RefCase{64, 32, false},
                                           RefCase{128, 16, true}),
                         [](const auto& info) {
                           return std::string(info.param.dense ? "dense" : "mask") + "_d" +
                                  std::to_string(info.param.head_dim) + "_b" +
                                  std::to_string(info.param.block_size);
                         });

}  // namespace
}  // namespace leank::kernels::testing
