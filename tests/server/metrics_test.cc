#include "server/metrics.h"

#include "gtest/gtest.h"

namespace leank::server {
namespace {

TEST(Histogram, RendersCumulativeBuckets) {
  Histogram h({0.1, 1.0});
  h.Observe(0.05);
  h.Observe(0.5);
  h.Observe(0.7);
  h.Observe(3.0);
  std::string out;
  h.Render("x", &out);
  EXPECT_NE(out.find("x_bucket{le=\"0.1\"} 1\n"), std::string::npos) << out;
  EXPECT_NE(out.find("x_bucket{le=\"1\"} 3\n"), std::string::npos) << out;
  EXPECT_NE(out.find("x_bucket{le=\"+Inf\"} 4\n"), std::string::npos) << out;
  EXPECT_NE(out.find("x_count 4\n"), std::string::npos) << out;
  EXPECT_NE(out.find("x_sum 4.25"), std::string::npos) << out;
}

// Bounds and values are written as people write them (prometheus_client's repr), so
// le="0.005" selects the bucket: "%.17g" wrote le="0.0050000000000000001".
TEST(Histogram, BoundsAndValuesAreTheShortestRoundTripText) {
  Histogram h({0.005, 0.3, 2.5, 80});
  h.Observe(0.1);
  h.Observe(0.2);
  std::string out;
  h.Render("x", &out);
  EXPECT_NE(out.find("x_bucket{le=\"0.005\"} 0\n"), std::string::npos) << out;
  EXPECT_NE(out.find("x_bucket{le=\"0.3\"} 2\n"), std::string::npos) << out;
  EXPECT_NE(out.find("x_bucket{le=\"2.5\"} 2\n"), std::string::npos) << out;
  EXPECT_NE(out.find("x_bucket{le=\"80\"} 2\n"), std::string::npos) << out;
  EXPECT_NE(out.find("x_sum 0.30000000000000004\n"), std::string::npos) << out;  // 0.1 + 0.2
  EXPECT_EQ(out.find("000000000001"), std::string::npos) << out;

  Metrics m;
  const std::string all = m.Render();
  EXPECT_NE(all.find("leank:time_to_first_token_seconds_bucket{le=\"0.005\"} 0\n"),
            std::string::npos);
  EXPECT_NE(all.find("leank:e2e_request_latency_seconds_bucket{le=\"0.3\"} 0\n"),
            std::string::npos);
  EXPECT_EQ(all.find("00000000000"), std::string::npos) << all;
}

TEST(Metrics, VllmStyleNames) {
  Metrics m;
  EngineStats st;
  st.running = 3;
  st.waiting = 2;
  st.kv_usage = 0.25;
  st.num_preemptions = 7;
  m.SetEngineState(st, /*pending=*/1, /*steps=*/10);
  m.ObserveFirstToken(0.02);
  m.ObserveFinished("stop", 1.0, 0.01, true);
  m.AddPromptTokens(11);
  m.AddGenerationTokens(5);
  const std::string out = m.Render();
  EXPECT_NE(out.find("leank:num_requests_running 3\n"), std::string::npos) << out;
  EXPECT_NE(out.find("leank:num_requests_waiting 3\n"), std::string::npos);
  EXPECT_NE(out.find("leank:kv_cache_usage_perc 0.25\n"), std::string::npos);
  EXPECT_NE(out.find("leank:num_preemptions_total 7\n"), std::string::npos);
  EXPECT_NE(out.find("leank:prompt_tokens_total 11\n"), std::string::npos);
  EXPECT_NE(out.find("leank:generation_tokens_total 5\n"), std::string::npos);
  EXPECT_NE(out.find("leank:request_success_total{finished_reason=\"stop\"} 1\n"),
            std::string::npos);
  EXPECT_NE(out.find("leank:request_success_total{finished_reason=\"abort\"} 0\n"),
            std::string::npos);
  EXPECT_NE(out.find("leank:time_to_first_token_seconds_count 1\n"), std::string::npos);
  EXPECT_NE(out.find("# TYPE leank:e2e_request_latency_seconds histogram\n"), std::string::npos);
}

// Refusal counters exist at 0 from the start (they appeared only with the first
// refusal, so rate() over a fresh server's series had nothing to compare with).
TEST(Metrics, RejectedCountersStartAtZero) {
  Metrics m;
  std::string out = m.Render();
  for (const char* code : {"invalid_argument", "resource_exhausted", "unavailable"}) {
    EXPECT_NE(out.find(std::string("leank:request_rejected_total{code=\"") + code + "\"} 0\n"),
              std::string::npos)
        << code << "\n"
        << out;
  }
  m.AddRejected("invalid_argument");
  m.AddRejected("not_found");
  out = m.Render();
  EXPECT_NE(out.find("leank:request_rejected_total{code=\"invalid_argument\"} 1\n"),
            std::string::npos);
  EXPECT_NE(out.find("leank:request_rejected_total{code=\"not_found\"} 1\n"), std::string::npos);
}

}  // namespace
}  // namespace leank::server
