// Randomized invariants of the real engine (tiny random model, CPU backend), dense and
// LeanK: every case draws, from its seed, a cache layout (block size 16/32, small sink and
// recent so that compaction happens every few tokens, a random aligned mask with heads
// keeping 0 and all channels), a tiny KV budget, a small token budget (chunked prefill),
// an admission policy, and a workload (prompt lengths around every region boundary,
// max_tokens, arrival steps, aborts at random steps, injected backend faults). Then:
//  - every request finishes exactly once, with length / abort / error and nothing else,
//    and only where the test caused the abort or the fault;
//  - greedy outputs (temperature 0, ignore_eos) equal the same request run alone in an
//    unconstrained engine (aborted and failed ones: a prefix of it);
//  - every step's plan is sane: tokens are the request's own (recompute replays them),
//    positions continue or restart at 0, block tables match the layout and no block is
//    in two sequences, at most max_batched_tokens tokens and max_num_seqs sequences;
//  - stats are consistent after every step (running + waiting = live requests, kv_usage =
//    the bytes of the blocks not free), and once all is done every block is free;
//  - reserve admission never preempts (every request here runs to max_tokens or is aborted);
//  - FCFS: no request is first scheduled while an older live one never was, and every
//    request ends within a bounded number of steps.
// LEANK_INVARIANT_SEEDS=N runs N seeds per test instead of the default (soak runs), from
// LEANK_INVARIANT_FIRST_SEED (1); LEANK_INVARIANT_SEED=N runs only seed N.

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cache/kv_cache.h"
#include "cache/mask.h"
#include "engine/core/backend.h"
#include "engine/core/engine.h"
#include "gtest/gtest.h"
#include "spdlog/spdlog.h"
#include "tests/engine/tiny_model.h"

namespace leank {
namespace {

namespace fs = std::filesystem;

constexpr int kLayers = 2, kKvHeads = 2, kHeadDim = 64;
constexpr int kMaxModelLen = 512;  // the tiny model's max_position_embeddings

struct Req {
  RequestId id = 0;
  std::vector<int32_t> prompt;
  int max_tokens = 1;
  int arrival_step = 0;
  std::optional<int> abort_step;  // AbortRequest just before this step (>= arrival_step)
};

struct Case {
  uint64_t seed = 0;
  bool leank = false;
  int block = 16, sink = 0, recent = 16, align = 16;
  std::vector<uint8_t> kept;  // [layer][head][channel] when leank
  int64_t kv_bytes = 0;
  int64_t target_context = 0;
  int max_batched_tokens = 16;
  int max_num_seqs = 4;
  std::string admission = "reserve";
  std::set<int> fault_steps;  // Forward fails at these steps (0-based engine steps)
  std::vector<Req> reqs;

