#pragma once
// Drives the load: closed loop (a fixed number of clients, each sending its next
// request when the previous one ends) or open loop (arrivals from an ArrivalProcess,
// optionally capped in flight). One thread per request in flight, each timing its own
// stream; every call has a deadline, so a dead server ends the run with errors.

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "leank/v1/leank.grpc.pb.h"
#include "tools/bench/clock.h"
#include "tools/bench/metrics.h"
#include "tools/bench/workload.h"

namespace leank::bench {

// The request for `prompt`: its input and max_tokens over `base` (sampling fields).
v1::GenerateRequest BuildRequest(const BenchPrompt& prompt, const v1::GenerateRequest& base);

// Calls in flight, so that an interrupted run (Ctrl-C) can cancel them instead of
// waiting for their deadlines. Once CancelAll ran, new calls are cancelled at once.
class CallRegistry {
 public:
  void Add(grpc::ClientContext* ctx);
  void Remove(grpc::ClientContext* ctx);
  void CancelAll();

 private:
  std::mutex mu_;
  std::set<grpc::ClientContext*> calls_;
  bool cancelled_ = false;
};

// One streamed call, timed on `clock` (send_s is clock->Now() at the call).
RequestRecord RunOne(v1::LeankService::StubInterface& stub, const v1::GenerateRequest& req,
                     double timeout_s, Clock* clock, CallRegistry* calls = nullptr);

// Live counters, read by the progress bar.
struct Progress {
  std::atomic<int64_t> started{0};
  std::atomic<int64_t> done{0};
  std::atomic<int64_t> errors{0};
  std::atomic<int64_t> output_tokens{0};
};

struct RunOptions {
  int concurrency = 1;  // closed loop clients (used when request_rate is infinite)
  double request_rate = std::numeric_limits<double>::infinity();  // open loop when finite
  double burstiness = 1.0;
  int max_concurrency = 0;   // open loop: most requests in flight (0 = unbounded)
  int64_t num_requests = 0;  // requests to send; prompts are cycled when fewer
  double duration_s = std::numeric_limits<double>::infinity();  // stop sending after this
  double timeout_s = 600;                                       // per request
  int64_t max_errors = 0;  // stop sending after this many failures (0 = never)
  uint64_t seed = 0;
  bool open_loop() const { return request_rate < std::numeric_limits<double>::infinity(); }
};

struct RunResult {
  std::vector<RequestRecord> records;  // in completion order
  double duration_s = 0;               // first send to last finish, on the clock
};

// Runs the load. `stop` (may be null) ends sending early (Ctrl-C) and cancels the
// requests in flight (they end as CANCELLED); otherwise in-flight requests are waited
// for (they have deadlines).
RunResult RunLoad(std::shared_ptr<v1::LeankService::StubInterface> stub,
                  const std::vector<BenchPrompt>& prompts, const v1::GenerateRequest& base,
                  const RunOptions& options, Clock* clock, Progress* progress,
                  const std::atomic<bool>* stop);

}  // namespace leank::bench
