#include "tools/bench/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <set>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace leank::bench {

bool Slo::any() const {
  return std::isfinite(ttft_ms) || std::isfinite(tpot_ms) || std::isfinite(e2el_ms);
}

absl::StatusOr<Slo> ParseSlo(const std::string& spec) {
  Slo slo;
  std::set<std::string> seen;
  for (absl::string_view part : absl::StrSplit(spec, ',', absl::SkipEmpty())) {
    std::vector<std::string> kv = absl::StrSplit(part, ':');
    double v = 0;
    if (kv.size() != 2 || !absl::SimpleAtod(kv[1], &v) || !(v > 0) || !std::isfinite(v)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--goodput: '", std::string(part),
                       "': expected KEY:MS with MS a finite number > 0 (KEY ttft, tpot, e2el)"));
    }
    if (!seen.insert(kv[0]).second) {
      return absl::InvalidArgumentError(absl::StrCat("--goodput: '", kv[0], "' is given twice"));
    }
    if (kv[0] == "ttft") {
      slo.ttft_ms = v;
    } else if (kv[0] == "tpot") {
      slo.tpot_ms = v;
    } else if (kv[0] == "e2el") {
      slo.e2el_ms = v;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--goodput: unknown key '", kv[0], "' (expected ttft, tpot or e2el)"));
    }
  }
  return slo;
}

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const double pos = q / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double frac = pos - static_cast<double>(lo);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

Distribution Summarize(std::vector<double> v) {
  Distribution d;
  v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return std::isnan(x); }), v.end());
  if (v.empty()) return d;
  std::sort(v.begin(), v.end());
  d.count = static_cast<int64_t>(v.size());
  d.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  double ss = 0;
  for (double x : v) ss += (x - d.mean) * (x - d.mean);
  d.stddev = std::sqrt(ss / static_cast<double>(v.size()));
  d.min = v.front();
  d.max = v.back();
  d.p50 = Percentile(v, 50);
  d.p90 = Percentile(v, 90);
  d.p99 = Percentile(v, 99);
  return d;
}

RequestLatency LatencyOf(const RequestRecord& r) {
  const double nan = std::nan("");
  RequestLatency l{nan, nan, r.end_s * 1000.0};
  if (r.chunk_s.empty()) return l;
  l.ttft_ms = r.chunk_s.front() * 1000.0;
  // TPOT: decode time per token after the first (vLLM's definition).
  if (r.output_tokens > 1) l.tpot_ms = (l.e2el_ms - l.ttft_ms) / (r.output_tokens - 1);
  return l;
}

bool MeetsSlo(const RequestRecord& r, const Slo& slo) {
  if (!r.ok) return false;
  const RequestLatency l = LatencyOf(r);
  if (!(l.ttft_ms <= slo.ttft_ms) && std::isfinite(slo.ttft_ms)) return false;
  // A single-token answer has no TPOT: it cannot break that SLO.
  if (!std::isnan(l.tpot_ms) && l.tpot_ms > slo.tpot_ms) return false;
  return l.e2el_ms <= slo.e2el_ms;
}