  std::string Describe() const {
    std::ostringstream s;
    s << "seed " << seed << ": " << (leank ? "leank" : "dense") << " B=" << block << " S=" << sink
      << " W=" << recent << " align=" << align << " kv_bytes=" << kv_bytes
      << " target=" << target_context << " max_batched_tokens=" << max_batched_tokens
      << " max_num_seqs=" << max_num_seqs << " admission=" << admission << " faults={";
    for (int f : fault_steps) s << f << ",";
    s << "}";
    if (leank) {
      s << " kept={";
      for (int l = 0; l < kLayers; ++l) {
        for (int h = 0; h < kKvHeads; ++h) {
          int k = 0;
          for (int c = 0; c < kHeadDim; ++c) k += kept[(l * kKvHeads + h) * kHeadDim + c];
          s << k << ",";
        }
      }
      s << "}";
    }
    s << "\n";
    for (const Req& r : reqs) {
      s << "  req " << r.id << ": prompt " << r.prompt.size() << " max_tokens " << r.max_tokens
        << " arrives " << r.arrival_step;
      if (r.abort_step) s << " abort " << *r.abort_step;
      s << "\n";
    }
    return s.str();
  }
};

// What the test knows of a request while the workload runs.
struct Live {
  const Req* req = nullptr;
  bool added = false;
  bool finished = false;
  bool abort_called = false;  // AbortRequest was called (it ends at the next step)
  FinishReason reason = FinishReason::kNone;
  absl::Status error;  // of a kError finish
  std::vector<int32_t> output;
  int64_t cached = 0;              // tokens the engine holds for it (from the plans)
  std::optional<int> first_sched;  // step it first appeared in a plan
  std::set<int> fault_steps;       // faulted steps it took part in
  int restarts = 0;                // plans restarting at position 0 after progress
  int finished_step = -1;
  int64_t add_order = 0;
};

// Sees every plan the engine runs and checks it against what the test knows; fails the
// step when the case says so.
class CheckingBackend final : public Backend {
 public:
  struct Hooks {
    std::function<void(const StepPlan&)> on_plan;
    std::function<bool()> fault_now;
  };
  CheckingBackend(std::unique_ptr<Backend> inner, Hooks hooks)
      : inner_(std::move(inner)), hooks_(std::move(hooks)) {}
  std::string name() const override { return inner_->name(); }
  const ModelConfig& config() const override { return inner_->config(); }
  const cache::CacheLayout& layout() const override { return inner_->layout(); }
  cache::PoolSizes pool_sizes() const override { return inner_->pool_sizes(); }
  absl::Status Forward(const StepPlan& plan, StepOutput* out) override {
    if (hooks_.on_plan) hooks_.on_plan(plan);
    if (hooks_.fault_now && hooks_.fault_now()) {
      return absl::InternalError("injected backend fault");
    }
    return inner_->Forward(plan, out);
  }

 private:
  std::unique_ptr<Backend> inner_;
  Hooks hooks_;
};

// What the cases of one test exercised (printed at its end, to see the coverage).
struct Coverage {
  int cases = 0, requests = 0, preemptions = 0, restarts = 0, compactions = 0, chunks = 0;
  int aborted = 0, failed = 0, max_running = 0;
};

GenerationParams Greedy(int max_tokens) {
  GenerationParams p;
  p.sampling.temperature = 0;
  p.max_tokens = max_tokens;
  p.ignore_eos = true;
  return p;
}

class EngineInvariantsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    spdlog::set_level(spdlog::level::err);  // each case creates engines
    dir_ = new fs::path(fs::temp_directory_path() /
                        ("leank_engine_invariants_test." + std::to_string(::getpid())));
    testing::WriteTinyModel(*dir_ / "model", 5, {kLayers, 4, kKvHeads});
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }

  static int NumSeeds(int default_n) {
    if (const char* e = std::getenv("LEANK_INVARIANT_SEEDS")) return std::max(1, std::atoi(e));
    return default_n;
  }

  // Engine options of the case's layout (everything but budgets and scheduling).
  EngineOptions BaseOptions(const Case& c, const fs::path& mask_path) const {
    EngineOptions o;
    o.model_dir = *dir_ / "model";
    o.num_threads = 1;
    o.block_size = c.block;
    if (c.leank) {
      o.mask_path = mask_path;
      o.sink = c.sink;
      o.recent = c.recent;
    }
    return o;
  }

  static absl::StatusOr<cache::Mask> MakeMask(const Case& c) {
    auto m = cache::Mask::Create({kLayers, kKvHeads, kHeadDim}, c.kept, c.align);
    if (!m.ok()) return m.status();
    m->align = c.align;  // sink and recent come from the engine options (the file's must be > 0)
    return m;
  }

