// leank-bench-engine: the CUDA backend end to end on a real-shape model (random weights,
// tools/make_random_llama.py), dense cache vs LeanK cache:
//   batch1   decode tokens/s at each context (the cache filled by a real chunked prefill)
//            against the weight-bandwidth bound (weight bytes read per step / the read
//            bandwidth measured in the same run);
//   capacity at one context and a fixed KV budget: the most sequences that fit, and the
//            decode tokens/s of that batch (cache blocks filled with random bf16: decode
//            reads the same bytes whatever they hold);
//   prefill  one prompt in one chunk: tokens/s and TFLOP/s.
// Writes a JSON list of records (bench/results/engine-*.json) and prints a table.

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cache/kv_cache.h"
#include "cache/mask.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/model/weights.h"
#include "kernels/attention.h"
#include "kernels/model/ops.h"
#include "nlohmann/json.hpp"

namespace leank {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

struct Args {
  std::string model, mask, json_path, git_commit = "unknown";
  std::string contexts = "1024,32768";
  std::string impls = "dense,leank";
  std::string scenarios = "batch1,capacity,prefill";
  int decode_steps = 64;
  int capacity_steps = 32;
  double capacity_kv_gb = 40;
  int capacity_context = 32768;
  int prefill_context = 8192;
  int chunk = 8192;
  int block = 16;
  bool graphs = true, gemv = true, fused_norm = true, pdl = true, device_sampling = true;
};

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

[[noreturn]] void Die(const std::string& msg) {
  std::fprintf(stderr, "leank-bench-engine: %s\n", msg.c_str());
  std::exit(1);
}

struct Bench {
  Args args;
  LoadedModel model;
  std::shared_ptr<const cuda::PackedWeights> weights;
  std::optional<cache::Mask> mask;
  std::string device;
  double read_bw = 0;             // bytes/s
  int64_t step_weight_bytes = 0;  // read per decode step
  json records = json::array();
  std::mt19937_64 rng{42};

  cache::CacheLayout Layout(bool leank) {
    const ModelConfig& c = model.config;
    cache::LayoutOptions lo;
    lo.num_layers = c.num_layers;
    lo.num_kv_heads = c.num_kv_heads;
    lo.head_dim = c.head_dim;
    lo.block_size = args.block;
    lo.elem_bytes = 2;
    if (mask) {
      lo.sink = mask->sink;
      lo.recent = mask->recent;
    }
    auto l = cache::CacheLayout::Create(lo, leank ? mask : std::nullopt);
    if (!l.ok()) Die(std::string(l.status().message()));
    return *l;
  }

  std::unique_ptr<Backend> MakeBackend(const cache::CacheLayout& layout, cache::PoolSizes sizes,
                                       int max_tokens, int max_seqs) {
    CudaBackendOptions o;
    o.max_batched_tokens = max_tokens;
    o.max_num_seqs = max_seqs;
    o.cuda_graphs = args.graphs;
    o.small_batch_gemv = args.gemv;
    o.fused_norm = args.fused_norm;
    auto b = CreateCudaBackend(model.config, weights, layout, sizes, o);
    if (!b.ok()) Die(std::string(b.status().message()));
    return *std::move(b);
  }

  int32_t RandomToken() { return static_cast<int32_t>(rng() % model.config.vocab_size); }

  // One step; aborts on error. Returns the logits.
  // With `device_greedy` (and --device-sampling), every row is sampled greedily by the
  // backend (StepOutput::sampled) and no logits come back, as in the engine.
  StepOutput Step(Backend& b, cache::KvCacheManager& m,
                  const std::vector<std::pair<int64_t, std::vector<int32_t>>>& work,
                  bool want_logits, bool device_greedy = false) {
    StepPlan plan;
    for (const auto& [seq, tokens] : work) {
      auto ap = m.Append(seq, static_cast<int64_t>(tokens.size()));
      if (!ap.ok()) Die(absl::StrCat("append: ", ap.status().message()));
      plan.seqs.push_back({*std::move(ap), tokens, want_logits, std::nullopt});
      if (want_logits && device_greedy && args.device_sampling && b.samples_on_device()) {
        DeviceSample greedy;
        greedy.params.temperature = 0.0f;
        plan.seqs.back().sample = std::move(greedy);
      }
    }
    StepOutput out;
    if (auto s = b.Forward(plan, &out); !s.ok()) Die(absl::StrCat("forward: ", s.message()));
    m.EndStep();
    for (float v : out.logits) {
      if (!std::isfinite(v)) Die("non-finite logit");
    }
    return out;
  }

