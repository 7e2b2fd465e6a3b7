// leank-bench-decode-plan: host time of the decode work lists (BuildDecodeWork, the bulk
// of DecodeAttention::Plan, which the engine runs once per decode step) for the
// Llama-3.1-8B attention shape, dense and with LeanK's released mask. No GPU needed:
// it measures the CPU it runs on. Per point: the first plan (CTA search) and the steady
// plan (the next step, a few tokens longer, reusing the choice), medians, with one
// DecodeWork reused throughout as DecodeAttention does (warm buffers).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/decode_work.h"
#include "kernels/host_pool.h"
#include "nlohmann/json.hpp"

namespace leank {
namespace {

using kernels::AttentionShape;
using kernels::BuildDecodeWork;
using kernels::DecodeCtaChoice;
using kernels::DecodeWork;
using kernels::HostPool;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string json_path;
  std::string mask_path =
      std::string(LEANK_SOURCE_DIR) + "/bench/kernels/data/llama3.1-8b-instruct.json";
  std::vector<int> batches = {1, 8, 16, 32, 64, 128, 256};
  std::vector<int> contexts = {1024, 4096, 32768};
  int resident = 264;  // H100: 132 SMs x 2 decode CTAs
  int iters = 30;
  int threads = 1;  // host threads of the plan (DecodeAttention uses HostPool::DefaultThreads())
  std::string git_commit = "unknown";
};

std::vector<int> ParseList(const std::string& s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::stoi(item));
  return v;
}

std::string CpuName() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

std::string Today() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", std::gmtime(&t));
  return buf;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Point {
  double first_us = 0, steady_us = 0;
  int max_items = 0, ctas = 0;
};

Point TimePlan(const Options& o, const AttentionShape& shape, bool dense,
               const std::vector<int32_t>& kept, int batch, int context, HostPool* pool) {
  std::vector<int32_t> seq_tokens(2 * batch);
  auto set_lengths = [&](int64_t n) {
    for (int s = 0; s < batch; ++s) {
      seq_tokens[2 * s] = static_cast<int32_t>(n);
      seq_tokens[2 * s + 1] = static_cast<int32_t>(kernels::MiddleTokens(shape, dense, n));
    }
  };
  Point p;
  std::vector<double> first, steady;
  DecodeWork work;  // one per DecodeAttention, reused every step as there
  for (int it = 0; it < o.iters; ++it) {
    set_lengths(context);
    auto t0 = Clock::now();
    BuildDecodeWork(shape, seq_tokens, kept, o.resident, 0, DecodeCtaChoice{}, &work, pool);
    first.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    p.max_items = work.max_items;
    p.ctas = work.choice.ctas;
    // The next step: a few tokens longer, the choice reused as DecodeAttention::Plan does.
    const DecodeCtaChoice choice = work.choice;
    set_lengths(context + 1 + it % 16);
    t0 = Clock::now();
    BuildDecodeWork(shape, seq_tokens, kept, o.resident, 0, choice, &work, pool);
    steady.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    if (work.items.empty()) std::abort();  // keeps the work observable
  }
  p.first_us = Median(first);
  p.steady_us = Median(steady);
  return p;
}

constexpr char kUsage[] =
    "usage: %s [--json PATH] [--mask PATH] [--batches 1,8] [--contexts 1024,...] "
    "[--resident 264] [--threads N] [--iters N] [--git-commit SHA]\n";

