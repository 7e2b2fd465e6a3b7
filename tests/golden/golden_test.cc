// Golden tests: the CPU reference backend against transformers' logits on tiny
// random models (tests/data/golden, made by tests/golden/make_fixtures.py).

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cache/kv_cache.h"
#include "engine/core/backend.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/model/safetensors.h"
#include "engine/model/weights.h"
#include "engine/sampling/sampler.h"
#include "gtest/gtest.h"

namespace leank {
namespace {

namespace fs = std::filesystem;

struct Expected {
  std::vector<int32_t> prompt_ids;   // [64]
  std::vector<int32_t> greedy_ids;   // [16]
  std::vector<float> logits;         // [17][vocab]: last prompt position, then each decode step
  std::vector<float> prompt_logits;  // [64][vocab]
};

template <typename T>
std::vector<T> AsVector(const RawTensor& t) {
  std::vector<T> v(t.bytes.size() / sizeof(T));
  std::memcpy(v.data(), t.bytes.data(), t.bytes.size());
  return v;
}

Expected LoadExpected(const fs::path& dir) {
  auto raw = ReadSafetensorsRaw(dir / "expected.safetensors");
  EXPECT_TRUE(raw.ok()) << raw.status();
  Expected e;
  for (const RawTensor& t : raw->tensors) {
    if (t.name == "prompt_ids") e.prompt_ids = AsVector<int32_t>(t);
    if (t.name == "greedy_ids") e.greedy_ids = AsVector<int32_t>(t);
    if (t.name == "logits") e.logits = AsVector<float>(t);
    if (t.name == "prompt_logits") e.prompt_logits = AsVector<float>(t);
  }
  return e;
}

double RelError(std::span<const float> got, std::span<const float> want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
    den += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(num / den);
}

// A backend + cache manager for one model and one cache layout.
class Runner {
 public:
  Runner(const LoadedModel& model, std::optional<cache::Mask> mask, int sink, int recent,
         CpuBackendOptions options = {.num_threads = 2}) {
    cache::LayoutOptions lo;
    lo.num_layers = model.config.num_layers;
    lo.num_kv_heads = model.config.num_kv_heads;
    lo.head_dim = model.config.head_dim;
    lo.block_size = 16;
    lo.sink = sink;
    lo.recent = recent;
    lo.elem_bytes = 4;
    auto layout = cache::CacheLayout::Create(lo, std::move(mask));
    EXPECT_TRUE(layout.ok()) << layout.status();
    layout_ = std::make_unique<cache::CacheLayout>(*std::move(layout));
    const cache::PoolSizes sizes{64, 64};
    auto backend = CreateCpuBackend(model.config, model.weights, *layout_, sizes, options);
    EXPECT_TRUE(backend.ok()) << backend.status();
    backend_ = *std::move(backend);
    manager_ = std::make_unique<cache::KvCacheManager>(*layout_, sizes);
  }

  // Runs `tokens` as one chunk of sequence `seq`; returns the last token's logits.
  std::vector<float> Run(cache::SeqId seq, std::span<const int32_t> tokens) {
    auto plan = manager_->Append(seq, static_cast<int64_t>(tokens.size()));
    EXPECT_TRUE(plan.ok()) << plan.status();
    StepPlan step;
    step.seqs.push_back(
        {*plan, std::vector<int32_t>(tokens.begin(), tokens.end()), true, std::nullopt});
    StepOutput out;
    absl::Status s = backend_->Forward(step, &out);
    EXPECT_TRUE(s.ok()) << s;
    manager_->EndStep();
    return out.logits;
  }

 private:
  std::unique_ptr<cache::CacheLayout> layout_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<cache::KvCacheManager> manager_;
};

class GoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = fs::path(LEANK_TEST_DATA_DIR) / "golden" / GetParam();
    auto model = LoadModel(dir_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::make_unique<LoadedModel>(*std::move(model));
    expected_ = LoadExpected(dir_);
    vocab_ = model_->config.vocab_size;
    ASSERT_EQ(expected_.prompt_ids.size(), 64u);
    ASSERT_EQ(expected_.greedy_ids.size(), 16u);
    ASSERT_EQ(expected_.logits.size(), 17u * vocab_);
    ASSERT_EQ(expected_.prompt_logits.size(), 64u * vocab_);
    // f32 weights: the same math as transformers' float32 up to summation order.
    // bf16 weights are upcast on both sides, so only accumulation order differs too,
    // but the budget is looser as the issue asks for bf16.
    tolerance_ = model_->config.torch_dtype == DType::kF32 ? 1e-4 : 1e-3;
  }

  std::span<const float> Row(const std::vector<float>& m, int i) const {
    return std::span<const float>(m).subspan(static_cast<size_t>(i) * vocab_, vocab_);
  }

