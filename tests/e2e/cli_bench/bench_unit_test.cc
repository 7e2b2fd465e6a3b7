// Pure parts of leank-bench: the arrival process on a fake clock, length
// distributions, synthetic prompts, dataset loading, metrics and the report.
#include <cmath>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <sstream>

#include "gtest/gtest.h"
#include "tests/e2e/cli_bench/run_process.h"
#include "tools/bench/arrival.h"
#include "tools/bench/metrics.h"
#include "tools/bench/progress_bar.h"
#include "tools/bench/workload.h"

namespace leank::bench {
namespace {

std::vector<double> LaunchTimes(double rate, double burstiness, uint64_t seed, int64_t n,
                                double duration = std::numeric_limits<double>::infinity()) {
  FakeClock clock;
  clock.Advance(123.0);  // the schedule is relative to the clock at the call
  ArrivalProcess arrivals(rate, burstiness, seed);
  std::vector<double> times;
  DispatchLimits limits;
  limits.max_requests = n;
  limits.duration_s = duration;
  const int64_t launched = Dispatch(&clock, &arrivals, limits, [&](int64_t i) {
    EXPECT_EQ(i, static_cast<int64_t>(times.size()));
    times.push_back(clock.Now() - 123.0);
  });
  EXPECT_EQ(launched, static_cast<int64_t>(times.size()));
  return times;
}

std::vector<double> Gaps(const std::vector<double>& times) {
  std::vector<double> gaps;
  double prev = 0;
  for (double t : times) {
    gaps.push_back(t - prev);
    prev = t;
  }
  return gaps;
}

double Mean(const std::vector<double>& v) {
  return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

double Cv2(const std::vector<double>& v) {  // squared coefficient of variation
  const double m = Mean(v);
  double ss = 0;
  for (double x : v) ss += (x - m) * (x - m);
  return ss / static_cast<double>(v.size()) / (m * m);
}

TEST(Arrival, PoissonMeanGapWithinTenPercentOnFakeClock) {
  for (double rate : {0.5, 4.0, 250.0}) {
    for (uint64_t seed : {1u, 2u, 3u}) {
      const std::vector<double> t = LaunchTimes(rate, 1.0, seed, 1000);
      ASSERT_EQ(t.size(), 1000u);
      const std::vector<double> gaps = Gaps(t);
      for (double g : gaps) ASSERT_GE(g, 0.0);
      EXPECT_NEAR(Mean(gaps), 1.0 / rate, 0.1 / rate) << "rate " << rate << " seed " << seed;
      // Exponential gaps: CV^2 = 1 (a fixed-interval bug would give 0).
      EXPECT_NEAR(Cv2(gaps), 1.0, 0.25) << "rate " << rate;
    }
  }
}

TEST(Arrival, GammaBurstinessKeepsMeanAndChangesVariance) {
  for (double b : {0.25, 4.0}) {
    const std::vector<double> gaps = Gaps(LaunchTimes(10.0, b, 7, 4000));
    EXPECT_NEAR(Mean(gaps), 0.1, 0.01) << "burstiness " << b;
    EXPECT_NEAR(Cv2(gaps), 1.0 / b, 0.3 / b) << "burstiness " << b;  // gamma: CV^2 = 1/k
  }
}

TEST(Arrival, DurationBoundsTheSchedule) {
  const std::vector<double> t = LaunchTimes(10.0, 1.0, 5, 1 << 30, /*duration=*/100.0);
  EXPECT_GT(t.size(), 900u);
  EXPECT_LT(t.size(), 1100u);
  EXPECT_LT(t.back(), 100.0);
}

TEST(Arrival, InfiniteRateSendsEverythingAtOnce) {
  const std::vector<double> t = LaunchTimes(std::numeric_limits<double>::infinity(), 1.0, 1, 50);
  ASSERT_EQ(t.size(), 50u);
  for (double x : t) EXPECT_EQ(x, 0.0);
}

TEST(Arrival, StopEndsDispatch) {
  FakeClock clock;
  ArrivalProcess arrivals(100.0, 1.0, 3);
  int64_t n = 0;
  const int64_t launched = Dispatch(
      &clock, &arrivals, {}, [&](int64_t) { ++n; }, [&] { return n >= 17; });
  EXPECT_EQ(launched, 17);
}

TEST(Lengths, DistributionsStayInRangeWithTheRightMean) {
  std::mt19937_64 rng(11);
  LengthSpec fixed{LengthDist::kFixed, 100, 30};
  for (int i = 0; i < 100; ++i) EXPECT_EQ(SampleLength(fixed, rng), 100);
  LengthSpec uni{LengthDist::kUniform, 100, 30};
  std::vector<double> u;
  for (int i = 0; i < 5000; ++i) {
    const int v = SampleLength(uni, rng);
    ASSERT_GE(v, 70);
    ASSERT_LE(v, 130);
    u.push_back(v);
  }
  EXPECT_NEAR(Mean(u), 100, 2);
  LengthSpec norm{LengthDist::kNormal, 100, 20};
  std::vector<double> nv;
  for (int i = 0; i < 5000; ++i) nv.push_back(SampleLength(norm, rng));
  EXPECT_NEAR(Mean(nv), 100, 2);
  EXPECT_NEAR(std::sqrt(Cv2(nv)) * 100, 20, 2);
  LengthSpec tiny{LengthDist::kNormal, 2, 50};
  for (int i = 0; i < 1000; ++i) ASSERT_GE(SampleLength(tiny, rng), 1);
  EXPECT_FALSE(ParseLengthDist("zipf").ok());
  EXPECT_EQ(*ParseLengthDist("uniform"), LengthDist::kUniform);
}

TEST(Workload, SyntheticPromptsHaveExactLengthsFromTheCorpus) {
  std::vector<int32_t> corpus(97);
  std::iota(corpus.begin(), corpus.end(), 1000);
  LengthSpec in{LengthDist::kUniform, 300, 100};
  LengthSpec out{LengthDist::kFixed, 16, 0};
  const std::vector<BenchPrompt> p = MakeSyntheticPrompts(corpus, 50, in, out, 0, 42);
  ASSERT_EQ(p.size(), 50u);
  std::set<int32_t> firsts;
  for (const BenchPrompt& x : p) {
    EXPECT_EQ(static_cast<int>(x.token_ids.size()), x.input_tokens);
    EXPECT_EQ(x.output_tokens, 16);
    firsts.insert(x.token_ids[0]);
    for (size_t i = 1; i < x.token_ids.size(); ++i) {  // consecutive, wrapping, corpus text
      ASSERT_EQ(x.token_ids[i], 1000 + (x.token_ids[i - 1] - 1000 + 1) % 97);
    }
  }
  EXPECT_GT(firsts.size(), 10u);  // random offsets, not one prompt repeated
  // Clamped to the context: input + output <= max_model_len.
  LengthSpec big{LengthDist::kFixed, 1000, 0};
  for (const BenchPrompt& x : MakeSyntheticPrompts(corpus, 5, big, out, 512, 1)) {
    EXPECT_EQ(x.input_tokens + x.output_tokens, 512);
    EXPECT_EQ(static_cast<int>(x.token_ids.size()), x.input_tokens);
  }
}

// Counts whitespace-separated words (+1 for "BOS" with special tokens, +3 for a chat
// template), standing in for the server's Tokenize.
absl::StatusOr<int> WordCounter(const BenchPrompt& p, bool special) {
  auto words = [](const std::string& s) {
    std::istringstream in(s);
    std::string w;
    int n = 0;
    while (in >> w) ++n;
    return n;
  };
  if (!p.messages.empty()) {
    int n = 3;
    for (const auto& [role, content] : p.messages) n += words(content) + 2;
    return n;
  }
  return words(p.text) + (special ? 1 : 0);
}

std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path = testing::TempPath(name);
  std::ofstream(path) << text;
  return path;
}

TEST(Workload, LoadsShareGptJsonlAndOpenAiMessages) {
  const std::string path = WriteFile(
      "convs.jsonl",
      R"({"id": "a", "conversations": [{"from": "human", "value": "one two three four five"}, {"from": "gpt", "value": "six seven eight nine ten eleven"}]})"
      "\n"
      R"({"id": "b", "conversations": [{"from": "human", "value": "too short"}, {"from": "gpt", "value": "a b c d e"}]})"
      "\n\n"
      R"({"id": "c", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "w1 w2 w3 w4"}, {"role": "assistant", "content": "r1 r2 r3 r4 r5"}]})"
      "\n"
      R"({"id": "d", "conversations": [{"from": "human", "value": "no reply here at all"}]})"
      "\n"
      R"({"prompt": "p1 p2 p3 p4 p5 p6", "output_len": 9})"
      "\n");
  DatasetOptions o;
  o.shuffle = false;
  o.as_messages = false;
  absl::StatusOr<std::vector<BenchPrompt>> p = LoadConversations(path, o, WordCounter);
  ASSERT_TRUE(p.ok()) << p.status();
  // a: 5 words + BOS, reply 6; b: prompt 2+1 < 4 skipped; c: system + user as text;
  // d: no reply skipped; prompt row: output_len given.
  ASSERT_EQ(p->size(), 3u);
  EXPECT_EQ((*p)[0].text, "one two three four five");
  EXPECT_EQ((*p)[0].input_tokens, 6);
  EXPECT_EQ((*p)[0].output_tokens, 6);
  EXPECT_EQ((*p)[1].text, "be brief\n\nw1 w2 w3 w4");
  EXPECT_EQ((*p)[1].input_tokens, 7);
  EXPECT_EQ((*p)[1].output_tokens, 5);
  EXPECT_EQ((*p)[2].output_tokens, 9);

  o.as_messages = true;
  o.fixed_output_len = 32;  // then "b" (short prompt, but a fixed output) is kept
  o.max_model_len = 45;
  p = LoadConversations(path, o, WordCounter);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->size(), 4u);
  ASSERT_EQ((*p)[2].messages.size(), 2u);
  EXPECT_EQ((*p)[2].messages[0].first, "system");
  EXPECT_EQ((*p)[2].messages[1].second, "w1 w2 w3 w4");
  EXPECT_EQ((*p)[2].input_tokens, 3 + (2 + 2) + (4 + 2));  // 13 + 32 = 45 fits
  for (const BenchPrompt& x : *p) EXPECT_EQ(x.output_tokens, 32);
  o.max_model_len = 40;  // now only "b" (7 + 32) fits
  p = LoadConversations(path, o, WordCounter);
  ASSERT_TRUE(p.ok());
  ASSERT_EQ(p->size(), 1u);
  EXPECT_EQ((*p)[0].messages[0].second, "too short");