  json Record(const std::string& scenario, const std::string& impl, int batch, int64_t context) {
    char date[32];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    return json{{"scenario", scenario},
                {"impl", impl},
                {"batch", batch},
                {"context", context},
                {"device", device},
                {"git_commit", args.git_commit},
                {"date", date},
                {"model", model.config.name},
                {"block_size", args.block},
                {"cuda_graphs", args.graphs},
                {"small_batch_gemv", args.gemv},
                {"fused_norm", args.fused_norm},
                {"programmatic_launch", args.pdl},
                {"device_sampling", args.device_sampling}};
  }

  // How many decode plans took the work lists built ahead during the step before.
  static void AddPlanStats(const Backend& b, json* r) {
    auto st = GetCudaGraphStats(&b);
    if (!st.ok()) return;
    (*r)["decode_plans"] = st->decode_plans;
    (*r)["decode_plans_prepared"] = st->decode_plans_prepared;
  }

  // Prefill `ctx` tokens in chunks, then time decode steps at batch 1.
  void Batch1(bool leank, int64_t ctx) {
    cache::CacheLayout layout = Layout(leank);
    const int64_t tokens = ctx + args.decode_steps + 16;
    const int64_t budget = layout.full_bytes_per_token() * (tokens + args.chunk + 64);
    const cache::PoolSizes sizes = cache::SplitBudget(layout, budget, tokens, args.chunk);
    auto b = MakeBackend(layout, sizes, args.chunk, 1);
    cache::KvCacheManager m(layout, sizes);
    const auto t0 = Clock::now();
    StepOutput out;
    for (int64_t done = 0; done < ctx;) {
      const int64_t n = std::min<int64_t>(args.chunk, ctx - done);
      std::vector<int32_t> t(n);
      for (auto& x : t) x = RandomToken();
      out = Step(*b, m, {{0, t}}, done + n == ctx);
      done += n;
    }
    const double prefill_s = Seconds(t0, Clock::now());
    auto argmax = [&](const StepOutput& o) {
      return static_cast<int32_t>(std::max_element(o.logits.begin(), o.logits.end()) -
                                  o.logits.begin());
    };
    int32_t next = argmax(out);
    auto next_token = [&](const StepOutput& o) {
      return o.sampled.empty() ? argmax(o) : o.sampled[0].token;
    };
    const int warm = 4;
    Clock::time_point start;
    std::vector<double> step_ms;
    for (int i = 0; i < warm + args.decode_steps; ++i) {
      const auto t = Clock::now();
      if (i == warm) start = t;
      out = Step(*b, m, {{0, {next}}}, true, /*device_greedy=*/true);
      next = next_token(out);
      if (i >= warm) step_ms.push_back(1e3 * Seconds(t, Clock::now()));
    }
    const double s = Seconds(start, Clock::now());
    std::sort(step_ms.begin(), step_ms.end());
    const double median_ms = step_ms[step_ms.size() / 2];
    json r = Record("batch1", leank ? "leank" : "dense", 1, ctx);
    r["tokens_per_s"] = args.decode_steps / s;
    r["ms_per_token"] = 1e3 * s / args.decode_steps;
    // Whole steps as the engine sees them (host work, argmax over the logits included).
    r["median_step_ms"] = median_ms;
    r["p10_step_ms"] = step_ms[step_ms.size() / 10];
    r["p90_step_ms"] = step_ms[step_ms.size() * 9 / 10];
    r["tokens_per_s_median_step"] = 1e3 / median_ms;
    r["bound_tokens_per_s"] = read_bw / step_weight_bytes;
    r["fraction_of_bound"] = (args.decode_steps / s) / (read_bw / step_weight_bytes);
    r["read_bandwidth_GBps"] = read_bw / 1e9;
    r["weight_bytes_per_step"] = step_weight_bytes;
    // The definition: every weight byte (embedding table included) / bandwidth.
    const double all_bytes = static_cast<double>(CudaWeightBytes(model.config));
    r["all_weight_bytes"] = all_bytes;
    r["bound_all_weights_tokens_per_s"] = read_bw / all_bytes;
    r["fraction_of_all_weights_bound"] = (args.decode_steps / s) / (read_bw / all_bytes);
    r["prefill_s"] = prefill_s;
    r["decode_steps"] = args.decode_steps;
    AddPlanStats(*b, &r);
    records.push_back(r);
    std::printf(
        "batch1   %-6s ctx %6lld: %7.1f tok/s (%.2f ms; median step %.2f ms, p10 %.2f, p90 %.2f), "
        "bound %.1f tok/s (%.0f%%)\n",
        leank ? "leank" : "dense", static_cast<long long>(ctx), args.decode_steps / s,
        1e3 * s / args.decode_steps, median_ms, r["p10_step_ms"].get<double>(),
        r["p90_step_ms"].get<double>(), read_bw / step_weight_bytes,
        100 * r["fraction_of_bound"].get<double>());
    std::fflush(stdout);
  }

