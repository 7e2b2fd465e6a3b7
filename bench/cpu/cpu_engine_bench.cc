// CPU reference engine throughput: prefill tokens/s and decode tokens/s at batch 1
// (and larger batches), greedy, EOS ignored. Writes one JSON record per batch size.
//   leank-bench-cpu --model DIR [--prompt-tokens 128] [--decode-tokens 64] [--batches 1,4]
//                   [--masks FILE] [--json OUT]

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "engine/core/engine.h"
#include "spdlog/spdlog.h"

int main(int argc, char** argv) {
  CLI::App app{"CPU engine throughput"};
  std::string model, masks, json_out;
  int prompt_tokens = 128, decode_tokens = 64, threads = 0;
  std::vector<int> batches = {1, 4};
  app.add_option("--model", model)->required();
  app.add_option("--masks", masks);
  app.add_option("--prompt-tokens", prompt_tokens);
  app.add_option("--decode-tokens", decode_tokens);
  app.add_option("--batches", batches)->delimiter(',');
  app.add_option("--threads", threads);
  app.add_option("--json", json_out);
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);

  leank::EngineOptions eo;
  eo.model_dir = model;
  eo.mask_path = masks;
  eo.num_threads = threads;
  eo.max_batched_tokens = 2048;
  auto engine = leank::Engine::Create(eo);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    return 3;
  }
  leank::Engine& e = **engine;
  using Clock = std::chrono::steady_clock;
  std::string records = "[";
  leank::RequestId id = 0;
  for (int batch : batches) {
    leank::GenerationParams p;
    p.sampling.temperature = 0;
    p.max_tokens = decode_tokens;
    p.ignore_eos = true;
    for (int b = 0; b < batch; ++b) {
      std::vector<int32_t> prompt(prompt_tokens);
      for (int i = 0; i < prompt_tokens; ++i) prompt[i] = 100 + (i * 7 + b * 13) % 5000;
      if (auto s = e.AddRequest(id++, prompt, p); !s.ok()) {
        std::fprintf(stderr, "%s\n", s.ToString().c_str());
        return 2;
      }
    }
    const auto t0 = Clock::now();
    Clock::time_point first{};
    int steps = 0, tokens = 0;
    while (e.HasWork()) {
      for (const auto& o : e.Step()) tokens += static_cast<int>(o.tokens.size());
      if (++steps == 1) first = Clock::now();
    }
    const auto t1 = Clock::now();
    const double prefill_s = std::chrono::duration<double>(first - t0).count();
    const double decode_s = std::chrono::duration<double>(t1 - first).count();
    const double decode_tps = (tokens - batch) / decode_s;
    char buf[512];
    std::snprintf(buf, sizeof(buf),
                  "%s{\"bench\": \"cpu_engine\", \"model\": \"%s\", \"masked\": %s, \"batch\": %d, "
                  "\"prompt_tokens\": %d, \"decode_tokens\": %d, \"prefill_tokens_per_s\": %.1f, "
                  "\"decode_tokens_per_s\": %.2f, \"threads\": %d}",
                  records.size() > 1 ? ", " : "", e.info().model.c_str(),
                  masks.empty() ? "false" : "true", batch, prompt_tokens, decode_tokens,
                  batch * prompt_tokens / prefill_s, decode_tps, threads);
    records += buf;
    std::fprintf(stderr, "batch %d: prefill %.1f tok/s, decode %.2f tok/s\n", batch,
                 batch * prompt_tokens / prefill_s, decode_tps);
  }
  records += "]\n";
  if (!json_out.empty()) std::ofstream(json_out) << records;
  return 0;
}
