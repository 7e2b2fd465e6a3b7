// The CPU reference ops (WriteKv, Compact, Attend) on the paged layout against a direct
// implementation of cache/README.md's attention semantics over contiguous K/V arrays,
// with several sequences interleaved in one pool and chunkings that cross every region
// boundary. Also: the all-ones mask (LeanK path) equals dense mode.

#include "cache/reference.h"

#include <cmath>
#include <limits>
#include <map>
#include <random>

#include "gtest/gtest.h"
#include "tests/cache/test_util.h"

namespace leank::cache {
namespace {

constexpr int kLayers = 2, kKvHeads = 2, kHeads = 4, kHeadDim = 64;
constexpr int kSink = 32, kRecent = 64, kBlock = 16;

// Direct semantics, written from the README and nothing else: key j is middle for
// query i when S <= j < S + M(i + 1), M(n) = B * max(0, floor((n - S - W) / B)); middle
// keys use q.k over the kept channels, and a head keeping 0 channels skips them.
// k, v: [n][kKvHeads][kHeadDim]; q: [kHeads][kHeadDim]; out: [kHeads][kHeadDim].
void DirectAttend(const Mask* mask, int layer, int64_t i, const std::vector<float>& k,
                  const std::vector<float>& v, const float* q, float scale, double* out) {
  const int64_t over = i + 1 - kSink - kRecent;
  const int64_t middle = mask == nullptr || over <= 0 ? 0 : kBlock * (over / kBlock);
  const int group = kHeads / kKvHeads;
  for (int qh = 0; qh < kHeads; ++qh) {
    const int h = qh / group;
    std::vector<double> scores;
    std::vector<int64_t> keys;
    for (int64_t j = 0; j <= i; ++j) {
      const bool is_middle = j >= kSink && j < kSink + middle;
      if (is_middle && mask->KeptCount(layer, h) == 0) continue;
      double s = 0;
      for (int c = 0; c < kHeadDim; ++c) {
        const double kc =
            (is_middle && !mask->kept(layer, h, c)) ? 0.0 : k[(j * kKvHeads + h) * kHeadDim + c];
        s += static_cast<double>(q[qh * kHeadDim + c]) * kc;
      }
      scores.push_back(s * scale);
      keys.push_back(j);
    }
    double max_score = -std::numeric_limits<double>::infinity();
    for (double s : scores) max_score = std::max(max_score, s);
    double sum = 0;
    for (double& s : scores) sum += (s = std::exp(s - max_score));
    for (int d = 0; d < kHeadDim; ++d) {
      double acc = 0;
      for (size_t n = 0; n < keys.size(); ++n) {
        acc += scores[n] * v[(keys[n] * kKvHeads + h) * kHeadDim + d];
      }
      out[qh * kHeadDim + d] = acc / sum;
    }
  }
}

// A paged cache with float storage plus, per sequence and layer, the contiguous K/V
// history the direct implementation reads.
class Harness {
 public:
  Harness(std::optional<Mask> mask, PoolSizes sizes) {
    LayoutOptions o;
    o.num_layers = kLayers;
    o.num_kv_heads = kKvHeads;
    o.head_dim = kHeadDim;
    o.block_size = kBlock;
    o.sink = kSink;
    o.recent = kRecent;
    o.elem_bytes = 4;
    auto layout = CacheLayout::Create(o, std::move(mask));
    EXPECT_TRUE(layout.ok()) << layout.status();
    layout_ = std::make_unique<CacheLayout>(*layout);
    manager_ = std::make_unique<KvCacheManager>(*layout_, sizes);
    // NaN everywhere: reading a slot nobody wrote poisons the output and fails the test.
    const float nan = std::numeric_limits<float>::quiet_NaN();
    full_.assign(kLayers * sizes.num_full_blocks * layout_->full_block_elems(), nan);
    int64_t pruned_elems = 0;
    for (int l = 0; l < kLayers; ++l) pruned_elems += layout_->pruned_block_elems(l);
    pruned_.assign(layout_->dense() ? 0 : sizes.num_pruned_blocks * pruned_elems, nan);
    storage_ = {full_.data(), pruned_.data(), manager_->sizes()};
  }

  const CacheLayout& layout() const { return *layout_; }
  KvCacheManager& manager() { return *manager_; }