  void Capacity(bool leank) {
    const int64_t ctx = args.capacity_context;
    cache::CacheLayout layout = Layout(leank);
    const int64_t budget = static_cast<int64_t>(args.capacity_kv_gb * 1e9);
    const cache::PoolSizes sizes = cache::SplitBudget(layout, budget, ctx, 256);  // chunk reserve
    // max_batch: sequences of ctx tokens that fit, each allocated by a chunked prefill
    // (an Append writes its tokens into full blocks before compaction, as a real
    // prefill does; SplitBudget reserved full blocks for one chunk).
    constexpr int64_t kChunk = 256;
    auto fill = [&](cache::KvCacheManager& m, int64_t seq, int64_t len) {
      for (int64_t done = 0; done < len;) {
        const int64_t n = std::min(kChunk, len - done);
        if (!m.CanAppend(seq, n)) return false;
        if (!m.Append(seq, n).ok()) return false;
        m.EndStep();
        done += n;
      }
      return true;
    };
    int batch = 0;
    {
      cache::KvCacheManager count(layout, sizes);
      while (fill(count, batch, ctx)) ++batch;
    }
    // Timed batch: the same number of sequences, allocated at ctx - steps tokens so they
    // reach ctx while decoding.
    cache::KvCacheManager m(layout, sizes);
    for (int s = 0; s < batch; ++s) {
      if (!fill(m, s, ctx - args.capacity_steps - 4)) Die("capacity: refill failed");
    }
    auto b = MakeBackend(layout, sizes, std::max(batch, 16), std::max(batch, 1));
    if (auto s = FillCudaCacheRandom(b.get(), 7); !s.ok()) Die(std::string(s.message()));
    std::vector<int32_t> next(batch);
    for (auto& t : next) t = RandomToken();
    const int warm = 3;
    Clock::time_point start;
    int steps = 0;
    for (int i = 0; i < warm + args.capacity_steps; ++i) {
      if (i == warm) start = Clock::now();
      std::vector<std::pair<int64_t, std::vector<int32_t>>> work;
      for (int s = 0; s < batch; ++s) work.push_back({s, {next[s]}});
      StepOutput out = Step(*b, m, work, true);
      for (int s = 0; s < batch; ++s) {
        auto row = out.row(s);
        next[s] = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
      }
      if (i >= warm) ++steps;
    }
    const double s = Seconds(start, Clock::now());
    json r = Record("capacity", leank ? "leank" : "dense", batch, ctx);
    r["max_batch"] = batch;
    r["kv_budget_bytes"] = budget;
    r["full_blocks"] = sizes.num_full_blocks;
    r["pruned_blocks"] = sizes.num_pruned_blocks;
    r["tokens_per_s"] = batch * steps / s;
    r["ms_per_step"] = 1e3 * s / steps;
    r["cache_content"] = "random bf16 (allocated, not prefilled)";
    AddPlanStats(*b, &r);
    records.push_back(r);
    std::printf("capacity %-6s ctx %6lld, %.0f GB KV: max batch %d, %.1f tok/s (%.2f ms/step)\n",
                leank ? "leank" : "dense", static_cast<long long>(ctx), args.capacity_kv_gb, batch,
                batch * steps / s, 1e3 * s / steps);
    std::fflush(stdout);
  }