  // Draws a case's layout and engine options; the budget is fitted later.
  static Case DrawLayout(uint64_t seed, bool leank, const std::string& admission) {
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + (leank ? 1 : 0) +
                        (admission == "reserve" ? 2 : 0));
    auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    Case c;
    c.seed = seed;
    c.leank = leank;
    c.admission = admission;
    c.block = uni(0, 1) ? 16 : 32;
    c.sink = c.block * uni(0, 2);
    c.recent = c.block * uni(1, 2);
    c.align = uni(0, 1) ? 16 : 32;
    if (leank) {
      // Per head a random multiple of align; one head keeps nothing, another keeps all.
      const int heads = kLayers * kKvHeads;
      std::vector<int> counts(heads);
      for (int& k : counts) k = c.align * uni(0, kHeadDim / c.align);
      const int zero = uni(0, heads - 1);
      int all = uni(0, heads - 2);
      if (all >= zero) ++all;
      counts[zero] = 0;
      counts[all] = kHeadDim;
      c.kept.assign(heads * kHeadDim, 0);
      for (int h = 0; h < heads; ++h) {
        std::vector<int> ch(kHeadDim);
        for (int i = 0; i < kHeadDim; ++i) ch[i] = i;
        std::shuffle(ch.begin(), ch.end(), rng);
        for (int i = 0; i < counts[h]; ++i) c.kept[h * kHeadDim + ch[i]] = 1;
      }
    }
    static constexpr int kTokenBudgets[] = {1, 5, 8, 16, 23, 32, 48, 64};
    c.max_batched_tokens = kTokenBudgets[uni(0, 7)];
    c.max_num_seqs = uni(1, 6);
    c.target_context = c.sink + c.recent + c.block * uni(1, 6);
    return c;
  }

  // Draws the workload for an engine that holds `capacity` tokens per request.
  static void DrawWorkload(Case& c, int64_t capacity, int* num_steps_hint) {
    std::mt19937_64 rng(c.seed * 31 + 7);
    auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    const int max_len = static_cast<int>(std::min<int64_t>(capacity, kMaxModelLen));
    const int S = c.sink, W = c.recent, B = c.block;
    // Region boundaries a prompt (or prompt + output) can end around.
    std::vector<int> marks = {1, 2, B - 1, B, B + 1};
    for (int k = 0; k <= 4; ++k) {
      for (int d : {-1, 0, 1}) marks.push_back(S + W + k * B + d);
    }
    for (int d : {-1, 0, 1}) marks.push_back(S + d);
    const int n = uni(4, 12);
    int step = 0;
    for (int i = 0; i < n; ++i) {
      Req r;
      r.id = 100 + i;
      r.max_tokens = uni(0, 3) == 0 ? uni(1, 3) : uni(1, std::min(40, max_len - 1));
      const int room = max_len - r.max_tokens;
      int len = uni(0, 2) == 0 ? uni(1, room) : marks[uni(0, marks.size() - 1)] + uni(-1, 1);
      if (uni(0, 9) == 0) len = room;  // as long as the cache allows
      r.prompt.resize(std::clamp(len, 1, room));
      std::uniform_int_distribution<int32_t> tok(10, 2999);
      for (int32_t& t : r.prompt) t = tok(rng);
      step += uni(0, 3) == 0 ? uni(0, 25) : 0;  // bursts and gaps
      r.arrival_step = step;
      if (uni(0, 4) == 0) r.abort_step = r.arrival_step + uni(0, 60);
      c.reqs.push_back(std::move(r));
    }
    if (uni(0, 3) == 0) {
      for (int k = uni(1, 2); k > 0; --k) c.fault_steps.insert(uni(0, step + 40));
    }
    *num_steps_hint = step;
  }

  // Runs `r` alone in an unconstrained engine of the case's layout.
  static std::vector<int32_t> RunAlone(Engine& e, const Req& r) {
    EXPECT_TRUE(e.AddRequest(r.id, r.prompt, Greedy(r.max_tokens)).ok());
    std::vector<int32_t> out;
    while (e.HasWork()) {
      for (const RequestOutput& o : e.Step()) {
        for (const TokenOutput& t : o.tokens) out.push_back(t.token);
        if (o.finished) {
          EXPECT_EQ(o.finish_reason, FinishReason::kLength);
        }
      }
    }
    return out;
  }

  void RunCase(uint64_t seed, bool leank, const std::string& admission);
  void RunSeeds(bool leank, const std::string& admission, int default_seeds) {
    coverage_ = {};
    if (const char* e = std::getenv("LEANK_INVARIANT_SEED")) {  // one seed, to debug it
      RunCase(std::atoi(e), leank, admission);
    } else {
      const char* first = std::getenv("LEANK_INVARIANT_FIRST_SEED");
      const int from = first ? std::atoi(first) : 1;
      for (int s = from; s < from + NumSeeds(default_seeds) && !HasFatalFailure(); ++s) {
        RunCase(s, leank, admission);
      }
    }
    const Coverage& v = coverage_;
    std::printf(
        "%d cases, %d requests: %d preemptions (%d restarts seen), %d compactions, %d prefill "
        "chunks not ending a prompt, %d aborted, %d failed by faults, up to %d running\n",
        v.cases, v.requests, v.preemptions, v.restarts, v.compactions, v.chunks, v.aborted,
        v.failed, v.max_running);
  }

  Coverage coverage_;

  static fs::path* dir_;
};
fs::path* EngineInvariantsTest::dir_ = nullptr;