  o.max_prompts = 1;
  o.max_model_len = 0;
  EXPECT_EQ(LoadConversations(path, o, WordCounter)->size(), 1u);
}

TEST(Workload, AppliesVllmShareGptLengthCapsByDefault) {
  // vLLM's is_valid_sequence skips prompts over 1024 tokens and prompt + output over
  // 2048, whatever the model's context; only max_model_len was applied here, so a
  // ShareGPT run sampled a different (longer) population than benchmark_serving's.
  auto words = [](int n, const std::string& w) {
    std::string s;
    for (int i = 0; i < n; ++i) s += (i ? " " : "") + w;
    return s;
  };
  auto row = [&](int prompt_words, int reply_words) {
    return R"({"conversations": [{"from": "human", "value": ")" + words(prompt_words, "p") +
           R"("}, {"from": "gpt", "value": ")" + words(reply_words, "r") + R"("}]})" + "\n";
  };
  // Prompt tokens = words + 1 (BOS, as text); reply tokens = words.
  const std::string path = WriteFile("caps.jsonl", row(1023, 10) +        // prompt 1024: kept
                                                       row(1024, 10) +    // prompt 1025: skipped
                                                       row(1000, 1048) +  // total 2049: skipped
                                                       row(1000, 1047));  // total 2048: kept
  DatasetOptions o;
  o.shuffle = false;
  o.as_messages = false;
  o.max_model_len = 8192;
  absl::StatusOr<std::vector<BenchPrompt>> p = LoadConversations(path, o, WordCounter);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->size(), 2u);
  EXPECT_EQ((*p)[0].input_tokens, 1024);
  EXPECT_EQ((*p)[1].input_tokens + (*p)[1].output_tokens, 2048);
  // 0 lifts the caps (max_model_len still applies).
  o.max_input_len = 0;
  o.max_total_len = 0;
  p = LoadConversations(path, o, WordCounter);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->size(), 4u);
  o.max_model_len = 2048;
  EXPECT_EQ(LoadConversations(path, o, WordCounter)->size(), 3u);
}