  // Rows-1 matmuls of the model's shapes, GEMV kernel vs cuBLASLt: achieved read GB/s.
  void GemvShapes() {
    const ModelConfig& c = model.config;
    namespace km = kernels::model;
    struct Shape {
      const char* name;
      int n, k;
    } shapes[] = {{"qkv", c.q_size() + 2 * c.kv_size(), c.hidden_size},
                  {"o", c.hidden_size, c.q_size()},
                  {"gate_up", 2 * c.intermediate_size, c.hidden_size},
                  {"down", c.hidden_size, c.intermediate_size},
                  {"lm_head", c.vocab_size, c.hidden_size}};
    km::Gemm gemm;
    for (const Shape& sh : shapes) {
      const size_t wbytes = size_t(sh.n) * sh.k * 2;
      // Several weight copies (> L2) rotated, as the model's layers are.
      const int copies = std::max<int>(2, static_cast<int>((size_t(1) << 30) / wbytes) + 1);
      km::bf16 *w = nullptr, *x = nullptr;
      float* y = nullptr;
      if (cudaMalloc(&w, wbytes * copies) != cudaSuccess || cudaMalloc(&x, sh.k * 2 * 16) ||
          cudaMalloc(&y, size_t(sh.n) * 4 * 16))
        Die("gemv bench: cudaMalloc");
      km::FillRandomBf16(w, wbytes * copies / 2, 3, nullptr);
      km::FillRandomBf16(x, sh.k * 16, 4, nullptr);
      for (int variant = 0; variant < 4; ++variant) {
        const int rows = variant < 2 ? 1 : 16;
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0);
        cudaEventCreate(&e1);
        const int iters = 50;
        for (int it = -5; it < iters; ++it) {
          if (it == 0) cudaEventRecord(e0);
          km::bf16* wi = w + size_t((it + 5) % copies) * sh.n * sh.k;
          if (variant % 2 == 0) {
            km::GemvF32(x, wi, y, rows, sh.n, sh.k, 0.0f, nullptr);
          } else {
            gemm.RunF32(x, wi, y, rows, sh.n, sh.k, 0.0f, nullptr);
          }
        }
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        const double us = 1e3 * ms / iters, gbps = wbytes / (us * 1e-6) / 1e9;
        json r = Record("gemv", variant % 2 == 0 ? "gemv" : "cublaslt", rows, 0);
        r["shape"] = sh.name;
        r["n"] = sh.n;
        r["k"] = sh.k;
        r["us"] = us;
        r["read_GBps"] = gbps;
        records.push_back(r);
        std::printf("gemv     %-8s %-8s rows %2d n %6d k %5d: %7.1f us, %6.0f GB/s (%.0f%%)\n",
                    variant % 2 == 0 ? "gemv" : "cublaslt", sh.name, rows, sh.n, sh.k, us, gbps,
                    100 * gbps * 1e9 / read_bw);
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
      }
      cudaFree(w);
      cudaFree(x);
      cudaFree(y);
    }
    std::fflush(stdout);
  }

  void Prefill(bool leank) {
    const int64_t ctx = args.prefill_context;
    const ModelConfig& c = model.config;
    cache::CacheLayout layout = Layout(leank);
    const int64_t budget = layout.full_bytes_per_token() * (2 * ctx + 256);
    const cache::PoolSizes sizes = cache::SplitBudget(layout, budget, ctx, ctx);
    auto b = MakeBackend(layout, sizes, static_cast<int>(ctx), 1);
    cache::KvCacheManager m(layout, sizes);
    std::vector<double> times;
    for (int run = 0; run < 4; ++run) {
      std::vector<int32_t> t(ctx);
      for (auto& x : t) x = RandomToken();
      const auto t0 = Clock::now();
      Step(*b, m, {{run, t}}, true);
      if (run > 0) times.push_back(Seconds(t0, Clock::now()));  // run 0 warms up
      m.Free(run);
      m.EndStep();
    }
    std::sort(times.begin(), times.end());
    const double s = times[times.size() / 2];
    // Matmul flops (every weight but the embedding; LM head for one row) + dense causal
    // attention flops (QK^T and PV), the usual accounting.
    const double params = double(step_weight_bytes) / 2 - double(c.vocab_size) * c.hidden_size;
    const double flops = 2 * params * ctx + 2.0 * c.vocab_size * c.hidden_size +
                         4.0 * c.num_layers * c.num_heads * c.head_dim * (double(ctx) * ctx / 2);
    json r = Record("prefill", leank ? "leank" : "dense", 1, ctx);
    r["tokens_per_s"] = ctx / s;
    r["seconds"] = s;
    r["tflops"] = flops / s / 1e12;
    records.push_back(r);
    std::printf("prefill  %-6s ctx %6lld: %8.0f tok/s, %.3f s, %.0f TFLOP/s\n",
                leank ? "leank" : "dense", static_cast<long long>(ctx), ctx / s, s,
                flops / s / 1e12);
    std::fflush(stdout);
  }
};

}  // namespace
}  // namespace leank