  // Prefill (in chunks of `chunk`) then 16 greedy steps, checked against transformers.
  void CheckGeneration(Runner& runner, int chunk) {
    const auto& prompt = expected_.prompt_ids;
    std::vector<float> logits;
    for (size_t b = 0; b < prompt.size(); b += chunk) {
      const size_t n = std::min<size_t>(chunk, prompt.size() - b);
      logits = runner.Run(1, std::span<const int32_t>(prompt).subspan(b, n));
      if (chunk == 1) {
        EXPECT_LE(RelError(logits, Row(expected_.prompt_logits, static_cast<int>(b))), tolerance_)
            << "prompt position " << b;
      }
    }
    EXPECT_LE(RelError(logits, Row(expected_.logits, 0)), tolerance_) << "last prompt position";
    for (int step = 0; step < 16; ++step) {
      const int32_t token = ArgMax(logits);
      ASSERT_EQ(token, expected_.greedy_ids[step]) << "greedy step " << step;
      const int32_t next[1] = {token};
      logits = runner.Run(1, next);
      EXPECT_LE(RelError(logits, Row(expected_.logits, step + 1)), tolerance_)
          << "decode step " << step;
    }
  }

  fs::path dir_;
  std::unique_ptr<LoadedModel> model_;
  Expected expected_;
  int64_t vocab_ = 0;
  double tolerance_ = 1e-4;
};

TEST_P(GoldenTest, OneChunkPrefillThenGreedyMatchesTransformers) {
  Runner runner(*model_, std::nullopt, 128, 768);
  CheckGeneration(runner, 64);
}

TEST_P(GoldenTest, TokenByTokenPrefillMatchesEveryPosition) {
  Runner runner(*model_, std::nullopt, 128, 768);
  CheckGeneration(runner, 1);
}

TEST_P(GoldenTest, ChunkedPrefillMatches) {
  Runner runner(*model_, std::nullopt, 128, 768);
  CheckGeneration(runner, 7);
}

// An all-ones mask runs the LeanK path (pruned middle blocks, compaction) with
// nothing pruned: it must reproduce transformers too. S = W = 16 so 80 tokens cross
// every region boundary.
TEST_P(GoldenTest, AllOnesMaskLeanKPathMatches) {
  const ModelConfig& c = model_->config;
  Runner runner(*model_, cache::Mask::AllOnes({c.num_layers, c.num_kv_heads, c.head_dim}), 16, 16);
  CheckGeneration(runner, 13);
}

// A mask that drops every K channel of every head (a degenerate but valid mask): the
// pruned arena is empty and middle tokens drop out of attention. Positions before any
// token is pruned still match transformers; every later row stays finite. (The CPU
// backend used to abort here: no pruned storage for an empty arena.)
TEST_P(GoldenTest, AllZeroMaskRuns) {
  const ModelConfig& c = model_->config;
  const cache::MaskShape shape{c.num_layers, c.num_kv_heads, c.head_dim};
  auto mask = cache::Mask::Create(
      shape, std::vector<uint8_t>(size_t(c.num_layers) * c.num_kv_heads * c.head_dim, 0), 16);
  ASSERT_TRUE(mask.ok()) << mask.status();
  Runner runner(*model_, *std::move(mask), 16, 16);
  const auto& prompt = expected_.prompt_ids;
  for (size_t b = 0; b < prompt.size(); ++b) {
    std::vector<float> logits = runner.Run(1, std::span<const int32_t>(prompt).subspan(b, 1));
    ASSERT_EQ(logits.size(), static_cast<size_t>(vocab_));
    for (float v : logits) ASSERT_TRUE(std::isfinite(v)) << "position " << b;
    // Nothing is pruned until S + W + B = 48 tokens are cached.
    if (b < 47) {
      EXPECT_LE(RelError(logits, Row(expected_.prompt_logits, static_cast<int>(b))), tolerance_)
          << "position " << b;
    }
  }
}

// A dense fp32 cache layout (block 16) for backend construction tests.
absl::StatusOr<cache::CacheLayout> DenseCpuLayout(const ModelConfig& c) {
  cache::LayoutOptions lo;
  lo.num_layers = c.num_layers;
  lo.num_kv_heads = c.num_kv_heads;
  lo.head_dim = c.head_dim;
  lo.block_size = 16;
  lo.elem_bytes = 4;
  return cache::CacheLayout::Create(lo, std::nullopt);
}

TEST_P(GoldenTest, KvPoolLargerThanTheHostIsAnErrorNotAnAbort) {
  const ModelConfig& c = model_->config;
  auto layout = DenseCpuLayout(c);
  ASSERT_TRUE(layout.ok()) << layout.status();
  // ~2^50 bytes of pool: std::bad_alloc (an abort) before the fix.
  const int64_t blocks = (int64_t{1} << 48) / layout->full_block_elems() / c.num_layers;
  auto backend = CreateCpuBackend(c, model_->weights, *layout, {blocks, 0}, {.num_threads = 2});
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kResourceExhausted) << backend.status();
  EXPECT_NE(backend.status().message().find("KV cache"), std::string::npos) << backend.status();
}

