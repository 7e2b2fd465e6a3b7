// Decode-step CUDA graphs per batch-size bucket (engine/cuda, CudaGraphBatchSize): a
// decode step of n rows replays the graphs of the smallest bucket >= n with the extra
// rows padded. Random prompts of mixed lengths, then decode steps of 1..17 random
// sequences (several sizes inside one bucket and across buckets, each size 3 steps so its
// bucket is captured and replayed), then multi-token steps (no graphs) over every
// sequence: logits of the graphed backend compared with the CPU reference (fp32) and
// with the same CUDA backend with cuda_graphs = false, at the bf16 budget of
// cuda_backend_test.cc (relative L2 error of a logits row <= 2e-2). A padding row that
// wrote into the KV cache would corrupt some sequence's block and show in the later
// steps. Skips without a GPU (except the bucket table test).

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "cache/kv_cache.h"
#include "cache/mask.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/model/dtype.h"
#include "engine/model/weights.h"
#include "tests/device/random_model.h"

namespace leank {
namespace {

constexpr double kLogitTol = 2e-2;  // as cuda_backend_test.cc

bool HasGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}
#define SKIP_WITHOUT_GPU() \
  if (!HasGpu()) GTEST_SKIP() << "no CUDA device"

using testing::MemModel;
using testing::RandomMask;
using testing::RelErr;

// Untied random model (random_model.h).
std::unique_ptr<MemModel> RandomModel(int head_dim, int q_heads, int kv_heads, bool bias,
                                      uint64_t seed) {
  return testing::RandomModel(head_dim, q_heads, kv_heads, bias, /*tied=*/false, seed);
}

// (sequence, new tokens, device-sampled greedily); every row wants logits.
using Work = std::vector<std::tuple<int64_t, std::vector<int32_t>, bool>>;

// One backend with its own cache manager (the same work gives the same AppendPlans).
struct Runner {
  std::unique_ptr<cache::CacheLayout> layout;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<cache::KvCacheManager> manager;