int main(int argc, char** argv) {
  using namespace leank;
  Bench bench;
  Args& a = bench.args;
  CLI::App app{"leank-bench-engine: CUDA backend end to end, dense vs LeanK"};
  app.add_option("--model", a.model, "model folder (config.json + safetensors)")->required();
  app.add_option("--mask", a.mask, "LeanK mask (.safetensors)")->required();
  app.add_option("--json", a.json_path, "write records here");
  app.add_option("--git-commit", a.git_commit);
  app.add_option("--contexts", a.contexts, "batch-1 contexts");
  app.add_option("--impls", a.impls);
  app.add_option("--scenarios", a.scenarios);
  app.add_option("--decode-steps", a.decode_steps);
  app.add_option("--capacity-steps", a.capacity_steps);
  app.add_option("--capacity-kv-gb", a.capacity_kv_gb);
  app.add_option("--capacity-context", a.capacity_context);
  app.add_option("--prefill-context", a.prefill_context);
  app.add_option("--chunk", a.chunk, "prefill chunk for batch-1 contexts");
  app.add_option("--block-size", a.block);
  app.add_option("--graphs", a.graphs, "CUDA graphs for decode steps (default true)");
  app.add_option("--gemv", a.gemv, "small-batch GEMV kernel for 1-2 rows (default true)");
  app.add_option("--fused-norm", a.fused_norm,
                 "RMSNorm fused into the 1-2 row GEMVs (default true)");
  app.add_option(
      "--device-sampling", a.device_sampling,
      "batch-1 decode samples greedily on the device, no logits copied back (default true)");
  app.add_option("--pdl", a.pdl,
                 "programmatic dependent launch of the model kernels and decode attention "
                 "(default true)");
  CLI11_PARSE(app, argc, argv);
  leank::kernels::model::SetProgrammaticLaunch(a.pdl);
  leank::kernels::SetDecodeProgrammaticLaunch(a.pdl);

  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) Die("no CUDA device");
  bench.device = prop.name;
  const auto t0 = Clock::now();
  auto model = LoadModel(a.model);
  if (!model.ok()) Die(std::string(model.status().message()));
  bench.model = *std::move(model);
  const ModelConfig& c = bench.model.config;
  auto mask = cache::LoadMask(a.mask, {c.num_layers, c.num_kv_heads, c.head_dim});
  if (!mask.ok()) Die(std::string(mask.status().message()));
  bench.mask = *std::move(mask);
  auto w = UploadCudaWeights(c, bench.model.weights);
  if (!w.ok()) Die(std::string(w.status().message()));
  bench.weights = *std::move(w);
  const double emb = 2.0 * c.vocab_size * c.hidden_size;
  bench.step_weight_bytes =
      CudaWeightBytes(c) - (c.tie_word_embeddings ? 0 : static_cast<int64_t>(emb));
  auto bw = MeasureCudaReadBandwidth(int64_t{4} << 30);
  if (!bw.ok()) Die(std::string(bw.status().message()));
  bench.read_bw = *bw;
  std::printf(
      "%s: model %s loaded+uploaded in %.1f s; weights read per decode step %.2f GB; "
      "read bandwidth %.0f GB/s\n",
      bench.device.c_str(), c.name.c_str(), Seconds(t0, Clock::now()),
      bench.step_weight_bytes / 1e9, bench.read_bw / 1e9);
  std::fflush(stdout);

  std::vector<bool> impls;
  for (auto s : absl::StrSplit(a.impls, ',')) impls.push_back(s == "leank");
  for (auto sc : absl::StrSplit(a.scenarios, ',')) {
    for (bool leank : impls) {
      if (sc == "batch1") {
        for (auto cs : absl::StrSplit(a.contexts, ','))
          bench.Batch1(leank, std::stoll(std::string(cs)));
      } else if (sc == "capacity") {
        bench.Capacity(leank);
      } else if (sc == "gemv") {
        if (leank) bench.GemvShapes();
      } else if (sc == "prefill") {
        bench.Prefill(leank);
      }
    }
  }
  if (!a.json_path.empty()) {
    std::ofstream(a.json_path) << bench.records.dump(1) << "\n";
  }
  return 0;
}