Report BuildReport(const std::vector<RequestRecord>& records, const Slo& slo, double duration_s) {
  Report rep;
  rep.goodput_measured = slo.any();
  std::vector<double> ttft, tpot, itl, e2el;
  double first_send = std::numeric_limits<double>::infinity(), last_end = 0;
  std::vector<std::pair<double, int>> events;  // (time, +1 send / -1 end)
  for (const RequestRecord& r : records) {
    first_send = std::min(first_send, r.send_s);
    last_end = std::max(last_end, r.send_s + r.end_s);
    events.emplace_back(r.send_s, +1);
    events.emplace_back(r.send_s + r.end_s, -1);
    if (!r.ok) {
      ++rep.failed;
      ++rep.errors[r.error_code.empty() ? "UNKNOWN" : r.error_code];
      continue;
    }
    ++rep.completed;
    rep.output_tokens += r.output_tokens;
    rep.input_tokens +=
        r.server_prompt_tokens >= 0 ? r.server_prompt_tokens : r.input_tokens_requested;
    if (r.server_completion_tokens != r.output_tokens) ++rep.usage_mismatches;
    if (r.server_prompt_tokens != r.input_tokens_requested) ++rep.prompt_mismatches;
    const RequestLatency l = LatencyOf(r);
    ttft.push_back(l.ttft_ms);
    tpot.push_back(l.tpot_ms);
    e2el.push_back(l.e2el_ms);
    // ITL: one value per token after the first. The gap between token-bearing chunks is
    // shared evenly by the tokens of a chunk that carries several; tokens that came with
    // the first token have a gap of 0 (its wait is TTFT). So mean ITL = TPOT whenever the
    // last chunk carries tokens.
    if (!r.chunk_tokens.empty()) {
      for (int k = 1; k < r.chunk_tokens[0]; ++k) itl.push_back(0.0);
    }
    for (size_t i = 1; i < r.chunk_s.size(); ++i) {
      const double gap_ms = (r.chunk_s[i] - r.chunk_s[i - 1]) * 1000.0;
      for (int k = 0; k < r.chunk_tokens[i]; ++k) itl.push_back(gap_ms / r.chunk_tokens[i]);
    }
    if (rep.goodput_measured && MeetsSlo(r, slo)) ++rep.good_requests;
  }
  std::sort(events.begin(), events.end());
  int in_flight = 0;
  for (const auto& [t, delta] : events) {
    in_flight += delta;
    rep.peak_concurrency = std::max(rep.peak_concurrency, static_cast<double>(in_flight));
  }
  rep.duration_s =
      duration_s > 0 ? duration_s : (records.empty() ? 0 : std::max(0.0, last_end - first_send));
  if (rep.duration_s > 0) {
    rep.request_throughput = rep.completed / rep.duration_s;
    rep.output_throughput = rep.output_tokens / rep.duration_s;
    rep.total_throughput = (rep.input_tokens + rep.output_tokens) / rep.duration_s;
    rep.goodput = rep.good_requests / rep.duration_s;
  }
  rep.ttft_ms = Summarize(ttft);
  rep.tpot_ms = Summarize(tpot);
  rep.itl_ms = Summarize(itl);
  rep.e2el_ms = Summarize(e2el);
  return rep;
}

namespace {

nlohmann::json DistJson(const Distribution& d) {
  return {{"count", d.count}, {"mean", d.mean}, {"std", d.stddev}, {"min", d.min},
          {"p50", d.p50},     {"p90", d.p90},   {"p99", d.p99},    {"max", d.max}};
}

nlohmann::json NumberOrNull(double v) { return std::isfinite(v) ? nlohmann::json(v) : nullptr; }

}  // namespace

nlohmann::json ReportToJson(const Report& r) {
  return {{"completed", r.completed},
          {"failed", r.failed},
          {"duration_s", r.duration_s},
          {"input_tokens", r.input_tokens},
          {"output_tokens", r.output_tokens},
          {"request_throughput", r.request_throughput},
          {"output_throughput", r.output_throughput},
          {"total_throughput", r.total_throughput},
          {"good_requests",
           r.goodput_measured ? nlohmann::json(r.good_requests) : nlohmann::json(nullptr)},
          {"goodput", r.goodput_measured ? nlohmann::json(r.goodput) : nlohmann::json(nullptr)},
          {"ttft_ms", DistJson(r.ttft_ms)},
          {"tpot_ms", DistJson(r.tpot_ms)},
          {"itl_ms", DistJson(r.itl_ms)},
          {"e2el_ms", DistJson(r.e2el_ms)},
          {"errors", r.errors},
          {"usage_mismatches", r.usage_mismatches},
          {"prompt_mismatches", r.prompt_mismatches},
          {"peak_concurrency", r.peak_concurrency}};
}

