// Chunked-prefill attention against the float64 reference (per-query middle boundary).

#include <string>

#include "tests/device/paged_fixture.h"

namespace leank::kernels::testing {
namespace {

struct PrefillCase {
  std::string name;
  int head_dim, block_size, group;
  int mode;  // 0 dense, 1 random mask, 2 all-ones mask
};

struct Chunk {
  int64_t start, count;
};

class PrefillTest : public ::testing::TestWithParam<PrefillCase> {};

TEST_P(PrefillTest, MatchesReference) {
  SKIP_WITHOUT_GPU();
  const PrefillCase& c = GetParam();
  std::mt19937_64 rng(TestSeed() ^ std::hash<std::string>()(c.name));
  const int B = c.block_size, S = B == 64 ? 64 : 32, W = B == 64 ? 128 : 64, D = c.head_dim;
  AttentionShape shape{2, 4, 4 * c.group, D, B, S, W};
  MaskChannels mask;
  if (c.mode == 1) mask = RandomMask(shape, rng);
  if (c.mode == 2) mask = AllOnesMask(shape);
  auto meta = DeviceMeta::Create(shape, mask);
  ASSERT_TRUE(meta.ok()) << meta.status();
  // A first chunk crossing every boundary, a later chunk over pruned blocks, a 1-token
  // chunk, and a chunk starting inside the sink.
  std::vector<Chunk> chunks = {{0, 300 + int64_t(rng() % 50)},
                               {S + W + 3 * B + 5, 130},
                               {S + W + 7 * B + int64_t(rng() % B), 1},
                               {5, 70}};
  const int H = shape.num_kv_heads, Hq = shape.num_q_heads;
  std::vector<SeqData> seqs;
  std::vector<int64_t> storage_middle;
  for (const Chunk& ch : chunks) {
    SeqData sd;
    sd.n = ch.start + ch.count;
    sd.k = RandomVec(size_t(sd.n) * H * D, rng, 1.0f);
    sd.v = RandomVec(size_t(sd.n) * H * D, rng, 1.0f);
    sd.q = RandomVec(size_t(ch.count) * Hq * D, rng, 1.5f);
    seqs.push_back(std::move(sd));
    storage_middle.push_back(MiddleTokens(shape, meta->dense(), ch.start));
  }
  PagedPools pools =
      BuildPools(*meta, mask, seqs, storage_middle, std::vector<int>(seqs.size(), 0), rng);
  DeviceBuffer<__nv_bfloat16> d_full(pools.full.size()), d_pruned(pools.pruned.size());
  d_full.Upload(pools.full);
  d_pruned.Upload(pools.pruned);
  std::vector<PrefillSeq> ps;
  std::vector<__nv_bfloat16> q;
  for (size_t i = 0; i < chunks.size(); ++i) {
    ps.push_back({chunks[i].start, chunks[i].count, pools.full_tables[i], pools.pruned_tables[i]});
    for (float x : seqs[i].q) q.push_back(__float2bfloat16(x));
  }
  DeviceBuffer<__nv_bfloat16> d_q(q.size()), d_out(q.size());
  d_q.Upload(q);
  PrefillAttention attn(*meta);
  auto st = attn.Plan(ps, nullptr);
  ASSERT_TRUE(st.ok()) << st;
  const float scale = 1.0f / std::sqrt(float(D));
  for (int layer = 0; layer < shape.num_layers; ++layer) {
    CUDA_OK(cudaMemset(d_out.ptr, 0xff, d_out.n * sizeof(__nv_bfloat16)));
    attn.Run(layer, d_q.ptr, d_full.ptr + size_t(layer) * pools.num_full * meta->full_block_elems(),
             d_pruned.ptr + meta->pruned_layer_base(layer, pools.num_pruned), scale, d_out.ptr,
             nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    auto out = d_out.Download();
    size_t row = 0;
    double worst = 0.0;
    for (size_t i = 0; i < chunks.size(); ++i) {
      for (int64_t t = 0; t < chunks[i].count; ++t, ++row) {
        auto ref = ReferenceAttend(shape, mask, layer, seqs[i], chunks[i].start + t,
                                   &seqs[i].q[size_t(t) * Hq * D], scale);
        const double err = RelError(out, row * Hq * D, ref);
        worst = std::max(worst, err);
        ASSERT_LT(err, 1.5e-2) << c.name << " layer " << layer << " chunk " << i << " query "
                               << chunks[i].start + t;
      }
    }
    std::printf("[ info     ] %s layer %d: worst relative error %.2e\n", c.name.c_str(), layer,
                worst);
  }
}

std::vector<PrefillCase> Cases() {
  std::vector<PrefillCase> v;
  const char* names[] = {"dense", "random", "allones"};
  for (int d : {64, 128})
    for (int b : {16, 64})
      for (int m = 0; m < 3; ++m)
        v.push_back({std::string(names[m]) + "_d" + std::to_string(d) + "_b" + std::to_string(b), d,
                     b, 4, m});
  v.push_back({"random_d128_b32_group7", 128, 32, 7, 1});
  v.push_back({"random_d64_b16_group1", 64, 16, 1, 1});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Kernels, PrefillTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace leank::kernels::testing