  // One step: appends chunks[seq] tokens to each sequence, runs every layer, and returns
  // the outputs per sequence [chunk][kHeads][kHeadDim]. Attention runs before Compact on
  // odd steps and after it on even steps (both are allowed by the README).
  std::map<SeqId, std::vector<float>> Step(const std::map<SeqId, int64_t>& chunks,
                                           std::mt19937& rng) {
    std::map<SeqId, std::vector<float>> outputs;
    std::vector<AppendPlan> plans;
    for (const auto& [seq, n] : chunks) {
      auto plan = manager_->Append(seq, n);
      EXPECT_TRUE(plan.ok()) << plan.status();
      plans.push_back(*plan);
    }
    ++step_;
    for (const AppendPlan& plan : plans) {
      const int64_t n = plan.num_new_tokens;
      std::vector<float>& out = outputs[plan.seq];
      out.assign(kLayers * n * kHeads * kHeadDim, 0.0f);
      for (int l = 0; l < kLayers; ++l) {
        const auto k = testing::RandomFloats(n * kKvHeads * kHeadDim, rng);
        const auto v = testing::RandomFloats(n * kKvHeads * kHeadDim, rng);
        const auto q = testing::RandomFloats(n * kHeads * kHeadDim, rng);
        History& hist = history_[{plan.seq, l}];
        hist.k.insert(hist.k.end(), k.begin(), k.end());
        hist.v.insert(hist.v.end(), v.begin(), v.end());
        hist.q.insert(hist.q.end(), q.begin(), q.end());
        float* o = out.data() + l * n * kHeads * kHeadDim;
        WriteKv(*layout_, storage_, l, plan, k.data(), v.data());
        if (step_ % 2 == 0) Compact(*layout_, storage_, l, plan);
        Attend(*layout_, storage_, l, plan, kHeads, kScale, q.data(), o);
        if (step_ % 2 == 1) Compact(*layout_, storage_, l, plan);
      }
    }
    manager_->EndStep();
    return outputs;
  }

  // The direct result for the last `n` tokens of `seq`, laid out like Step's outputs.
  std::vector<double> Direct(SeqId seq, int64_t n) {
    std::vector<double> out(kLayers * n * kHeads * kHeadDim);
    for (int l = 0; l < kLayers; ++l) {
      const History& hist = history_[{seq, l}];
      const int64_t total = static_cast<int64_t>(hist.k.size()) / (kKvHeads * kHeadDim);
      for (int64_t t = 0; t < n; ++t) {
        const int64_t i = total - n + t;
        DirectAttend(layout_->dense() ? nullptr : &*layout_->mask(), l, i, hist.k, hist.v,
                     hist.q.data() + i * kHeads * kHeadDim, kScale,
                     out.data() + (l * n + t) * kHeads * kHeadDim);
      }
    }
    return out;
  }

  void Forget(SeqId seq) {
    manager_->Free(seq);
    for (int l = 0; l < kLayers; ++l) history_.erase({seq, l});
  }

  static constexpr float kScale = 0.125f;  // 1/sqrt(64)

 private:
  struct History {
    std::vector<float> k, v, q;
  };
  std::unique_ptr<CacheLayout> layout_;
  std::unique_ptr<KvCacheManager> manager_;
  std::vector<float> full_, pruned_;
  FloatStorage storage_;
  std::map<std::pair<SeqId, int>, History> history_;
  int step_ = 0;
};

// max |a - b| / max |b|
double RelErr(const std::vector<float>& a, const std::vector<double>& b) {
  double err = 0, ref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i])) return std::numeric_limits<double>::infinity();
    err = std::max(err, std::abs(a[i] - b[i]));
    ref = std::max(ref, std::abs(b[i]));
  }
  return err / ref;
}

// Chunk schedules per sequence; together they cross S - 1, S, S + W, S + W + B +- 1 and
// many blocks, one chunk crosses several boundaries, one sequence decodes token by token.
std::vector<std::vector<int64_t>> Schedules() {
  std::vector<int64_t> decode(230, 1);
  std::vector<int64_t> prefill_then_decode = {120};
  prefill_then_decode.insert(prefill_then_decode.end(), 90, 1);
  return {
      {31, 1, 63, 1, 15, 1, 1, 14, 2, 33, 47, 16, 16, 5},  // 31, 32, 95, 96, 111, 112, 113, ...
      {250, 7, 1, 40},                                     // one chunk over many boundaries
      decode,
      prefill_then_decode,
      {95, 17, 1, 16, 100, 3},  // 95, 112 (= S + W + B), 113, ...
  };
}