void EngineInvariantsTest::RunCase(uint64_t seed, bool leank, const std::string& admission) {
  Case c = DrawLayout(seed, leank, admission);
  const fs::path mask_path = *dir_ / absl::StrCat("mask.", seed, ".safetensors");
  std::optional<cache::Mask> mask;
  if (leank) {
    auto m = MakeMask(c);
    ASSERT_TRUE(m.ok()) << m.status();
    ASSERT_TRUE(cache::SaveMask(*m, mask_path).ok());
    mask = *std::move(m);
  }
  cache::LayoutOptions lo{
      kLayers, kKvHeads, kHeadDim, c.block, c.leank ? c.sink : 0, c.leank ? c.recent : c.block, 4};
  auto layout = cache::CacheLayout::Create(lo, mask);
  ASSERT_TRUE(layout.ok()) << layout.status();
  const double full_bytes = static_cast<double>(layout->full_block_bytes());
  const double pruned_bytes = static_cast<double>(layout->pruned_block_bytes());

  // A tiny budget: a few requests' worth of blocks, fitted so that a request can run to
  // at least 2 * (S + W) + a few blocks (so that compaction happens) but mostly only a
  // couple fit at once.
  std::mt19937_64 rng(seed * 1000003 + 17);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const int64_t want_capacity = c.sink + c.recent + c.block * uni(2, 8);
  c.kv_bytes = static_cast<int64_t>(full_bytes * uni(2, 5));

  // The engine under test; the hooks see the Live table below.
  std::map<RequestId, Live> live;
  int step = 0;
  std::unique_ptr<Engine> engine;
  EngineStats initial;
  cache::PoolSizes pool;
  std::vector<std::string> plan_errors;
  auto on_plan = [&](const StepPlan& plan) {
    auto fail = [&](const std::string& what) {
      plan_errors.push_back(absl::StrCat("step ", step, ": ", what));
    };
    int64_t tokens = 0;
    std::set<int32_t> full_seen, pruned_seen;
    if (static_cast<int>(plan.seqs.size()) > c.max_num_seqs) fail("too many sequences");
    std::set<RequestId> ids;
    for (const SeqWork& w : plan.seqs) {
      const RequestId id = w.cache.seq;
      tokens += static_cast<int64_t>(w.tokens.size());
      if (!ids.insert(id).second) fail(absl::StrCat("request ", id, " twice in a plan"));
      auto it = live.find(id);
      if (it == live.end() || !it->second.added || it->second.finished) {
        fail(absl::StrCat("plan for request ", id, " which is not live"));
        continue;
      }
      Live& l = it->second;
      std::vector<int32_t> stream = l.req->prompt;
      stream.insert(stream.end(), l.output.begin(), l.output.end());
      const int64_t start = w.cache.start_pos, n = w.cache.num_new_tokens;
      if (n != static_cast<int64_t>(w.tokens.size()) || n < 1) fail("bad token count");
      if (start != l.cached && start != 0) {
        fail(absl::StrCat("request ", id, " resumes at ", start, ", holds ", l.cached));
      }
      if (start == 0 && l.cached > 0) ++l.restarts;
      if (start + n > static_cast<int64_t>(stream.size())) {
        fail(absl::StrCat("request ", id, " runs past its tokens"));
        continue;
      }
      if (!std::equal(w.tokens.begin(), w.tokens.end(), stream.begin() + start)) {
        fail(absl::StrCat("request ", id, ": tokens at ", start, " are not its own"));
      }
      if (w.want_logits != (start + n == static_cast<int64_t>(stream.size()))) {
        fail(absl::StrCat("request ", id, ": want_logits ", w.want_logits, " at ", start + n,
                          " of ", stream.size()));
      }
      // Block tables as cache/README.md says.
      const int64_t B = c.block;
      const int64_t mb = layout->MiddleTokens(start), ma = layout->MiddleTokens(start + n);
      if (w.cache.middle_before != mb || w.cache.middle_after != ma) fail("middle tokens");
      if (static_cast<int64_t>(w.cache.full_blocks.size()) != (start + n - mb + B - 1) / B ||
          static_cast<int64_t>(w.cache.pruned_blocks.size()) != ma / B) {
        fail(absl::StrCat("request ", id, ": ", w.cache.full_blocks.size(), " full + ",
                          w.cache.pruned_blocks.size(), " pruned blocks for ", start + n,
                          " tokens"));
      }
      for (int32_t b : w.cache.full_blocks) {
        if (b < 0 || b >= pool.num_full_blocks || !full_seen.insert(b).second) {
          fail(absl::StrCat("full block ", b, " out of range or shared"));
        }
      }
      for (int32_t b : w.cache.pruned_blocks) {
        if (b < 0 || b >= pool.num_pruned_blocks || !pruned_seen.insert(b).second) {
          fail(absl::StrCat("pruned block ", b, " out of range or shared"));
        }
      }
      l.cached = start + n;
      coverage_.compactions += w.cache.num_compactions();
      coverage_.chunks += !w.want_logits;
      if (!l.first_sched) {
        l.first_sched = step;
        // FCFS: every older live request has been scheduled by now.
        for (const auto& [oid, o] : live) {
          if (o.added && !o.finished && !o.abort_called && o.add_order < l.add_order &&
              !o.first_sched) {
            fail(absl::StrCat("request ", id, " scheduled before the older ", oid));
          }
        }
      }
      if (c.fault_steps.contains(step)) l.fault_steps.insert(step);
    }
    if (tokens > c.max_batched_tokens) fail(absl::StrCat(tokens, " tokens in a step"));
  };
  auto fault_now = [&] { return c.fault_steps.contains(step); };

  auto make_engine = [&](int64_t kv_bytes) -> absl::StatusOr<std::unique_ptr<Engine>> {
    EngineOptions o = BaseOptions(c, mask_path);
    o.kv_cache_bytes = kv_bytes;
    o.target_context = c.target_context;
    o.max_batched_tokens = c.max_batched_tokens;
    o.max_num_seqs = c.max_num_seqs;
    o.admission = c.admission;
    o.wrap_backend = [&](std::unique_ptr<Backend> b) -> std::unique_ptr<Backend> {
      return std::make_unique<CheckingBackend>(std::move(b),
                                               CheckingBackend::Hooks{on_plan, fault_now});
    };
    return Engine::Create(o);
  };
  for (int tries = 0;; ++tries) {
    auto e = make_engine(c.kv_bytes);
    ASSERT_LT(tries, 40) << c.Describe() << " want " << want_capacity << ": "
                         << (e.ok() ? absl::StrCat((*e)->info().kv_capacity_tokens)
                                    : e.status().ToString());
    if (e.ok() && (*e)->info().kv_capacity_tokens >= want_capacity) {
      engine = *std::move(e);
      break;
    }
    c.kv_bytes += std::max<int64_t>(c.kv_bytes / 8, static_cast<int64_t>(full_bytes / 2));
  }
  initial = engine->stats();
  pool = {initial.free_full_blocks, initial.free_pruned_blocks};
  int last_arrival = 0;
  DrawWorkload(c, engine->info().kv_capacity_tokens, &last_arrival);
  SCOPED_TRACE(c.Describe());
  ASSERT_EQ(initial.kv_usage, 0);
  ASSERT_EQ(initial.running + initial.waiting, 0);

  // The oracle: each request alone, unconstrained budget, whole prompt in one step.
  std::map<RequestId, std::vector<int32_t>> expected;
  {
    EngineOptions o = BaseOptions(c, mask_path);
    o.kv_cache_bytes = int64_t{64} << 20;
    o.max_batched_tokens = kMaxModelLen;
    auto e = Engine::Create(o);
    ASSERT_TRUE(e.ok()) << e.status();
    for (const Req& r : c.reqs) expected[r.id] = RunAlone(**e, r);
  }

  for (const Req& r : c.reqs) live[r.id].req = &r;
  int64_t total_tokens = 0;
  for (const Req& r : c.reqs) total_tokens += r.prompt.size() + r.max_tokens;
  const int max_steps = last_arrival + 100 + 4 * static_cast<int>(total_tokens);
  int64_t add_order = 0, last_preemptions = 0;
  std::vector<std::string> errors;
  auto err = [&](const std::string& what) {
    errors.push_back(absl::StrCat("step ", step, ": ", what));
  };
  for (step = 0; step < max_steps; ++step) {
    for (const Req& r : c.reqs) {
      if (r.arrival_step == step) {
        absl::Status s = engine->AddRequest(r.id, r.prompt, Greedy(r.max_tokens));
        ASSERT_TRUE(s.ok()) << s;
        live[r.id].added = true;
        live[r.id].add_order = add_order++;
      }
    }
    for (const Req& r : c.reqs) {
      if (r.abort_step == step) {
        engine->AbortRequest(r.id);
        live[r.id].abort_called = true;
      }
    }
    if (step > last_arrival && !engine->HasWork()) break;
    const std::vector<RequestOutput> outs = engine->Step();
    std::set<RequestId> seen;
    for (const RequestOutput& o : outs) {
      auto it = live.find(o.id);
      if (it == live.end() || !it->second.added) {
        err(absl::StrCat("output for unknown request ", o.id));
        continue;
      }
      Live& l = it->second;
      if (!seen.insert(o.id).second) err(absl::StrCat("two outputs for ", o.id));
      if (l.finished) err(absl::StrCat("output for ", o.id, " after it finished"));
      if (o.tokens.size() > 1) err(absl::StrCat(o.tokens.size(), " tokens in one step"));
      for (const TokenOutput& t : o.tokens) l.output.push_back(t.token);
      if (!o.finished) continue;
      l.finished = true;
      l.reason = o.finish_reason;
      l.error = o.error;
      l.finished_step = step;
      if (o.prompt_tokens != static_cast<int>(l.req->prompt.size()) ||
          o.completion_tokens != static_cast<int>(l.output.size())) {
        err(absl::StrCat("request ", o.id, ": usage ", o.prompt_tokens, " + ", o.completion_tokens,
                         ", saw ", l.output.size(), " tokens"));
      }
    }
    if (!plan_errors.empty()) break;
    // Stats after the step.
    const EngineStats s = engine->stats();
    int n_live = 0;
    for (const auto& [id, l] : live) n_live += l.added && !l.finished;
    if (s.running + s.waiting != n_live) {
      err(absl::StrCat("running ", s.running, " + waiting ", s.waiting, " != live ", n_live));
    }
    if (s.running > c.max_num_seqs) err("running > max_num_seqs");
    coverage_.max_running = std::max(coverage_.max_running, s.running);
    if (engine->HasWork() != (n_live > 0)) err("HasWork disagrees with the live requests");
    if (s.free_full_blocks < 0 || s.free_full_blocks > pool.num_full_blocks ||
        s.free_pruned_blocks < 0 || s.free_pruned_blocks > pool.num_pruned_blocks) {
      err("free block counts out of range");
    }
    const double total = pool.num_full_blocks * full_bytes + pool.num_pruned_blocks * pruned_bytes;
    const double used = (pool.num_full_blocks - s.free_full_blocks) * full_bytes +
                        (pool.num_pruned_blocks - s.free_pruned_blocks) * pruned_bytes;
    if (std::abs(s.kv_usage - used / total) > 1e-12) {
      err(absl::StrCat("kv_usage ", s.kv_usage, " but the free blocks say ", used / total));
    }
    if (s.running == 0 && s.kv_usage != 0) {
      err(absl::StrCat("nothing runs but kv_usage is ", s.kv_usage));
    }
    if (s.num_preemptions < last_preemptions) err("num_preemptions went down");
    last_preemptions = s.num_preemptions;
    if (s.kv_capacity_tokens != initial.kv_capacity_tokens) err("kv_capacity_tokens changed");
    if (!errors.empty()) break;
  }
  ASSERT_TRUE(plan_errors.empty()) << plan_errors.front();
  ASSERT_TRUE(errors.empty()) << errors.front();

  // Everything finished, exactly as it should, and nothing is held.
  for (const Req& r : c.reqs) {
    const Live& l = live[r.id];
    const std::vector<int32_t>& want = expected[r.id];
    SCOPED_TRACE(absl::StrCat("request ", r.id));
    ASSERT_TRUE(l.finished) << "never finished in " << max_steps << " steps (first scheduled "
                            << (l.first_sched ? std::to_string(*l.first_sched) : "never")
                            << ", holds " << l.cached << ")";
    ASSERT_EQ(want.size(), static_cast<size_t>(r.max_tokens));
    const bool prefix = l.output.size() <= want.size() &&
                        std::equal(l.output.begin(), l.output.end(), want.begin());
    EXPECT_TRUE(prefix) << "output differs from the request run alone (" << l.output.size()
                        << " tokens, restarts " << l.restarts << ")";
    switch (l.reason) {
      case FinishReason::kLength:
        EXPECT_EQ(l.output, want);
        break;
      case FinishReason::kAbort:
        EXPECT_TRUE(r.abort_step.has_value()) << "aborted without an abort";
        if (r.abort_step) {
          EXPECT_EQ(l.finished_step, *r.abort_step) << "abort not in its step";
        }
        EXPECT_LT(l.output.size(), want.size());
        break;
      case FinishReason::kError:
        EXPECT_TRUE(l.fault_steps.contains(l.finished_step))
            << "failed without a fault: " << l.error;
        break;
      default:
        ADD_FAILURE() << "finish reason " << FinishReasonName(l.reason);
    }
    // A fault fails exactly the requests of its step.
    if (!l.fault_steps.empty()) {
      EXPECT_EQ(l.reason, FinishReason::kError);
      EXPECT_EQ(l.finished_step, *l.fault_steps.begin());
    }
  }
  const EngineStats end = engine->stats();
  ++coverage_.cases;
  coverage_.requests += static_cast<int>(c.reqs.size());
  coverage_.preemptions += static_cast<int>(end.num_preemptions);
  for (const auto& [id, l] : live) {
    coverage_.restarts += l.restarts;
    coverage_.aborted += l.reason == FinishReason::kAbort;
    coverage_.failed += l.reason == FinishReason::kError;
  }
  EXPECT_FALSE(engine->HasWork());
  EXPECT_EQ(end.running, 0);
  EXPECT_EQ(end.waiting, 0);
  EXPECT_EQ(end.kv_usage, 0);
  EXPECT_EQ(end.free_full_blocks, pool.num_full_blocks);
  EXPECT_EQ(end.free_pruned_blocks, pool.num_pruned_blocks);
  // Reserve admission never preempts a request that runs to max_tokens (all of these do).
  if (c.admission == "reserve") {
    EXPECT_EQ(end.num_preemptions, 0);
  }
  fs::remove(mask_path);
}

constexpr int kSeedsPerTest = 6;

TEST_F(EngineInvariantsTest, DenseReserve) { RunSeeds(false, "reserve", kSeedsPerTest); }
TEST_F(EngineInvariantsTest, DenseOptimistic) { RunSeeds(false, "optimistic", kSeedsPerTest); }
TEST_F(EngineInvariantsTest, LeanKReserve) { RunSeeds(true, "reserve", kSeedsPerTest); }
TEST_F(EngineInvariantsTest, LeanKOptimistic) { RunSeeds(true, "optimistic", kSeedsPerTest); }

// Seeds that failed once. 103 (dense, reserve) and 143 (dense, optimistic): an abort
// between steps left its blocks pending until EndStep, the next step found the free
// list empty and failed the request left alone (103) or every waiting one (143) with
// "the request does not fit in the KV cache" (fixed in Scheduler::Remove / Step).
TEST_F(EngineInvariantsTest, Regressions) {
  RunCase(103, false, "reserve");
  RunCase(143, false, "optimistic");
}

}  // namespace
}  // namespace leank
