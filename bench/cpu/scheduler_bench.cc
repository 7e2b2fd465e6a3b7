// Scheduler cost per step with a mock backend: N running sequences decoding in a
// LeanK-layout cache (Llama-3.1-8B shapes, a random 30%-kept aligned mask), so
// compaction bookkeeping is included. Prints microseconds of CPU per step.
// --context N: sequences of about N tokens (default ~900-1400), to see the per-step cost
// of block tables that grow with the context.
//   leank-bench-scheduler [--seqs 256] [--steps 2000] [--context N]

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "engine/core/scheduler.h"

int main(int argc, char** argv) {
  int num_seqs = 256, steps = 2000, context = 900;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--seqs")) num_seqs = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--context")) context = std::atoi(argv[i + 1]);
  }
  if (num_seqs < 1 || steps < 1 || context < 900) {
    std::fprintf(stderr, "--seqs and --steps must be >= 1, --context >= 900\n");
    return 2;
  }
  using namespace leank;
  const int layers = 32, heads = 8, dim = 128;
  std::vector<uint8_t> kept(layers * heads * dim, 0);
  std::mt19937 rng(7);
  for (int lh = 0; lh < layers * heads; ++lh) {
    const int count = 32 * (rng() % 4);  // 0, 32, 64 or 96 kept
    for (int c = 0; c < count; ++c) kept[lh * dim + c] = 1;
  }
  auto mask = cache::Mask::Create({layers, heads, dim}, kept, 32);
  if (!mask.ok()) return 1;
  cache::LayoutOptions lo{layers, heads, dim, 16, 128, 768, 2};
  auto layout = cache::CacheLayout::Create(lo, *mask);
  if (!layout.ok()) return 1;
  // Full blocks: sink + recent + growth per sequence, plus one 8192-token prefill chunk.
  const cache::PoolSizes sizes{num_seqs * 64LL + 8192 / 16 + 64, num_seqs * (context / 16 + 400LL)};
  cache::KvCacheManager manager(*layout, sizes);
  Scheduler sched({num_seqs, 8192}, &manager);
  std::vector<std::unique_ptr<SchedSeq>> seqs;
  for (int i = 0; i < num_seqs; ++i) {
    auto s = std::make_unique<SchedSeq>();
    s->id = i;
    s->arrival = i;
    s->tokens.assign(context + 37 * i % 500, 1);  // past sink + recent: compaction happens
    sched.AddWaiting(s.get());
    seqs.push_back(std::move(s));
  }
  // Prefill everything (not timed).
  for (int guard = 0; guard < 100000; ++guard) {
    Schedule s = sched.Step();
    bool all_decoding = true;
    for (auto& x : s.seqs) {
      x.seq->num_cached += x.cache.num_new_tokens;
      if (x.want_logits)
        x.seq->tokens.push_back(3);
      else
        all_decoding = false;
    }
    manager.EndStep();
    if (all_decoding && sched.num_waiting() == 0 && (int)s.seqs.size() == num_seqs) break;
  }
  using Clock = std::chrono::steady_clock;
  std::vector<double> us;
  for (int step = 0; step < steps; ++step) {
    const auto t0 = Clock::now();
    size_t scheduled = 0;
    {
      Schedule s = sched.Step();
      scheduled = s.seqs.size();
      for (auto& x : s.seqs) {
        x.seq->num_cached += x.cache.num_new_tokens;
        x.seq->tokens.push_back(3);
      }
      manager.EndStep();
    }  // the schedule's tables are freed inside the timed step too, as in the engine
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    if (static_cast<int>(scheduled) != num_seqs) {
      std::fprintf(stderr, "step %d scheduled %zu of %d\n", step, scheduled, num_seqs);
      return 1;
    }
  }
  std::sort(us.begin(), us.end());
  std::printf(
      "{\"bench\": \"scheduler\", \"running_seqs\": %d, \"context\": %d, \"steps\": %d, "
      "\"median_us\": %.2f, \"p90_us\": %.2f, \"p99_us\": %.2f, \"preemptions\": %lld}\n",
      num_seqs, context, steps, us[us.size() / 2], us[us.size() * 9 / 10], us[us.size() * 99 / 100],
      static_cast<long long>(sched.num_preemptions()));
  return 0;
}