// Runs the schedules interleaved (one chunk of every unfinished sequence per step) and
// checks every output against the direct implementation.
void RunAgainstDirect(std::optional<Mask> mask, uint32_t seed) {
  Harness harness(std::move(mask), {200, 200});
  std::mt19937 rng(seed);
  const auto schedules = Schedules();
  std::vector<size_t> next(schedules.size(), 0);
  double worst = 0;
  int64_t checked = 0;
  for (bool more = true; more;) {
    more = false;
    std::map<SeqId, int64_t> chunks;
    for (size_t s = 0; s < schedules.size(); ++s) {
      if (next[s] < schedules[s].size()) chunks[static_cast<SeqId>(s)] = schedules[s][next[s]++];
      more |= next[s] < schedules[s].size();
    }
    if (chunks.empty()) break;
    for (const auto& [seq, out] : harness.Step(chunks, rng)) {
      const double err = RelErr(out, harness.Direct(seq, chunks.at(seq)));
      ASSERT_LE(err, 1e-5) << "sequence " << seq << " at "
                           << harness.manager().blocks(seq).num_tokens << " tokens";
      worst = std::max(worst, err);
      checked += chunks.at(seq);
    }
  }
  EXPECT_TRUE(harness.manager().Validate().ok());
  if (!harness.layout().dense()) {  // the middle was exercised
    EXPECT_GT(harness.manager().blocks(1).pruned_blocks.size(), 5u);
  }
  std::printf("checked %lld tokens, worst relative error %.3g\n", static_cast<long long>(checked),
              worst);
}

TEST(ReferenceTest, RandomMaskMatchesDirect) {
  RunAgainstDirect(testing::RandomMask({kLayers, kKvHeads, kHeadDim}, 16, 21), 1);
}

TEST(ReferenceTest, RandomMaskAlign32MatchesDirect) {
  RunAgainstDirect(testing::RandomMask({kLayers, kKvHeads, kHeadDim}, 32, 22), 2);
}

TEST(ReferenceTest, AllOnesMatchesDirect) {
  RunAgainstDirect(Mask::AllOnes({kLayers, kKvHeads, kHeadDim}), 3);
}

TEST(ReferenceTest, DenseMatchesDirect) { RunAgainstDirect(std::nullopt, 4); }

// (a) The all-ones mask runs the paged LeanK path (pruned blocks, compaction); it must
// equal dense mode on identical inputs.
TEST(ReferenceTest, AllOnesEqualsDense) {
  Harness ones(Mask::AllOnes({kLayers, kKvHeads, kHeadDim}), {200, 200});
  Harness dense(std::nullopt, {200, 200});
  std::mt19937 rng_a(5), rng_b(5);
  const auto schedules = Schedules();
  for (size_t step = 0; step < 12; ++step) {
    std::map<SeqId, int64_t> chunks;
    for (size_t s = 0; s < schedules.size(); ++s) {
      if (step < schedules[s].size()) chunks[static_cast<SeqId>(s)] = schedules[s][step];
    }
    const auto a = ones.Step(chunks, rng_a);
    const auto b = dense.Step(chunks, rng_b);
    for (const auto& [seq, out] : a) {
      const std::vector<float>& other = b.at(seq);
      EXPECT_LE(RelErr(out, std::vector<double>(other.begin(), other.end())), 1e-5)
          << "sequence " << seq << " step " << step;
    }
  }
  EXPECT_GT(ones.manager().blocks(1).pruned_blocks.size(), 0u);
  EXPECT_EQ(dense.manager().free_pruned_blocks(), 0);
}

// Pruning must matter: with a sparse mask the outputs differ from dense ones (so the
// tests above would notice a path that ignores the mask).
TEST(ReferenceTest, SparseMaskChangesOutputs) {
  Harness sparse(testing::RandomMask({kLayers, kKvHeads, kHeadDim}, 16, 21), {200, 200});
  Harness dense(std::nullopt, {200, 200});
  std::mt19937 rng_a(6), rng_b(6);
  const auto a = sparse.Step({{0, 300}}, rng_a);
  const auto b = dense.Step({{0, 300}}, rng_b);
  const auto& x = a.at(0);
  const auto& y = b.at(0);
  EXPECT_GT(RelErr(x, std::vector<double>(y.begin(), y.end())), 1e-2);
}

// Freed blocks are reused by later sequences: stale data must not leak into them.
TEST(ReferenceTest, ReuseAfterFree) {
  Harness harness(testing::RandomMask({kLayers, kKvHeads, kHeadDim}, 16, 23), {40, 40});
  std::mt19937 rng(7);
  for (int round = 0; round < 4; ++round) {
    const SeqId a = 2 * round, b = 2 * round + 1;
    for (int64_t chunk : {100, 37, 1, 1, 60}) {
      const auto out = harness.Step({{a, chunk}, {b, chunk + 3}}, rng);
      ASSERT_LE(RelErr(out.at(a), harness.Direct(a, chunk)), 1e-5) << "round " << round;
      ASSERT_LE(RelErr(out.at(b), harness.Direct(b, chunk + 3)), 1e-5) << "round " << round;
    }
    harness.Forget(a);
    harness.Forget(b);
    harness.manager().EndStep();
  }
  EXPECT_TRUE(harness.manager().Validate().ok());
  EXPECT_EQ(harness.manager().free_full_blocks(), 40);
}

}  // namespace
}  // namespace leank::cache