  StepOutput Step(const Work& work) {
    StepPlan plan;
    for (const auto& [seq, tokens, sample] : work) {
      auto ap = manager->Append(seq, static_cast<int64_t>(tokens.size()));
      EXPECT_TRUE(ap.ok()) << ap.status();
      std::optional<DeviceSample> ds;
      if (sample) {
        ds.emplace();
        ds->params.temperature = 0.0f;  // greedy
      }
      plan.seqs.push_back({*ap, tokens, true, ds});
    }
    StepOutput out;
    absl::Status s = backend->Forward(plan, &out);
    EXPECT_TRUE(s.ok()) << s;
    manager->EndStep();
    return out;
  }
};

enum class Kind { kCpu, kCudaGraphs, kCudaNoGraphs };

std::unique_ptr<Runner> MakeRunner(const MemModel& m, const std::optional<cache::Mask>& mask,
                                   Kind kind) {
  auto r = std::make_unique<Runner>();
  cache::LayoutOptions lo;
  lo.num_layers = m.config.num_layers;
  lo.num_kv_heads = m.config.num_kv_heads;
  lo.head_dim = m.config.head_dim;
  lo.block_size = 16;
  lo.sink = 32;
  lo.recent = 64;
  lo.elem_bytes = kind == Kind::kCpu ? 4 : 2;
  auto layout = cache::CacheLayout::Create(lo, mask);
  EXPECT_TRUE(layout.ok()) << layout.status();
  r->layout = std::make_unique<cache::CacheLayout>(*layout);
  const cache::PoolSizes sizes{800, 800};
  absl::StatusOr<std::unique_ptr<Backend>> b;
  if (kind == Kind::kCpu) {
    b = CreateCpuBackend(m.config, m.weights, *r->layout, sizes, CpuBackendOptions{1});
  } else {
    CudaBackendOptions o;
    o.max_batched_tokens = 256;
    o.max_num_seqs = 32;
    o.cuda_graphs = kind == Kind::kCudaGraphs;
    b = CreateCudaBackend(m.config, m.weights, *r->layout, sizes, o);
  }
  EXPECT_TRUE(b.ok()) << b.status();
  if (b.ok()) r->backend = *std::move(b);
  r->manager = std::make_unique<cache::KvCacheManager>(*r->layout, sizes);
  return r;
}

TEST(CudaGraphBuckets, BatchSizeTable) {
  EXPECT_EQ(CudaGraphBatchSize(0), 0);
  EXPECT_EQ(CudaGraphBatchSize(-3), 0);
  EXPECT_EQ(CudaGraphBatchSize(1), 1);
  EXPECT_EQ(CudaGraphBatchSize(2), 2);
  EXPECT_EQ(CudaGraphBatchSize(3), 4);
  for (int n = 5; n <= 8; ++n) EXPECT_EQ(CudaGraphBatchSize(n), 8) << n;
  EXPECT_EQ(CudaGraphBatchSize(9), 16);
  EXPECT_EQ(CudaGraphBatchSize(17), 24);
  EXPECT_EQ(CudaGraphBatchSize(25), 32);
  EXPECT_EQ(CudaGraphBatchSize(33), 48);
  EXPECT_EQ(CudaGraphBatchSize(241), 256);
  EXPECT_EQ(CudaGraphBatchSize(256), 256);
  EXPECT_EQ(CudaGraphBatchSize(257), 0);
  // Every bucket from 32 on is a multiple of 16, and padding stays below 16 rows.
  for (int n = 1; n <= 256; ++n) {
    const int b = CudaGraphBatchSize(n);
    EXPECT_GE(b, n);
    EXPECT_LT(b - n, 16) << n;
    EXPECT_EQ(CudaGraphBatchSize(b), b) << n;
  }
}

struct Errors {
  double vs_cpu = 0, vs_no_graphs = 0;
  int rows = 0;
};

// The scenario of the file comment on one model and mask; returns the worst errors.
Errors RunBuckets(const MemModel& m, bool masked, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::optional<cache::Mask> mask;
  if (masked) mask = RandomMask(m.config, m.config.head_dim == 128 ? 32 : 16, rng);
  auto cpu = MakeRunner(m, mask, Kind::kCpu);
  auto on = MakeRunner(m, mask, Kind::kCudaGraphs);
  auto off = MakeRunner(m, mask, Kind::kCudaNoGraphs);
  Errors e;
  if (!cpu->backend || !on->backend || !off->backend) {
    e.vs_cpu = INFINITY;
    return e;
  }
  const int vocab = m.config.vocab_size;
  auto tok = [&] { return static_cast<int32_t>(rng() % vocab); };

  // Runs one step on the three backends and compares every logits row. In `work`, the
  // sample flag applies to the graphed backend only: its greedy draws must be the
  // argmax of its own logits rows (copied before the sampler, as some rows are not
  // sampled).
  auto step = [&](const Work& work) {
    Work plain = work;
    for (auto& w : plain) std::get<2>(w) = false;
    StepOutput a = cpu->Step(plain), b = on->Step(work), c = off->Step(plain);
    const size_t n = work.size();
    EXPECT_EQ(a.logits.size(), n * vocab);
    EXPECT_EQ(b.logits.size(), n * vocab);
    EXPECT_EQ(c.logits.size(), n * vocab);
    if (a.logits.size() != n * vocab || b.logits.size() != n * vocab ||
        c.logits.size() != n * vocab) {
      e.vs_cpu = INFINITY;
      return;
    }
    for (size_t r = 0; r < n; ++r) {
      e.vs_cpu = std::max(e.vs_cpu, RelErr(b.row(r), a.row(r)));
      e.vs_no_graphs = std::max(e.vs_no_graphs, RelErr(b.row(r), c.row(r)));
      ++e.rows;
      if (std::get<2>(work[r])) {
        EXPECT_EQ(b.sampled.size(), n);
        if (b.sampled.size() != n) continue;
        auto row = b.row(r);
        const int32_t am = std::max_element(row.begin(), row.end()) - row.begin();
        EXPECT_EQ(b.sampled[r].token, am) << "row " << r << " of " << n;
      }
    }
  };

  // Prompts of mixed lengths (some in the LeanK compaction regime: sink 32 + recent 64),
  // one sequence per step (no graphs: multi-token rows).
  constexpr int kSeqs = 17;
  for (int s = 0; s < kSeqs; ++s) {
    std::vector<int32_t> prompt(5 + rng() % 196);
    for (auto& t : prompt) t = tok();
    step({{s, prompt, false}});
  }
  auto stats = [&] {
    auto st = GetCudaGraphStats(on->backend.get());
    EXPECT_TRUE(st.ok()) << st.status();
    return st.ok() ? *st : CudaGraphStats{};
  };
  // A decode step of n rows replays its bucket's graphs unless it is the bucket's first.
  std::vector<int> seen_buckets;
  int64_t expect_replays = 0, expect_padded = 0;
  auto count_graph_step = [&](int n) {
    const int b = CudaGraphBatchSize(n);
    if (std::find(seen_buckets.begin(), seen_buckets.end(), b) == seen_buckets.end()) {
      seen_buckets.push_back(b);
      return;
    }
    ++expect_replays;
    expect_padded += b - n;
  };
  // Decode steps of n random distinct sequences, 3 steps per size; the last step of a
  // size samples every other row (odd ones, so some row keeps its logits) on the device.
  auto decode = [&](int n) {
    for (int rep = 0; rep < 3; ++rep) {
      std::vector<int> ids(kSeqs);
      for (int i = 0; i < kSeqs; ++i) ids[i] = i;
      std::shuffle(ids.begin(), ids.end(), rng);
      Work work;
      for (int i = 0; i < n; ++i) {
        work.emplace_back(ids[i], std::vector<int32_t>{tok()}, rep == 2 && i % 2 == 1);
      }
      step(work);
      count_graph_step(n);
    }
  };
  decode(3);
  EXPECT_EQ(stats().captures, 1);  // bucket 4
  decode(5);
  decode(6);
  decode(7);
  decode(8);
  {
    const CudaGraphStats st = stats();
    EXPECT_EQ(st.captures, 2) << "sizes 5, 6, 7, 8 share the graphs of bucket 8";
    EXPECT_EQ(st.buckets, (std::vector<int>{4, 8}));
  }
  for (int n : {9, 13, 16, 17, 1, 2}) decode(n);
  {
    const CudaGraphStats st = stats();
    EXPECT_EQ(st.captures, 6);
    EXPECT_EQ(st.buckets, (std::vector<int>{1, 2, 4, 8, 16, 24}));
  }
  // Every sequence again, two tokens per step (no graphs): reads every cached block, so
  // a padding row that wrote into the cache shows here. Then graphed steps of all.
  for (int rep = 0; rep < 3; ++rep) {
    Work work;
    for (int s = 0; s < kSeqs; ++s) work.emplace_back(s, std::vector<int32_t>{tok(), tok()}, false);
    step(work);
  }
  for (int rep = 0; rep < 2; ++rep) {
    Work work;
    for (int s = 0; s < kSeqs; ++s) work.emplace_back(s, std::vector<int32_t>{tok()}, false);
    step(work);
    count_graph_step(kSeqs);
  }
  const CudaGraphStats st = stats();
  EXPECT_EQ(st.captures, 6);
  EXPECT_EQ(st.replays, expect_replays);
  EXPECT_EQ(st.padded_rows, expect_padded);
  auto none = GetCudaGraphStats(off->backend.get());
  EXPECT_TRUE(none.ok() && none->captures == 0 && none->replays == 0 && none->buckets.empty());
  std::printf("[ graphs   ] captures %lld replays %lld padded rows %lld buckets",
              (long long)st.captures, (long long)st.replays, (long long)st.padded_rows);
  for (int b : st.buckets) std::printf(" %d", b);
  std::printf("\n");
  return e;
}

TEST(CudaGraphBuckets, PaddedDecodeStepsMatchCpuAndNoGraphs) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int head_dim, q_heads, kv_heads;
    bool bias;
  };
  uint64_t seed = 11;
  for (const Case& k : {Case{128, 8, 2, true}, Case{64, 9, 3, false}}) {
    auto m = RandomModel(k.head_dim, k.q_heads, k.kv_heads, k.bias, seed++);
    for (bool masked : {false, true}) {
      const Errors e = RunBuckets(*m, masked, seed * 101);
      std::printf(
          "[ buckets  ] d%-3d %dq/%dkv %-6s rows %4d  max rel err vs cpu %.2e, vs graphs off "
          "%.2e\n",
          k.head_dim, k.q_heads, k.kv_heads, masked ? "random" : "dense", e.rows, e.vs_cpu,
          e.vs_no_graphs);
      EXPECT_LE(e.vs_cpu, kLogitTol) << "d" << k.head_dim << (masked ? " random" : " dense");
      EXPECT_LE(e.vs_no_graphs, kLogitTol) << "d" << k.head_dim << (masked ? " random" : " dense");
      EXPECT_GT(e.rows, 150);
    }
  }
}

TEST(CudaGraphBuckets, StatsRefuseOtherBackends) {
  auto m = RandomModel(64, 8, 2, false, 3);
  auto cpu = MakeRunner(*m, std::nullopt, Kind::kCpu);
  ASSERT_TRUE(cpu->backend);
  auto st = GetCudaGraphStats(cpu->backend.get());
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace leank
