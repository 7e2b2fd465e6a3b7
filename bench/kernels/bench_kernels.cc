// leank-bench-kernels: decode attention time, dense paged vs LeanK, Llama-3.1-8B shape.
//
// For each (batch, context): every sequence holds `context` tokens (the decode query is
// the last). A timed run is one sweep over the 32 layers (each layer with its own
// released mask in LeanK mode), so the figure matches the model; time_us is the median
// sweep over --iters sweeps divided by 32. Storage is replicated (rotated per layer)
// until the working set is >= 512 MB, so L2 (50 MB) cannot flatter small points.
// Block tables are shuffled like a fragmented pool. The read-only bandwidth of this run
// (a reduction over 4 GB) is measured first and written into every record.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench/kernels/bench_util.h"
#include "kernels/attention.h"
#include "kernels/cuda_check.h"
#include "nlohmann/json.hpp"

namespace leank::bench {
namespace {

using kernels::AttentionShape;
using kernels::bf16;
using kernels::DecodeAttention;
using kernels::DecodeLoads;
using kernels::DeviceMeta;
using kernels::SeqView;
using Mask = std::vector<std::vector<std::vector<int>>>;

struct Options {
  std::string json_path;
  std::string mask_path =
      std::string(LEANK_SOURCE_DIR) + "/bench/kernels/data/llama3.1-8b-instruct.json";
  std::vector<int> batches = {1, 8, 32, 64};
  std::vector<int> contexts = {4096, 16384, 32768, 65536, 131072};
  int iters = 50;
  int warmup = 5;
  int block_size = 16;
  int ctas = 0;         // the plan's target CTA count per layer (0: its default)
  bool shuffle = true;  // shuffled block tables (a fragmented pool) or in order
  bool prefill = true;  // also time 8K causal prefill attention
  bool graph = true;    // time the 32 launches of a sweep as one CUDA graph, as the peers do
  bool tma = true;      // decode K/V loads: TMA boxes (SetDecodeLoads) or per-thread cp.async
  bool pdl = true;      // launches as programmatic dependents (SetDecodeProgrammaticLaunch)
  std::string git_commit = "unknown";
};

std::vector<int> ParseList(const char* s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::stoi(item));
  return v;
}

Mask LoadMask(const std::string& path) {
  std::ifstream f(path);
  if (!f) {
    std::fprintf(stderr, "cannot open mask %s\n", path.c_str());
    std::exit(1);
  }
  nlohmann::json j = nlohmann::json::parse(f);
  return j.at("kept").get<Mask>();
}

struct Result {
  double time_us = 0, bytes = 0, plan_us = 0;
  int items = 0;
  bool tma = false;  // the TMA load path ran (not only asked for)
};

// Times one configuration; returns time per layer. dense: no mask (plain paged decode).
Result TimeDecode(const Options& o, const Mask* mask, int batch, int context) {
  AttentionShape shape{32, 8, 32, 128, o.block_size, 128, 768};
  auto meta_or = DeviceMeta::Create(shape, mask ? *mask : Mask{});
  if (!meta_or.ok()) {
    std::fprintf(stderr, "meta: %s\n", std::string(meta_or.status().message()).c_str());
    std::exit(1);
  }
  const DeviceMeta& meta = *meta_or;
  const int B = shape.block_size, L = shape.num_layers;
  const bool dense = mask == nullptr;
  const int64_t M = kernels::MiddleTokens(shape, dense, context);
  const int nfull = static_cast<int>((context - M + B - 1) / B), npruned = static_cast<int>(M / B);
  int64_t max_pruned_elems = 0;
  for (int l = 0; l < L; ++l)
    max_pruned_elems = std::max(max_pruned_elems, meta.pruned_block_elems(l));
  const size_t full_elems = size_t(batch) * nfull * meta.full_block_elems();
  const size_t pruned_elems = size_t(batch) * npruned * max_pruned_elems;
  const size_t copy_bytes = (full_elems + pruned_elems) * sizeof(bf16);
  size_t free_b = 0, total_b = 0;
  LEANK_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  int copies = static_cast<int>(std::clamp<size_t>((size_t(512) << 20) / copy_bytes + 1, 1, 32));
  if (copy_bytes * copies + (size_t(1) << 30) > free_b) copies = 1;
  if (copy_bytes + (size_t(1) << 30) > free_b) return Result{-1, 0, 0, 0};  // does not fit

  std::vector<bf16*> full(copies), pruned(copies);
  for (int c = 0; c < copies; ++c) {
    LEANK_CUDA_CHECK(cudaMalloc(&full[c], std::max<size_t>(full_elems, 8) * sizeof(bf16)));
    LEANK_CUDA_CHECK(cudaMalloc(&pruned[c], std::max<size_t>(pruned_elems, 8) * sizeof(bf16)));
    FillRandomBf16(full[c], full_elems, 11 + c, nullptr);
    FillRandomBf16(pruned[c], pruned_elems, 1000 + c, nullptr);
  }
  // Shuffled block tables: each sequence gets its own blocks of the pool.
  std::mt19937 rng(1234);
  std::vector<int32_t> fperm(size_t(batch) * nfull), pperm(size_t(batch) * npruned);
  for (size_t i = 0; i < fperm.size(); ++i) fperm[i] = static_cast<int32_t>(i);
  for (size_t i = 0; i < pperm.size(); ++i) pperm[i] = static_cast<int32_t>(i);
  if (o.shuffle) {
    std::shuffle(fperm.begin(), fperm.end(), rng);
    std::shuffle(pperm.begin(), pperm.end(), rng);
  }
  std::vector<SeqView> views;
  for (int s = 0; s < batch; ++s)
    views.push_back({context, std::span<const int32_t>(fperm).subspan(size_t(s) * nfull, nfull),
                     std::span<const int32_t>(pperm).subspan(size_t(s) * npruned, npruned)});
  bf16 *q = nullptr, *out = nullptr;
  const size_t q_elems = size_t(batch) * shape.num_q_heads * shape.head_dim;
  LEANK_CUDA_CHECK(cudaMalloc(&q, q_elems * sizeof(bf16)));
  LEANK_CUDA_CHECK(cudaMalloc(&out, q_elems * sizeof(bf16)));
  FillRandomBf16(q, q_elems, 77, nullptr);

  cudaStream_t stream;
  LEANK_CUDA_CHECK(cudaStreamCreate(&stream));
  DecodeAttention attn(meta);
  const auto t0 = std::chrono::steady_clock::now();
  auto st = attn.Plan(views, stream, o.ctas);
  const auto t1 = std::chrono::steady_clock::now();
  if (!st.ok()) {
    std::fprintf(stderr, "plan: %s\n", std::string(st.message()).c_str());
    std::exit(1);
  }
  Result r;
  r.plan_us = std::chrono::duration<double, std::micro>(t1 - t0).count();
  for (int l = 0; l < L; ++l) {
    r.bytes += double(attn.kv_bytes(l)) + 2.0 * q_elems * sizeof(bf16);
    r.items += attn.num_items(l);
  }
  r.bytes /= L;
  r.items /= L;
  const float scale = 1.0f / std::sqrt(128.0f);
  auto sweep = [&] {
    for (int l = 0; l < L; ++l) {
      const int c = l % copies;
      attn.Run(l, q, full[c], pruned[c], scale, out, stream);
    }
  };
  cudaEvent_t a, b;
  LEANK_CUDA_CHECK(cudaEventCreate(&a));
  LEANK_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < o.warmup; ++i) sweep();
  // The peers (bench/peers/peers.py) replay their 32 calls from a CUDA graph; so do we
  // unless --graph 0 (then each launch is issued by the host, as the engine does).
  cudaGraphExec_t exec = nullptr;
  if (o.graph) {
    cudaGraph_t graph;
    LEANK_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    sweep();
    LEANK_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    LEANK_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    LEANK_CUDA_CHECK(cudaGraphDestroy(graph));
    LEANK_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  }
  std::vector<float> ms;
  for (int i = 0; i < o.iters; ++i) {
    LEANK_CUDA_CHECK(cudaEventRecord(a, stream));
    if (exec != nullptr) {
      LEANK_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    } else {
      sweep();
    }
    LEANK_CUDA_CHECK(cudaEventRecord(b, stream));
    LEANK_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    LEANK_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  LEANK_CUDA_CHECK(cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  r.time_us = ms[ms.size() / 2] * 1e3 / L;
  r.tma = attn.tma_launches() > 0;
  if (exec != nullptr) cudaGraphExecDestroy(exec);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaStreamDestroy(stream);
  for (int c = 0; c < copies; ++c) {
    cudaFree(full[c]);
    cudaFree(pruned[c]);
  }
  cudaFree(q);
  cudaFree(out);
  return r;
}

// Causal prefill of one `n`-token chunk (start 0) per layer, all 32 layers per run.
Result TimePrefill(const Options& o, const Mask* mask, int n) {
  AttentionShape shape{32, 8, 32, 128, o.block_size, 128, 768};
  auto meta_or = DeviceMeta::Create(shape, mask ? *mask : Mask{});
  if (!meta_or.ok()) std::exit(1);
  const DeviceMeta& meta = *meta_or;
  const int B = shape.block_size, L = shape.num_layers;
  const int nfull = (n + B - 1) / B;
  const size_t full_elems = size_t(nfull) * meta.full_block_elems();
  bf16 *full = nullptr, *pruned = nullptr, *q = nullptr, *out = nullptr;
  const size_t q_elems = size_t(n) * shape.num_q_heads * shape.head_dim;
  LEANK_CUDA_CHECK(cudaMalloc(&full, full_elems * sizeof(bf16)));
  LEANK_CUDA_CHECK(cudaMalloc(&pruned, 64));
  LEANK_CUDA_CHECK(cudaMalloc(&q, q_elems * sizeof(bf16)));
  LEANK_CUDA_CHECK(cudaMalloc(&out, q_elems * sizeof(bf16)));
  FillRandomBf16(full, full_elems, 5, nullptr);
  FillRandomBf16(q, q_elems, 6, nullptr);
  std::vector<int32_t> blocks(nfull);
  for (int i = 0; i < nfull; ++i) blocks[i] = i;
  std::vector<kernels::PrefillSeq> seqs = {{0, n, blocks, {}}};
  kernels::PrefillAttention attn(meta);
  if (!attn.Plan(seqs, nullptr).ok()) std::exit(1);
  const float scale = 1.0f / std::sqrt(128.0f);
  auto sweep = [&] {
    for (int l = 0; l < L; ++l) attn.Run(l, q, full, pruned, scale, out, nullptr);
  };
  sweep();
  cudaEvent_t a, b;
  LEANK_CUDA_CHECK(cudaEventCreate(&a));
  LEANK_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int i = 0; i < 5; ++i) {
    LEANK_CUDA_CHECK(cudaEventRecord(a));
    sweep();
    LEANK_CUDA_CHECK(cudaEventRecord(b));
    LEANK_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    LEANK_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  LEANK_CUDA_CHECK(cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  Result r;
  r.time_us = ms[ms.size() / 2] * 1e3 / L;
  r.bytes = double(full_elems + 2 * q_elems) * sizeof(bf16);
  cudaFree(full);
  cudaFree(pruned);
  cudaFree(q);
  cudaFree(out);
  return r;
}

std::string Today() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", std::gmtime(&t));
  return buf;
}

int Main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    auto arg = [&](const char* name) { return std::strcmp(argv[i], name) == 0 && i + 1 < argc; };
    if (arg("--json"))
      o.json_path = argv[++i];
    else if (arg("--mask"))
      o.mask_path = argv[++i];
    else if (arg("--batches"))
      o.batches = ParseList(argv[++i]);
    else if (arg("--contexts"))
      o.contexts = ParseList(argv[++i]);
    else if (arg("--iters"))
      o.iters = std::stoi(argv[++i]);
    else if (arg("--block"))
      o.block_size = std::stoi(argv[++i]);
    else if (arg("--ctas"))
      o.ctas = std::stoi(argv[++i]);
    else if (arg("--shuffle"))
      o.shuffle = std::stoi(argv[++i]) != 0;
    else if (arg("--prefill"))
      o.prefill = std::stoi(argv[++i]) != 0;
    else if (arg("--graph"))
      o.graph = std::stoi(argv[++i]) != 0;
    else if (arg("--pdl"))
      o.pdl = std::stoi(argv[++i]) != 0;
    else if (arg("--loads") && i + 1 < argc &&
             (std::string(argv[i + 1]) == "tma" || std::string(argv[i + 1]) == "cpasync"))
      o.tma = std::string(argv[++i]) == "tma";
    else if (arg("--git-commit"))
      o.git_commit = argv[++i];
    else {
      std::fprintf(stderr,
                   "usage: %s [--json PATH] [--mask PATH] [--batches 1,8] [--contexts 4096,...] "
                   "[--iters N] [--block 16] [--ctas N] [--shuffle 0|1] [--prefill 0|1] "
                   "[--graph 0|1] [--loads tma|cpasync] [--pdl 0|1] [--git-commit SHA]\n",
                   argv[0]);
      return 2;
    }
  }
  const Mask mask = LoadMask(o.mask_path);
  kernels::SetDecodeProgrammaticLaunch(o.pdl);
  kernels::SetDecodeLoads(o.tma ? DecodeLoads::kTma : DecodeLoads::kCpAsync);
  cudaDeviceProp prop{};
  LEANK_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const double read_gbps = MeasureReadBandwidth(size_t(4) << 30, 20);
  std::printf("device %s, read-only bandwidth %.0f GB/s\n", prop.name, read_gbps);
  nlohmann::json records = nlohmann::json::array();
  std::printf("%6s %7s %10s %10s %8s %8s %8s %8s %7s\n", "batch", "context", "dense_us", "leank_us",
              "dense%", "leank%", "d_GB/s", "l_GB/s", "speedup");
  for (int batch : o.batches) {
    for (int context : o.contexts) {
      const Result d = TimeDecode(o, nullptr, batch, context);
      if (d.time_us < 0) {
        std::printf("%6d %7d  skipped: does not fit in device memory\n", batch, context);
        continue;
      }
      const Result l = TimeDecode(o, &mask, batch, context);
      if (l.time_us < 0) continue;
      const double speedup = d.time_us / l.time_us;
      for (int k = 0; k < 2; ++k) {
        const Result& r = k == 0 ? d : l;
        const double gbps = r.bytes / (r.time_us * 1e-6) / 1e9;
        records.push_back(
            {{"impl", k == 0 ? "dense" : "leank"},
             {"batch", batch},
             {"context", context},
             {"time_us", r.time_us},
             {"bytes", r.bytes},
             {"gbps", gbps},
             {"read_gbps", read_gbps},
             {"frac_read", gbps / read_gbps},
             {"speedup_vs_dense", d.time_us / r.time_us},
             {"plan_us_all_layers", r.plan_us},
             {"ctas_per_layer", r.items},
             {"block_size", o.block_size},
             {"target_ctas", o.ctas},
             {"block_tables", o.shuffle ? "shuffled" : "in order"},
             {"layers", 32},
             {"sink", 128},
             {"recent", 768},
             {"shape", "llama-3.1-8b: 32 q heads, 8 kv heads, head_dim 128, bf16"},
             {"mask", k == 0 ? "none (dense mode)" : "LeanK released llama3.1-8b-instruct"},
             {"timing", o.graph ? "median of iters sweeps over 32 layers / 32, CUDA events, "
                                  "the sweep's 32 launches replayed from a CUDA graph"
                                : "median of iters sweeps over 32 layers / 32, CUDA events, "
                                  "32 launches issued by the host"},
             {"cuda_graph", o.graph},
             {"decode_loads", r.tma ? "tma" : "cpasync"},
             {"programmatic_launch", o.pdl},
             {"iters", o.iters},
             {"device", prop.name},
             {"date", Today()},
             {"git_commit", o.git_commit}});
      }
      std::printf("%6d %7d %10.1f %10.1f %7.1f%% %7.1f%% %8.0f %8.0f %6.2fx\n", batch, context,
                  d.time_us, l.time_us, 100 * d.bytes / (d.time_us * 1e3) / read_gbps,
                  100 * l.bytes / (l.time_us * 1e3) / read_gbps, d.bytes / (d.time_us * 1e3),
                  l.bytes / (l.time_us * 1e3), speedup);
      std::fflush(stdout);
    }
  }
  // Prefill attention, 8K causal: FLOPs of the causal half (4 * D * Hq * n^2 / 2).
  for (int k = 0; k < 2 && o.prefill; ++k) {
    const int n = 8192;
    const Result r = TimePrefill(o, k == 0 ? nullptr : &mask, n);
    const double flops = 4.0 * 128 * 32 * double(n) * n / 2;
    const double tflops = flops / (r.time_us * 1e-6) / 1e12;
    std::printf("prefill %s 8K causal: %.1f us per layer, %.1f TFLOP/s\n",
                k == 0 ? "dense" : "leank", r.time_us, tflops);
    records.push_back({{"impl", k == 0 ? "prefill_dense" : "prefill_leank"},
                       {"batch", 1},
                       {"context", n},
                       {"time_us", r.time_us},
                       {"bytes", r.bytes},
                       {"gbps", r.bytes / (r.time_us * 1e-6) / 1e9},
                       {"read_gbps", read_gbps},
                       {"tflops", tflops},
                       {"flops_counted", "4 * head_dim * q_heads * n^2 / 2 (causal)"},
                       {"block_size", o.block_size},
                       {"device", prop.name},
                       {"date", Today()},
                       {"git_commit", o.git_commit}});
  }
  if (!o.json_path.empty()) {
    std::ofstream f(o.json_path);
    f << records.dump(1) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace leank::bench

int main(int argc, char** argv) { return leank::bench::Main(argc, argv); }
