#pragma once
// The engine thread. It alone calls the (single-threaded) Engine: requests and
// aborts arrive through a bounded inbox, each request's outputs leave through its
// own RequestChannel, which the RPC thread serving that stream reads.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/core/engine.h"
#include "server/metrics.h"

namespace leank::server {

// One request's outputs, from the engine thread to its RPC thread.
class RequestChannel {
 public:
  struct Batch {
    std::vector<RequestOutput> outputs;
    absl::Status rejected;  // non-OK: the engine refused the request (nothing else comes)
    bool closed = false;    // a finished output or a rejection was delivered
  };

  // Engine thread.
  void Push(RequestOutput output);
  void Reject(absl::Status status);
  // RPC thread: whatever arrived, waiting up to `timeout` when nothing has.
  Batch Wait(std::chrono::milliseconds timeout);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<RequestOutput> queue_;
  absl::Status rejected_;
  bool closed_ = false;
};

struct LoopState {
  EngineStats engine;
  int pending = 0;  // submitted, not yet handed to the engine
  int live = 0;     // handed to the engine, not finished
  int64_t steps = 0;
};

class EngineLoop {
 public:
  EngineLoop(std::unique_ptr<Engine> engine, int max_pending, Metrics* metrics);
  ~EngineLoop();

  // Safe from any thread: the const, immutable parts (tokenizer, config, info)
  // are read-only after load and shared with RPC threads.
  const Engine& engine() const { return *engine_; }

  void Start();
  // Stops the thread; every live request gets a final kAbort output first.
  void Stop();

  // ResourceExhausted when `max_pending` requests already wait for the engine thread;
  // Unavailable once stopped. Engine-side refusals (validation, full engine queue)
  // arrive as the channel's `rejected`. `arrival` is when the server received the
  // request: queue time, time to first token and end-to-end latency (the metrics and
  // the outputs' queue_time_s and ttft_s) count from it, so they include the wait in
  // the inbox while the engine thread finishes a step. `observe` false leaves the
  // metrics alone (the server's own warm-up request, which no client sent).
  absl::StatusOr<std::shared_ptr<RequestChannel>> Submit(
      RequestId id, std::string log_id, std::vector<int32_t> prompt, GenerationParams params,
      std::chrono::steady_clock::time_point arrival = std::chrono::steady_clock::now(),
      bool observe = true);
  // The request ends with kAbort at the next step; its blocks are freed there.
  void Abort(RequestId id);
  void AbortAll();

  LoopState state() const;
  int InFlight() const;  // pending + live

 private:
  struct Submission {
    RequestId id;
    std::string log_id;
    std::vector<int32_t> prompt;
    GenerationParams params;
    std::shared_ptr<RequestChannel> channel;
    std::chrono::steady_clock::time_point arrival;
    bool observe = true;
  };
  struct Live {
    std::string log_id;
    std::shared_ptr<RequestChannel> channel;
    std::chrono::steady_clock::time_point arrival, first_token, last_token;
    std::chrono::steady_clock::time_point added;  // handed to the engine (its clock's zero)
    int64_t tokens = 0;
    bool prompt_counted = false;
    bool observe = true;  // false: not counted in the metrics
  };

  void Run();
  void AddSubmissions(std::vector<Submission>& subs);
  void Dispatch(std::vector<RequestOutput>& outputs);
  void Publish();

  std::unique_ptr<Engine> engine_;
  const int max_pending_;
  Metrics* metrics_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Submission> inbox_;
  std::vector<RequestId> aborts_;
  bool abort_all_ = false;
  bool stop_ = false;
  bool engine_has_work_ = false;
  LoopState state_;
  std::thread thread_;

  // Engine thread only.
  std::unordered_map<RequestId, Live> live_;
  int64_t steps_ = 0;
};

}  // namespace leank::server