TEST_P(GoldenTest, ThreadCountOutOfRangeIsAnErrorNotAnAbort) {
  const ModelConfig& c = model_->config;
  auto layout = DenseCpuLayout(c);
  ASSERT_TRUE(layout.ok()) << layout.status();
  // Before the fix a negative count silently meant "all cores" and 1 << 20 threads
  // aborted with std::system_error from std::thread (-5 first: it fails cleanly).
  for (int threads : {-5, 1 << 20}) {
    auto backend = CreateCpuBackend(c, model_->weights, *layout, {4, 0}, {.num_threads = threads});
    ASSERT_FALSE(backend.ok()) << threads;
    EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument) << backend.status();
    EXPECT_NE(backend.status().message().find("threads"), std::string::npos) << backend.status();
  }
}

// bf16 activations (CpuBackendOptions::bf16_activations): the same prompt and the
// transformers greedy tokens fed back (teacher-forced: a near-tie flipped by bf16 must not
// change the inputs), every logits row within a bf16 budget of transformers' fp32 logits,
// and visibly different from the fp32 mode's, so the rounding really happens. The budget,
// 1e-2, is ~1.3 bf16 epsilons (2^-7) of relative L2 error: each rounding point adds at
// most 2^-9 per element, mostly averaging out; measured 3.3e-3..5.1e-3 on these models,
// and the CUDA backend measured 8.1e-3 against the same goldens (docs/benchmarks.md).
void CheckBf16Activations(const LoadedModel& model, const Expected& expected, int64_t vocab,
                          std::optional<cache::Mask> mask, int sink, int recent, int chunk) {
  constexpr double kBf16Budget = 1e-2;
  Runner bf16(model, mask, sink, recent, {.num_threads = 2, .bf16_activations = true});
  Runner fp32(model, std::move(mask), sink, recent, {.num_threads = 2});
  std::vector<int32_t> tokens = expected.prompt_ids;
  auto row = [&](int i) {
    return std::span<const float>(expected.logits).subspan(static_cast<size_t>(i) * vocab, vocab);
  };
  double worst = 0, max_mode_diff = 0;
  std::vector<float> got, ref;
  for (size_t b = 0; b < tokens.size(); b += chunk) {
    const size_t n = std::min<size_t>(chunk, tokens.size() - b);
    got = bf16.Run(1, std::span<const int32_t>(tokens).subspan(b, n));
    ref = fp32.Run(1, std::span<const int32_t>(tokens).subspan(b, n));
  }
  for (int step = 0; step <= 16; ++step) {
    if (step > 0) {
      const int32_t next[1] = {expected.greedy_ids[step - 1]};
      got = bf16.Run(1, next);
      ref = fp32.Run(1, next);
    }
    ASSERT_EQ(got.size(), static_cast<size_t>(vocab));
    const double err = RelError(got, row(step));
    EXPECT_LE(err, kBf16Budget) << "step " << step;
    worst = std::max(worst, err);
    for (int64_t i = 0; i < vocab; ++i) {
      ASSERT_TRUE(std::isfinite(got[i])) << "step " << step << " logit " << i;
      max_mode_diff = std::max(max_mode_diff, std::fabs(static_cast<double>(got[i]) - ref[i]));
    }
  }
  EXPECT_GT(max_mode_diff, 1e-6) << "bf16 mode gave the fp32 mode's logits: nothing rounded";
  std::printf("bf16 activations: worst rel. error vs transformers %.3g, max |bf16 - f32| %.3g\n",
              worst, max_mode_diff);
}

TEST_P(GoldenTest, Bf16ActivationsWithinBf16BudgetOfTransformers) {
  CheckBf16Activations(*model_, expected_, vocab_, std::nullopt, 128, 768, 7);
}

TEST_P(GoldenTest, Bf16ActivationsLeanKPathWithinBf16Budget) {
  const ModelConfig& c = model_->config;
  CheckBf16Activations(*model_, expected_, vocab_,
                       cache::Mask::AllOnes({c.num_layers, c.num_kv_heads, c.head_dim}), 16, 16,
                       13);
}

INSTANTIATE_TEST_SUITE_P(Models, GoldenTest,
                         ::testing::Values("llama_gqa", "llama3_rope", "qwen2_tied", "mistral",
                                           "llama_gqa_bf16", "qwen2_tied_bf16"));

}  // namespace
}  // namespace leank