TEST(Workload, SkipsAnEmptyPromptInsteadOfFailingTheLoad) {
  // As the server: Tokenize refuses an empty text (INVALID_ARGUMENT "text: empty").
  auto counter = [](const BenchPrompt& p, bool special) -> absl::StatusOr<int> {
    if (p.messages.empty() && p.text.empty()) {
      return absl::UnavailableError("Tokenize: INVALID_ARGUMENT: text: empty");
    }
    return WordCounter(p, special);
  };
  const std::string path = WriteFile(
      "empty_prompts.jsonl",
      R"({"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "a b c d e"}]})"
      "\n"
      R"({"prompt": "", "output_len": 9})"
      "\n"
      R"({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": ""}, {"role": "assistant", "content": "r1 r2 r3 r4"}]})"
      "\n"
      R"({"conversations": [{"from": "human", "value": "one two three four"}, {"from": "gpt", "value": "five six seven eight"}]})"
      "\n");
  DatasetOptions o;
  o.shuffle = false;
  for (bool as_messages : {false, true}) {
    o.as_messages = as_messages;
    absl::StatusOr<std::vector<BenchPrompt>> p = LoadConversations(path, o, counter);
    ASSERT_TRUE(p.ok()) << p.status();  // was: the whole load failed on the first row
    ASSERT_EQ(p->size(), 1u);
    EXPECT_EQ(as_messages ? (*p)[0].messages.back().second : (*p)[0].text, "one two three four");
  }
}

