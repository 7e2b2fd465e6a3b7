#pragma once
// Per-request records as the client saw them, and the report built from them: TTFT,
// TPOT, ITL and end-to-end latency distributions, throughput, goodput under SLOs,
// errors by status code. Times are client-side, from just before the call to each
// received chunk.

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace leank::bench {

struct RequestRecord {
  int64_t index = 0;               // position in the run (0-based, launch order)
  int input_tokens_requested = 0;  // prompt length the tester meant to send
  int max_tokens = 0;              // output length asked for
  double send_s = 0;               // on the run clock, when the call was made
  // Token-bearing chunks: seconds since send, and tokens in each.
  std::vector<double> chunk_s;
  std::vector<int> chunk_tokens;
  double end_s = 0;               // seconds since send of the last chunk (or of the failure)
  int output_tokens = 0;          // counted by the client: sum of chunk_tokens
  int server_prompt_tokens = -1;  // usage of the final chunk; -1 when none came
  int server_completion_tokens = -1;
  std::string finish_reason;  // "length", "eos", "stop", "abort", "error", "" = none
  bool ok = false;
  std::string error_code;  // gRPC status code name, or FINISH_REASON_ERROR
  std::string error_message;
};

// Service-level objectives of goodput (milliseconds; infinity = not constrained).
struct Slo {
  double ttft_ms = std::numeric_limits<double>::infinity();
  double tpot_ms = std::numeric_limits<double>::infinity();
  double e2el_ms = std::numeric_limits<double>::infinity();
  bool any() const;
};

// "ttft:200,tpot:50" (keys ttft, tpot, e2el; values in ms, > 0).
absl::StatusOr<Slo> ParseSlo(const std::string& spec);

// Linear interpolation between order statistics (numpy's default), q in [0, 100].
double Percentile(const std::vector<double>& sorted, double q);

struct Distribution {
  int64_t count = 0;
  double mean = 0, stddev = 0, min = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};
Distribution Summarize(std::vector<double> values);

// Per-request derived latencies (ms); NaN when undefined (e.g. TPOT of 1 token).
struct RequestLatency {
  double ttft_ms, tpot_ms, e2el_ms;
};
RequestLatency LatencyOf(const RequestRecord& r);
bool MeetsSlo(const RequestRecord& r, const Slo& slo);

struct Report {
  int64_t completed = 0, failed = 0;
  double duration_s = 0;  // first send to last finish
  int64_t input_tokens = 0, output_tokens = 0;
  double request_throughput = 0, output_throughput = 0, total_throughput = 0;
  // Goodput is only defined under SLOs: without any, good_requests/goodput are 0 here
  // and null in the JSON (vLLM writes None), not a copy of the request throughput.
  bool goodput_measured = false;
  int64_t good_requests = 0;
  double goodput = 0;  // requests per second that met every SLO
  Distribution ttft_ms, tpot_ms, itl_ms, e2el_ms;
  std::map<std::string, int64_t> errors;  // code name -> count
  // Completed requests whose client-counted output tokens differ from the server's
  // usage (or whose prompt length differs from what was meant): a broken count.
  int64_t usage_mismatches = 0;
  int64_t prompt_mismatches = 0;
  double peak_concurrency = 0;  // most requests in flight at once, from the records
};

// `records` are the measured requests; duration_s <= 0 derives it from the records.
Report BuildReport(const std::vector<RequestRecord>& records, const Slo& slo,
                   double duration_s = 0);

nlohmann::json ReportToJson(const Report& r);
nlohmann::json RequestsToJson(const std::vector<RequestRecord>& records);
// The human table (vLLM benchmark_serving layout).
std::string FormatReport(const Report& r, const std::string& title, const Slo& slo);

}  // namespace leank::bench
