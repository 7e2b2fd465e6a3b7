#include "server/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace leank::server {
namespace {

const std::vector<double> kTtftBuckets = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08,
                                          0.1,   0.25,  0.5,  0.75, 1.0,  2.5,  5.0,
                                          7.5,   10,    20,   40,   80};
const std::vector<double> kTokenBuckets = {0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,
                                           0.15,  0.2,   0.3,  0.4,   0.5,  0.75,  1.0,
                                           2.5,   5.0,   7.5,  10,    20};
const std::vector<double> kRequestBuckets = {0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10, 15,
                                             20,  30,  40,  50,  60,  120, 240, 480, 960};

// The shortest text that reads back as `v` ("0.005", not "0.0050000000000000001"), as
// Prometheus' own clients write it: a bucket is selected by its le label's text
// (le="0.005"), so the label has to be the bound as people write it.
std::string Num(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

void Header(std::string* out, const std::string& name, const char* type, const char* help) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

void Scalar(std::string* out, const std::string& name, const char* type, const char* help,
            double v) {
  Header(out, name, type, help);
  absl::StrAppend(out, name, " ", Num(v), "\n");
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double v) {
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  ++counts_[i];
  sum_ += v;
  ++count_;
}

void Histogram::Render(const std::string& name, std::string* out) const {
  int64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    absl::StrAppend(out, name, "_bucket{le=\"", Num(bounds_[i]), "\"} ", cumulative, "\n");
  }
  absl::StrAppend(out, name, "_bucket{le=\"+Inf\"} ", count_, "\n");
  absl::StrAppend(out, name, "_sum ", Num(sum_), "\n", name, "_count ", count_, "\n");
}

Metrics::Metrics()
    : ttft_(kTtftBuckets),
      itl_(kTokenBuckets),
      tpot_(kTokenBuckets),
      e2e_(kRequestBuckets),
      queue_(kRequestBuckets) {
  // Every reason appears from the start, so rate() works on a fresh server.
  for (const char* r : {"stop", "length", "eos", "abort", "error"}) finished_[r] = 0;
  // The codes a request can be refused with start at 0, so that rate() and alerts on
  // them work before the first refusal (a series that appears later has no history).
  for (const char* c : {"invalid_argument", "resource_exhausted", "unavailable"}) rejected_[c] = 0;
}

void Metrics::ObserveQueueTime(double s) {
  std::lock_guard<std::mutex> l(mu_);
  queue_.Observe(s);
}
void Metrics::ObserveFirstToken(double s) {
  std::lock_guard<std::mutex> l(mu_);
  ttft_.Observe(s);
}
void Metrics::ObserveInterToken(double s) {
  std::lock_guard<std::mutex> l(mu_);
  itl_.Observe(s);
}
void Metrics::ObserveFinished(const std::string& reason, double e2e_s, double tpot_s,
                              bool has_tpot) {
  std::lock_guard<std::mutex> l(mu_);
  ++finished_[reason];
  e2e_.Observe(e2e_s);
  if (has_tpot) tpot_.Observe(tpot_s);
}
void Metrics::AddPromptTokens(int64_t n) {
  std::lock_guard<std::mutex> l(mu_);
  prompt_tokens_ += n;
}
void Metrics::AddGenerationTokens(int64_t n) {
  std::lock_guard<std::mutex> l(mu_);
  generation_tokens_ += n;
}
void Metrics::SetEngineState(const EngineStats& stats, int pending, int64_t steps) {
  std::lock_guard<std::mutex> l(mu_);
  engine_ = stats;
  pending_ = pending;
  steps_ = steps;
}
void Metrics::AddRejected(const std::string& code) {
  std::lock_guard<std::mutex> l(mu_);
  ++rejected_[code];
}
void Metrics::SetStreams(int active) {
  std::lock_guard<std::mutex> l(mu_);
  streams_ = active;
}
void Metrics::SetReady(bool ready, bool draining) {
  std::lock_guard<std::mutex> l(mu_);
  ready_ = ready;
  draining_ = draining;
}

std::string Metrics::Render() const {
  std::lock_guard<std::mutex> l(mu_);
  std::string out;
  Scalar(&out, "leank:num_requests_running", "gauge", "Sequences in the running batch.",
         engine_.running);
  Scalar(&out, "leank:num_requests_waiting", "gauge",
         "Requests waiting: in the engine queue plus handed over but not yet enqueued.",
         engine_.waiting + pending_);
  Scalar(&out, "leank:kv_cache_usage_perc", "gauge", "Fraction of KV cache bytes in use (0..1).",
         engine_.kv_usage);
  Scalar(&out, "leank:kv_cache_capacity_tokens", "gauge",
         "Tokens one sequence could hold in an empty KV pool.", engine_.kv_capacity_tokens);
  Scalar(&out, "leank:kv_cache_free_full_blocks", "gauge", "Free full KV blocks.",
         engine_.free_full_blocks);
  Scalar(&out, "leank:kv_cache_free_pruned_blocks", "gauge", "Free pruned KV blocks.",
         engine_.free_pruned_blocks);
  Scalar(&out, "leank:num_preemptions_total", "counter",
         "Sequences preempted (recomputed later) since start.", engine_.num_preemptions);
  Scalar(&out, "leank:engine_steps_total", "counter", "Engine steps since start.", steps_);
  Scalar(&out, "leank:num_active_streams", "gauge", "Generate calls in flight.", streams_);
  Scalar(&out, "leank:server_ready", "gauge", "1 once the model is loaded and warmed up.",
         ready_ && !draining_ ? 1 : 0);
  Scalar(&out, "leank:server_draining", "gauge", "1 while shutting down.", draining_ ? 1 : 0);
  Scalar(&out, "leank:prompt_tokens_total", "counter", "Prompt tokens prefilled.", prompt_tokens_);
  Scalar(&out, "leank:generation_tokens_total", "counter", "Tokens generated.", generation_tokens_);
  Header(&out, "leank:request_success_total", "counter", "Finished requests by finish reason.");
  for (const auto& [reason, n] : finished_) {
    absl::StrAppend(&out, "leank:request_success_total{finished_reason=\"", reason, "\"} ", n,
                    "\n");
  }
  Header(&out, "leank:request_rejected_total", "counter",
         "Requests refused before reaching the engine, by gRPC code.");
  for (const auto& [code, n] : rejected_) {
    absl::StrAppend(&out, "leank:request_rejected_total{code=\"", code, "\"} ", n, "\n");
  }
  const struct {
    const char* name;
    const char* help;
    const Histogram* h;
  } hists[] = {
      {"leank:time_to_first_token_seconds", "Arrival to first token.", &ttft_},
      {"leank:inter_token_latency_seconds", "Time between consecutive tokens of a request.", &itl_},
      {"leank:time_per_output_token_seconds",
       "Mean time per output token after the first, per request.", &tpot_},
      {"leank:e2e_request_latency_seconds", "Arrival to finish.", &e2e_},
      {"leank:request_queue_time_seconds", "Arrival to first scheduled.", &queue_},
  };
  for (const auto& h : hists) {
    Header(&out, h.name, "histogram", h.help);
    h.h->Render(h.name, &out);
  }
  return out;
}

}  // namespace leank::server