TEST(Workload, LoadsAJsonArrayAndNamesTheBadLine) {
  const std::string arr = WriteFile(
      "convs.json",
      R"([{"conversations": [{"from": "human", "value": "a b c d e"}, {"from": "gpt", "value": "f g h i j"}]}])");
  DatasetOptions o;
  o.as_messages = false;
  absl::StatusOr<std::vector<BenchPrompt>> p = LoadConversations(arr, o, WordCounter);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->size(), 1u);

  const std::string bad = WriteFile("bad.jsonl", "{\"prompt\": \"a b c d\"}\n{not json\n");
  p = LoadConversations(bad, o, WordCounter);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(std::string(p.status().message()).find(":2: invalid JSON"), std::string::npos)
      << p.status();
  EXPECT_FALSE(LoadConversations("/nonexistent/x.jsonl", o, WordCounter).ok());
  const std::string none = WriteFile("none.jsonl", "{\"x\": 1}\n");
  EXPECT_FALSE(LoadConversations(none, o, WordCounter).ok());
}

TEST(Metrics, PercentileIsNumpyLinear) {
  std::vector<double> v = {1, 2, 3, 4, 10};
  EXPECT_DOUBLE_EQ(Percentile(v, 50), 3);
  EXPECT_DOUBLE_EQ(Percentile(v, 90), 4 + 0.6 * 6);  // numpy.percentile(v, 90) = 7.6
  EXPECT_DOUBLE_EQ(Percentile(v, 0), 1);
  EXPECT_DOUBLE_EQ(Percentile(v, 100), 10);
  EXPECT_DOUBLE_EQ(Percentile({5}, 99), 5);
}

