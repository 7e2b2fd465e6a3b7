// leank-generate: run one generation on the engine and stream the text to stdout.
//
//   leank-generate --model DIR --prompt "Once upon a time" --max-tokens 64
//   leank-generate --model DIR --chat "What is 2+2?" [--system "..."] [--masks masks.safetensors]
//
// Exit codes: 0 ok, 2 bad usage or input, 3 model/engine error.

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

#include "CLI/CLI.hpp"
#include "engine/core/engine.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace {

int Fail(int code, std::string_view what) {
  std::fprintf(stderr, "leank-generate: %.*s\n", static_cast<int>(what.size()), what.data());
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Generate text with the leank engine."};
  leank::EngineOptions eo;
  std::string model, masks, prompt, chat, system, log_level = "warn";
  leank::GenerationParams gp;
  gp.sampling.temperature = 0.0f;
  int64_t seed = -1;
  int sink = -1, recent = -1;
  bool stats = false, raw_ids = false;
  app.add_option("--model", model, "Model folder (HF layout)")->required();
  auto* prompt_opt = app.add_option("--prompt", prompt, "Raw text prompt");
  auto* chat_opt =
      app.add_option("--chat", chat, "A user message, rendered with the chat template");
  prompt_opt->excludes(chat_opt);
  app.add_option("--system", system, "System message for --chat")->needs(chat_opt);
  app.add_option("--masks", masks, "LeanK mask file (masks.safetensors); none = dense");
  auto* sink_opt =
      app.add_option("--sink", sink, "Sink tokens kept full (default: the mask's metadata)");
  auto* recent_opt =
      app.add_option("--recent", recent, "Recent tokens kept full (default: the mask's metadata)");
  app.add_option("--backend", eo.backend, "cpu | cuda")->capture_default_str();
  app.add_option("--block-size", eo.block_size, "KV block size in tokens")->capture_default_str();
  app.add_option("--kv-cache-memory", eo.kv_cache_bytes,
                 "KV cache budget in bytes (0: 1 GiB on cpu, 90% of the free GPU memory on cuda)");
  app.add_option("--threads", eo.num_threads, "CPU threads (0: all cores)");
  app.add_option("--gpu-sampling", eo.gpu_sampling,
                 "Sample on the GPU when the backend can (cuda); false: CPU sampler")
      ->capture_default_str();
  std::string cpu_activations = "f32";
  app.add_option("--cpu-activations", cpu_activations,
                 "CPU backend: f32 (fp32 reference) | bf16 (rounded where the CUDA backend is)")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  app.add_option("--max-tokens", gp.max_tokens, "Tokens to generate")->capture_default_str();
  app.add_option("--min-tokens", gp.min_tokens, "Tokens before EOS/stop may end generation");
  app.add_option("--temperature", gp.sampling.temperature, "0 = greedy")->capture_default_str();
  app.add_option("--top-k", gp.sampling.top_k, "0 = off");
  app.add_option("--top-p", gp.sampling.top_p, "Nucleus sampling mass");
  app.add_option("--min-p", gp.sampling.min_p, "Min-p filter");
  app.add_option("--repetition-penalty", gp.sampling.repetition_penalty, "1 = off");
  app.add_option("--presence-penalty", gp.sampling.presence_penalty, "0 = off");
  app.add_option("--frequency-penalty", gp.sampling.frequency_penalty, "0 = off");
  app.add_option("--seed", seed, "Sampling seed (default: random)");
  app.add_option("--stop", gp.stop, "Stop string (repeatable)");
  app.add_flag("--ignore-eos", gp.ignore_eos, "Keep generating past EOS");
  app.add_flag("--stats", stats, "Print prompt/decode tokens per second to stderr");
  app.add_flag("--token-ids", raw_ids, "Print generated token ids (one per line) instead of text");
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error|critical|off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (prompt_opt->count() == 0 && chat_opt->count() == 0) {
    return Fail(2, "give --prompt TEXT or --chat MESSAGE");
  }
  if (cpu_activations == "bf16" && eo.backend != "cpu") {
    return Fail(2, "--cpu-activations bf16 applies to --backend cpu only");
  }
  spdlog::set_default_logger(spdlog::stderr_color_mt("leank"));
  spdlog::set_level(spdlog::level::from_str(log_level));
  eo.model_dir = model;
  eo.cpu_bf16_activations = cpu_activations == "bf16";
  eo.mask_path = masks;
  // Given means given: a negative value is the engine's error, not "the mask's".
  if (sink_opt->count() > 0) eo.sink = sink;
  if (recent_opt->count() > 0) eo.recent = recent;
  if (seed >= 0) {
    gp.sampling.seed = static_cast<uint64_t>(seed);
    gp.sampling.has_seed = true;
  }

  auto engine = leank::Engine::Create(eo);
  if (!engine.ok()) return Fail(3, engine.status().ToString());
  leank::Engine& e = **engine;

  std::string text = prompt;
  bool add_special = true;
  if (chat_opt->count() > 0) {
    const leank::ChatTemplate* tmpl = e.chat_template();
    if (!tmpl)
      return Fail(3,
                  "the model has no usable chat template: " + e.chat_template_status().ToString());
    std::vector<leank::ChatMessage> messages;
    if (!system.empty()) messages.push_back({"system", system});
    messages.push_back({"user", chat});
    auto rendered = tmpl->Render(messages, /*add_generation_prompt=*/true);
    if (!rendered.ok()) return Fail(2, rendered.status().ToString());
    text = *rendered;
    add_special = false;  // the template already holds BOS where the family wants it
  }
  auto ids = e.tokenizer().Encode(text, add_special);
  if (!ids.ok()) return Fail(2, ids.status().ToString());
  const int prompt_tokens = static_cast<int>(ids->size());
  if (absl::Status s = e.AddRequest(1, *std::move(ids), gp); !s.ok()) {
    return Fail(2, s.ToString());
  }

  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  Clock::time_point first{};
  int generated = 0;
  leank::FinishReason reason = leank::FinishReason::kNone;
  while (e.HasWork()) {
    for (leank::RequestOutput& out : e.Step()) {
      for (const auto& t : out.tokens) {
        if (generated++ == 0) first = Clock::now();
        if (raw_ids) std::printf("%d\n", t.token);
      }
      if (!raw_ids) std::fwrite(out.text.data(), 1, out.text.size(), stdout);
      std::fflush(stdout);
      if (out.finished) {
        reason = out.finish_reason;
        if (reason == leank::FinishReason::kError) return Fail(3, out.error.ToString());
      }
    }
  }
  if (!raw_ids) std::printf("\n");
  if (stats) {
    const auto end = Clock::now();
    const double prefill_s = std::chrono::duration<double>(first - start).count();
    const double decode_s = std::chrono::duration<double>(end - first).count();
    std::fprintf(stderr,
                 "[stats] prompt %d tokens in %.3f s (%.1f tok/s); generated %d tokens, decode "
                 "%.2f tok/s; finish: %s\n",
                 prompt_tokens, prefill_s, prompt_tokens / prefill_s, generated,
                 generated > 1 ? (generated - 1) / decode_s : 0.0, leank::FinishReasonName(reason));
  }
  return 0;
}
