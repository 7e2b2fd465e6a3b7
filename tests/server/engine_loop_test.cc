#include "server/engine_loop.h"

#include <chrono>
#include <functional>
#include <latch>
#include <thread>

#include "gtest/gtest.h"
#include "tests/e2e/fake_engine.h"

namespace leank::server {
namespace {

using std::chrono::milliseconds;

std::unique_ptr<Engine> Fake(int max_waiting = 1024, int step_us = 200,
                             std::function<void(int64_t)> in_step = nullptr) {
  EngineOptions o;
  o.max_waiting = max_waiting;
  o.max_num_seqs = 4;
  auto e = testing::CreateFakeEngine(o, {step_us, std::move(in_step)});
  EXPECT_TRUE(e.ok());
  return *std::move(e);
}

// Holds the fake engine inside step `at` until the test has acted: Step() then knows
// nothing of what the test submits or aborts meanwhile, whatever the machine's load.
class StepGate {
 public:
  explicit StepGate(int64_t at) : at_(at) {}
  std::function<void(int64_t)> Hook() {
    return [this](int64_t step) {
      if (step != at_) return;
      running_.count_down();
      acted_.wait();
    };
  }
  void WaitRunning() { running_.wait(); }
  void Release() { acted_.count_down(); }

 private:
  const int64_t at_;
  std::latch running_{1}, acted_{1};
};

GenerationParams Params(int max_tokens) {
  GenerationParams p;
  p.max_tokens = max_tokens;
  p.sampling.temperature = 0;
  p.ignore_eos = true;
  return p;
}

// A bound for waits on the loop thread that only a hang can exceed, on a loaded CI
// machine too (ctest -j2 on 2 cores): the tests assert the state waited for, never
// how long it took.
constexpr std::chrono::seconds kHang(60);

// Reads the channel until it closes (bounded by kHang); returns all outputs.
std::vector<RequestOutput> Drain(RequestChannel& ch, absl::Status* rejected = nullptr) {
  std::vector<RequestOutput> all;
  const auto until = std::chrono::steady_clock::now() + kHang;
  while (std::chrono::steady_clock::now() < until) {
    RequestChannel::Batch b = ch.Wait(milliseconds(10));
    for (auto& o : b.outputs) all.push_back(std::move(o));
    if (rejected) *rejected = b.rejected;
    if (b.closed) return all;
  }
  ADD_FAILURE() << "channel never closed";
  return all;
}

// Polls `done` until it holds or kHang passes; the caller then asserts the state itself.
void WaitUntil(const std::function<bool()>& done) {
  const auto until = std::chrono::steady_clock::now() + kHang;
  while (!done() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(milliseconds(5));
  }
}

TEST(EngineLoop, StreamsOutputsUntilFinished) {
  Metrics metrics;
  EngineLoop loop(Fake(), 16, &metrics);
  loop.Start();
  auto ch = loop.Submit(1, "t1", {104, 105}, Params(5));
  ASSERT_TRUE(ch.ok());
  std::vector<RequestOutput> outs = Drain(**ch);
  ASSERT_EQ(outs.size(), 5u);
  EXPECT_TRUE(outs.back().finished);
  EXPECT_EQ(outs.back().finish_reason, FinishReason::kLength);
  // The loop publishes its counts right after the step that finished the request.
  WaitUntil([&] { return loop.InFlight() == 0; });
  EXPECT_EQ(loop.InFlight(), 0);
  EXPECT_NE(metrics.Render().find("leank:generation_tokens_total 5\n"), std::string::npos);
}

TEST(EngineLoop, UnobservedRequestLeavesTheMetricsAlone) {
  // The server's warm-up generation: no client sent it, so /metrics must not count it
  // (its counters would never match the usage clients received).
  Metrics metrics;
  EngineLoop loop(Fake(), 16, &metrics);
  loop.Start();
  auto warm = loop.Submit(1, "warmup", {104, 105}, Params(2), std::chrono::steady_clock::now(),
                          /*observe=*/false);
  ASSERT_TRUE(warm.ok());
  ASSERT_EQ(Drain(**warm).size(), 2u);
  auto ch = loop.Submit(2, "t2", {104, 105, 106}, Params(3));
  ASSERT_TRUE(ch.ok());
  ASSERT_EQ(Drain(**ch).size(), 3u);
  const std::string out = metrics.Render();
  EXPECT_NE(out.find("leank:prompt_tokens_total 3\n"), std::string::npos) << out;
  EXPECT_NE(out.find("leank:generation_tokens_total 3\n"), std::string::npos) << out;
  EXPECT_NE(out.find("leank:request_success_total{finished_reason=\"length\"} 1\n"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("leank:time_to_first_token_seconds_count 1\n"), std::string::npos) << out;
  EXPECT_NE(out.find("leank:inter_token_latency_seconds_count 2\n"), std::string::npos) << out;
  EXPECT_NE(out.find("leank:e2e_request_latency_seconds_count 1\n"), std::string::npos) << out;
  EXPECT_NE(out.find("leank:request_queue_time_seconds_count 1\n"), std::string::npos) << out;
}

TEST(EngineLoop, QueueTimeAndTtftCountFromArrivalNotFromTheEngine) {
  // 200 ms steps. B arrives while A's second step runs (the gate holds that step until
  // B is submitted), so it waits in the inbox for at least that step's 200 ms sleep
  // before the engine even sees it; that wait is queue time.
  Metrics metrics;
  StepGate gate(/*at=*/1);
  EngineLoop loop(Fake(1024, 200000, gate.Hook()), 16, &metrics);
  loop.Start();
  auto a = loop.Submit(1, "a", {104, 105}, Params(3));
  ASSERT_TRUE(a.ok());
  gate.WaitRunning();
  const auto arrival = std::chrono::steady_clock::now();
  auto b = loop.Submit(2, "b", {104, 106}, Params(1), arrival);
  gate.Release();
  ASSERT_TRUE(b.ok());
  std::vector<RequestOutput> outs = Drain(**b);
  const double seen_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - arrival).count();
  ASSERT_EQ(outs.size(), 1u);
  const RequestOutput& fin = outs.back();
  // The engine alone would say ~0 (scheduled at once after AddRequest) and ~0.2 s.
  EXPECT_GE(fin.queue_time_s, 0.2);
  EXPECT_GE(fin.ttft_s, fin.queue_time_s + 0.2);  // plus B's own 200 ms step
  EXPECT_LE(fin.ttft_s, seen_s);
  Drain(**a);
  const std::string out = metrics.Render();
  const size_t at = out.find("leank:request_queue_time_seconds_sum ");
  ASSERT_NE(at, std::string::npos);
  EXPECT_GE(std::stod(out.substr(at + 37)), 0.2) << out.substr(at, 60);
}

TEST(EngineLoop, AbortEndsTheRequestAndFreesItsBlocks) {
  // The abort arrives while step 2 runs (the gate holds it): the loop applies it
  // before step 3, which ends the request. Steps 0-2 gave one token each.
  Metrics metrics;
  StepGate gate(/*at=*/2);
  EngineLoop loop(Fake(1024, 1000, gate.Hook()), 16, &metrics);
  loop.Start();
  auto ch = loop.Submit(1, "t1", {104, 105}, Params(1000));
  ASSERT_TRUE(ch.ok());
  gate.WaitRunning();
  loop.Abort(1);
  gate.Release();
  std::vector<RequestOutput> outs = Drain(**ch);
  ASSERT_EQ(outs.size(), 4u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(outs[i].tokens.size(), 1u) << i;
  EXPECT_TRUE(outs.back().finished);
  EXPECT_EQ(outs.back().finish_reason, FinishReason::kAbort);
  EXPECT_TRUE(outs.back().tokens.empty());
  // The loop publishes its state after the step; nothing steps once the request ends.
  WaitUntil([&] { return loop.state().live == 0; });
  EXPECT_EQ(loop.state().engine.kv_usage, 0.0);
  EXPECT_EQ(loop.state().live, 0);
  EXPECT_EQ(loop.state().steps, 4);
}

TEST(EngineLoop, EngineRefusalsArriveOnTheChannel) {
  Metrics metrics;
  EngineLoop loop(Fake(), 16, &metrics);
  loop.Start();
  auto ch = loop.Submit(1, "t1", {9999}, Params(5));  // outside the fake vocabulary
  ASSERT_TRUE(ch.ok());
  absl::Status rejected;
  Drain(**ch, &rejected);
  EXPECT_EQ(rejected.code(), absl::StatusCode::kInvalidArgument);
}

TEST(EngineLoop, BoundedInbox) {
  Metrics metrics;
  EngineLoop loop(Fake(), 2, &metrics);  // not started: everything stays in the inbox
  EXPECT_TRUE(loop.Submit(1, "a", {1}, Params(1)).ok());
  EXPECT_TRUE(loop.Submit(2, "b", {1}, Params(1)).ok());
  EXPECT_EQ(loop.Submit(3, "c", {1}, Params(1)).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(EngineLoop, StopClosesEveryStream) {
  // Step 1 running means step 0 gave the request its first token: it is live when
  // Stop() comes, and its 1000 tokens of 10 ms steps are 10 s of sleep from done.
  Metrics metrics;
  StepGate gate(/*at=*/1);
  auto loop = std::make_unique<EngineLoop>(Fake(1024, 10000, gate.Hook()), 16, &metrics);
  loop->Start();
  auto ch = loop->Submit(1, "t1", {104}, Params(1000));
  ASSERT_TRUE(ch.ok());
  gate.WaitRunning();
  gate.Release();  // Stop() joins the loop thread: let it leave the step
  loop->Stop();
  std::vector<RequestOutput> outs = Drain(**ch);
  ASSERT_GE(outs.size(), 2u);
  EXPECT_EQ(outs.front().tokens.size(), 1u);
  EXPECT_FALSE(outs.front().finished);
  EXPECT_TRUE(outs.back().finished);
  EXPECT_EQ(outs.back().finish_reason, FinishReason::kAbort);
  EXPECT_EQ(loop->Submit(2, "t2", {104}, Params(1)).status().code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace leank::server