TEST(Metrics, SloParsing) {
  absl::StatusOr<Slo> s = ParseSlo("ttft:200,tpot:50");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->ttft_ms, 200);
  EXPECT_EQ(s->tpot_ms, 50);
  EXPECT_FALSE(std::isfinite(s->e2el_ms));
  EXPECT_TRUE(s->any());
  EXPECT_FALSE(ParseSlo("")->any());
  EXPECT_FALSE(ParseSlo("ttft").ok());
  EXPECT_FALSE(ParseSlo("ttft:-1").ok());
  EXPECT_FALSE(ParseSlo("latency:5").ok());
  // Not a number of milliseconds: "inf" was taken as "no SLO" without a word, and an
  // SLO given twice silently kept the last one.
  for (const char* bad : {"ttft:inf", "tpot:infinity", "e2el:1e400", "ttft:nan",
                          "ttft:100,ttft:200", "ttft:1:2", "ttft:"}) {
    absl::StatusOr<Slo> b = ParseSlo(bad);
    EXPECT_FALSE(b.ok()) << bad;
    EXPECT_EQ(std::string(b.status().message()).rfind("--goodput:", 0), 0u) << b.status();
  }
}

RequestRecord Rec(double send, std::vector<double> chunks, std::vector<int> tokens, int usage) {
  RequestRecord r;
  r.send_s = send;
  r.chunk_s = chunks;
  r.chunk_tokens = tokens;
  r.output_tokens = std::accumulate(tokens.begin(), tokens.end(), 0);
  r.end_s = chunks.back();
  r.server_completion_tokens = usage;
  r.server_prompt_tokens = 10;
  r.input_tokens_requested = 10;
  r.ok = true;
  r.finish_reason = "length";
  return r;
}

TEST(Metrics, ReportFromKnownRecords) {
  std::vector<RequestRecord> recs;
  // TTFT 100 ms, then chunks of 1, 2, 1 tokens every 20 ms: 5 tokens, e2e 160 ms,
  // TPOT (160-100)/4 = 15 ms; ITL 20, 10, 10, 20.
  recs.push_back(Rec(0.0, {0.1, 0.12, 0.14, 0.16}, {1, 1, 2, 1}, 5));
  // TTFT 300 ms, 2 tokens, e2e 400: TPOT 100 ms; ITL 100. Usage says 3: a mismatch.
  recs.push_back(Rec(0.05, {0.3, 0.4}, {1, 1}, 3));
  RequestRecord fail;
  fail.send_s = 0.5;
  fail.end_s = 0.01;
  fail.error_code = "RESOURCE_EXHAUSTED";
  recs.push_back(fail);
  fail.error_code = "UNAVAILABLE";
  recs.push_back(fail);
  recs.push_back(fail);

  Slo slo = *ParseSlo("ttft:200,tpot:50");
  const Report r = BuildReport(recs, slo);
  EXPECT_EQ(r.completed, 2);
  EXPECT_EQ(r.failed, 3);
  EXPECT_EQ(r.errors.at("UNAVAILABLE"), 2);
  EXPECT_EQ(r.errors.at("RESOURCE_EXHAUSTED"), 1);
  EXPECT_DOUBLE_EQ(r.duration_s, 0.51);  // first send 0 to last end 0.5 + 0.01
  EXPECT_EQ(r.output_tokens, 7);
  EXPECT_EQ(r.input_tokens, 20);
  EXPECT_NEAR(r.output_throughput, 7 / 0.51, 1e-9);
  EXPECT_NEAR(r.ttft_ms.mean, 200, 1e-9);
  EXPECT_NEAR(r.ttft_ms.p50, 200, 1e-9);
  EXPECT_NEAR(r.tpot_ms.min, 15, 1e-9);
  EXPECT_NEAR(r.tpot_ms.max, 100, 1e-9);
  EXPECT_EQ(r.itl_ms.count, 5);  // 4 from the first request, 1 from the second
  EXPECT_NEAR(r.itl_ms.mean, (20 + 10 + 10 + 20 + 100) / 5.0, 1e-9);
  EXPECT_NEAR(r.e2el_ms.max, 400, 1e-9);
  EXPECT_EQ(r.good_requests, 1);  // the second breaks ttft and tpot
  EXPECT_NEAR(r.goodput, 1 / 0.51, 1e-9);
  EXPECT_EQ(r.usage_mismatches, 1);
  EXPECT_EQ(r.prompt_mismatches, 0);
  EXPECT_EQ(r.peak_concurrency, 3);  // the three failures overlap in [0.5, 0.51]

  const nlohmann::json j = ReportToJson(r);
  EXPECT_EQ(j["errors"]["UNAVAILABLE"], 2);
  EXPECT_EQ(j["ttft_ms"]["count"], 2);
  const nlohmann::json reqs = RequestsToJson(recs);
  ASSERT_EQ(reqs.size(), 5u);
  EXPECT_TRUE(reqs[2]["ttft_ms"].is_null());
  EXPECT_EQ(reqs[2]["error_code"], "RESOURCE_EXHAUSTED");
  const std::string table = FormatReport(r, "closed loop, concurrency 2", slo);
  EXPECT_NE(table.find("Request goodput (req/s):"), std::string::npos);
  EXPECT_NE(table.find("UNAVAILABLE:"), std::string::npos);
  EXPECT_NE(table.find("P99 ITL (ms):"), std::string::npos);
}