nlohmann::json RequestsToJson(const std::vector<RequestRecord>& records) {
  nlohmann::json out = nlohmann::json::array();
  for (const RequestRecord& r : records) {
    const RequestLatency l = LatencyOf(r);
    nlohmann::json j = {{"index", r.index},
                        {"send_s", r.send_s},
                        {"ok", r.ok},
                        {"input_tokens", r.input_tokens_requested},
                        {"max_tokens", r.max_tokens},
                        {"output_tokens", r.output_tokens},
                        {"server_prompt_tokens", r.server_prompt_tokens},
                        {"server_completion_tokens", r.server_completion_tokens},
                        {"finish_reason", r.finish_reason},
                        {"ttft_ms", NumberOrNull(l.ttft_ms)},
                        {"tpot_ms", NumberOrNull(l.tpot_ms)},
                        {"e2el_ms", NumberOrNull(l.e2el_ms)}};
    if (!r.ok) {
      j["error_code"] = r.error_code;
      j["error"] = r.error_message;
    }
    out.push_back(std::move(j));
  }
  return out;
}

namespace {

void Line(std::ostringstream& os, const std::string& label, const std::string& value) {
  char buf[160];
  std::snprintf(buf, sizeof(buf), "%-40s %14s\n", label.c_str(), value.c_str());
  os << buf;
}
std::string Num(double v, int decimals = 2) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}
void Section(std::ostringstream& os, const std::string& title) {
  const int width = 55;
  const int pad = std::max(0, width - static_cast<int>(title.size()) - 2);
  os << std::string(pad / 2, '-') << " " << title << " " << std::string(pad - pad / 2, '-') << "\n";
}
void DistLines(std::ostringstream& os, const std::string& name, const Distribution& d) {
  Section(os, name);
  Line(os, "Mean " + name + " (ms):", Num(d.mean));
  Line(os, "P50 " + name + " (ms):", Num(d.p50));
  Line(os, "P90 " + name + " (ms):", Num(d.p90));
  Line(os, "P99 " + name + " (ms):", Num(d.p99));
}

}  // namespace

std::string FormatReport(const Report& r, const std::string& title, const Slo& slo) {
  std::ostringstream os;
  os << std::string(17, '=') << " Serving Benchmark Result " << std::string(12, '=') << "\n";
  if (!title.empty()) Line(os, "Run:", title);
  Line(os, "Successful requests:", std::to_string(r.completed));
  Line(os, "Failed requests:", std::to_string(r.failed));
  for (const auto& [code, n] : r.errors) Line(os, "  " + code + ":", std::to_string(n));
  Line(os, "Benchmark duration (s):", Num(r.duration_s));
  Line(os, "Total input tokens:", std::to_string(r.input_tokens));
  Line(os, "Total generated tokens:", std::to_string(r.output_tokens));
  Line(os, "Request throughput (req/s):", Num(r.request_throughput));
  if (slo.any()) Line(os, "Request goodput (req/s):", Num(r.goodput));
  Line(os, "Output token throughput (tok/s):", Num(r.output_throughput));
  Line(os, "Total token throughput (tok/s):", Num(r.total_throughput));
  Line(os, "Peak concurrency:", Num(r.peak_concurrency, 0));
  if (r.usage_mismatches + r.prompt_mismatches > 0) {
    Line(os, "Token count mismatches (usage/prompt):",
         std::to_string(r.usage_mismatches) + "/" + std::to_string(r.prompt_mismatches));
  }
  DistLines(os, "TTFT", r.ttft_ms);
  DistLines(os, "TPOT", r.tpot_ms);
  DistLines(os, "ITL", r.itl_ms);
  DistLines(os, "E2EL", r.e2el_ms);
  os << std::string(55, '=') << "\n";
  return os.str();
}

}  // namespace leank::bench