int Main(int argc, char** argv) {
  Options o;
  try {
    for (int i = 1; i < argc; ++i) {
      auto arg = [&](const char* name) { return std::strcmp(argv[i], name) == 0 && i + 1 < argc; };
      if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
        std::printf(kUsage, argv[0]);
        return 0;
      } else if (arg("--json")) {
        o.json_path = argv[++i];
      } else if (arg("--mask")) {
        o.mask_path = argv[++i];
      } else if (arg("--batches")) {
        o.batches = ParseList(argv[++i]);
      } else if (arg("--contexts")) {
        o.contexts = ParseList(argv[++i]);
      } else if (arg("--resident")) {
        o.resident = std::stoi(argv[++i]);
      } else if (arg("--threads")) {
        o.threads = std::stoi(argv[++i]);
      } else if (arg("--iters")) {
        o.iters = std::stoi(argv[++i]);
      } else if (arg("--git-commit")) {
        o.git_commit = argv[++i];
      } else {
        std::fprintf(stderr, "unknown or incomplete option %s\n", argv[i]);
        std::fprintf(stderr, kUsage, argv[0]);
        return 2;
      }
    }
  } catch (const std::exception&) {  // std::stoi: not a number
    std::fprintf(stderr, "option values must be integers (lists: 1,8,32)\n");
    return 2;
  }
  const auto positive = [](const std::vector<int>& v) {
    return !v.empty() && std::all_of(v.begin(), v.end(), [](int x) { return x >= 1; });
  };
  if (o.iters < 1 || o.resident < 1 || o.threads < 1 || !positive(o.batches) ||
      !positive(o.contexts)) {
    std::fprintf(stderr, "--iters, --resident, --threads, --batches and --contexts must be >= 1\n");
    return 2;
  }
  std::ifstream f(o.mask_path);
  if (!f) {
    std::fprintf(stderr, "cannot open mask %s\n", o.mask_path.c_str());
    return 1;
  }
  std::vector<std::vector<std::vector<int>>> mask;
  try {
    mask = nlohmann::json::parse(f).at("kept").get<decltype(mask)>();
  } catch (const nlohmann::json::exception& e) {
    std::fprintf(stderr, "mask %s: not a kept-channel JSON ({\"kept\": [layer][head][ch]}): %s\n",
                 o.mask_path.c_str(), e.what());
    return 1;
  }
  if (mask.empty() ||
      !std::all_of(mask.begin(), mask.end(), [](const auto& l) { return l.size() == 8; })) {
    std::fprintf(stderr, "mask %s: want [layers][8 kv heads][channels] (Llama-3.1-8B shape)\n",
                 o.mask_path.c_str());
    return 1;
  }
  const AttentionShape shape{static_cast<int>(mask.size()), 8, 32, 128, 16, 128, 768};
  std::vector<int32_t> kept_leank, kept_dense(size_t(shape.num_layers) * 8, 128);
  for (const auto& layer : mask) {
    for (const auto& head : layer) kept_leank.push_back(static_cast<int32_t>(head.size()));
  }
  const std::string cpu = CpuName();
  HostPool pool(o.threads);
  std::printf("cpu %s; %d layers, resident CTAs %d, %d plan threads; medians of %d\n", cpu.c_str(),
              shape.num_layers, o.resident, o.threads, o.iters);
  std::printf("%6s %7s %6s %10s %10s %9s %6s\n", "batch", "context", "impl", "first_us",
              "steady_us", "items/l", "ctas");
  nlohmann::json records = nlohmann::json::array();
  for (int batch : o.batches) {
    for (int context : o.contexts) {
      for (bool dense : {true, false}) {
        const Point p =
            TimePlan(o, shape, dense, dense ? kept_dense : kept_leank, batch, context, &pool);
        std::printf("%6d %7d %6s %10.1f %10.1f %9d %6d\n", batch, context,
                    dense ? "dense" : "leank", p.first_us, p.steady_us, p.max_items, p.ctas);
        std::fflush(stdout);
        records.push_back(
            {{"scenario", "decode_plan_host"},
             {"impl", dense ? "dense" : "leank"},
             {"batch", batch},
             {"context", context},
             {"first_plan_us", p.first_us},
             {"steady_plan_us", p.steady_us},
             {"max_items_per_layer", p.max_items},
             {"ctas_per_layer", p.ctas},
             {"resident_ctas", o.resident},
             {"plan_threads", o.threads},
             {"layers", shape.num_layers},
             {"shape", "llama-3.1-8b: 32 q heads, 8 kv heads, head_dim 128"},
             {"mask", dense ? "none (dense mode)" : "LeanK released llama3.1-8b"},
             {"timing", "median of iters, warm buffers; BuildDecodeWork only (no table copy)"},
             {"iters", o.iters},
             {"cpu", cpu},
             {"date", Today()},
             {"git_commit", o.git_commit}});
      }
    }
  }
  if (!o.json_path.empty()) {
    std::ofstream out(o.json_path);
    out << records.dump(1) << "\n";
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", o.json_path.c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace leank

int main(int argc, char** argv) { return leank::Main(argc, argv); }