TEST(Metrics, ItlHasOneValuePerTokenAfterTheFirstEvenInTheFirstChunk) {
  // First chunk at 100 ms with 3 tokens, then 1 token at 200 ms: 4 tokens, TPOT
  // (200 - 100) / 3. The two tokens that came with the first one arrived 0 ms after it.
  const Report r = BuildReport({Rec(0.0, {0.1, 0.2}, {3, 1}, 4)}, Slo{});
  EXPECT_NEAR(r.tpot_ms.mean, 100.0 / 3, 1e-9);
  EXPECT_EQ(r.itl_ms.count, 3);
  EXPECT_NEAR(r.itl_ms.mean, r.tpot_ms.mean, 1e-9);
  EXPECT_NEAR(r.itl_ms.min, 0, 1e-12);
  EXPECT_NEAR(r.itl_ms.max, 100, 1e-9);
}

TEST(Metrics, GoodputIsNullWithoutSlos) {
  // vLLM writes request_goodput None without --goodput; this wrote the request
  // throughput, as if every request had met an SLO nobody set.
  const std::vector<RequestRecord> recs = {Rec(0.0, {0.1, 0.2}, {1, 1}, 2)};
  const Report r = BuildReport(recs, Slo{});
  EXPECT_FALSE(r.goodput_measured);
  EXPECT_EQ(r.good_requests, 0);
  const nlohmann::json j = ReportToJson(r);
  EXPECT_TRUE(j["goodput"].is_null()) << j["goodput"];
  EXPECT_TRUE(j["good_requests"].is_null()) << j["good_requests"];
  EXPECT_GT(j["request_throughput"].get<double>(), 0);
  EXPECT_EQ(FormatReport(r, "", Slo{}).find("goodput"), std::string::npos);
  // With an SLO it is a number, 0 included.
  const Report g = BuildReport(recs, *ParseSlo("ttft:50"));
  EXPECT_TRUE(g.goodput_measured);
  EXPECT_EQ(ReportToJson(g)["goodput"], 0.0);
  EXPECT_EQ(ReportToJson(g)["good_requests"], 0);
}

TEST(Metrics, EmptyRunIsAReportNotACrash) {
  const Report r = BuildReport({}, Slo{});
  EXPECT_EQ(r.completed, 0);
  EXPECT_EQ(r.duration_s, 0);
  EXPECT_EQ(r.request_throughput, 0);
  EXPECT_NE(FormatReport(r, "", Slo{}).find("Successful requests:"), std::string::npos);
}

TEST(Progress, RendersCountsRatesAndBar) {
  const std::string s = ProgressBar::Render(30, 25, 2, 500, 10.0, 100, 0);
  EXPECT_NE(s.find("[######.................."), std::string::npos) << s;
  EXPECT_NE(s.find("25/100 req"), std::string::npos) << s;
  EXPECT_NE(s.find("in-flight 5"), std::string::npos) << s;
  EXPECT_NE(s.find("50.0 tok/s"), std::string::npos) << s;
  EXPECT_NE(s.find("errors 2"), std::string::npos) << s;
  // By duration, with no request total.
  const std::string d =
      ProgressBar::Render(3, 3, 0, 0, 5.0, std::numeric_limits<int64_t>::max(), 10.0);
  EXPECT_NE(d.find("[############............] 3 req"), std::string::npos) << d;
}

}  // namespace
}  // namespace leank::bench
