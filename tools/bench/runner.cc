#include "tools/bench/runner.h"

#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "tools/bench/arrival.h"
#include "tools/cli/client_common.h"

namespace leank::bench {

v1::GenerateRequest BuildRequest(const BenchPrompt& prompt, const v1::GenerateRequest& base) {
  v1::GenerateRequest req = base;
  if (!prompt.token_ids.empty()) {
    req.mutable_token_ids()->mutable_ids()->Assign(prompt.token_ids.begin(),
                                                   prompt.token_ids.end());
  } else if (!prompt.messages.empty()) {
    for (const auto& [role, content] : prompt.messages) {
      v1::ChatMessage* m = req.mutable_messages()->add_messages();
      m->set_role(role);
      m->set_content(content);
    }
  } else {
    req.set_text(prompt.text);
  }
  req.set_max_tokens(prompt.output_tokens);
  return req;
}

namespace {

// Threads of the open loop: finished ones are joined as new ones start, the rest at
// the end, so a long run does not pile up unjoined threads.
class ThreadSet {
 public:
  ~ThreadSet() { JoinAll(); }
  void Spawn(std::function<void()> fn) {
    Reap();
    std::lock_guard<std::mutex> lock(mu_);
    const uint64_t id = next_id_++;
    running_.emplace(id, std::thread([this, id, fn = std::move(fn)] {
                       fn();
                       // Blocks until Spawn has stored this thread (it holds mu_).
                       std::lock_guard<std::mutex> l(mu_);
                       finished_.push_back(std::move(running_[id]));
                       running_.erase(id);
                     }));
  }
  void JoinAll() {
    for (;;) {
      Reap();
      std::unique_lock<std::mutex> lock(mu_);
      if (running_.empty() && finished_.empty()) return;
      lock.unlock();
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

 private:
  void Reap() {
    std::vector<std::thread> done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done.swap(finished_);
    }
    for (std::thread& t : done) t.join();
  }
  std::mutex mu_;
  uint64_t next_id_ = 0;
  std::map<uint64_t, std::thread> running_;
  std::vector<std::thread> finished_;
};

// A counting gate for --max-concurrency (0 = open).
class Gate {
 public:
  explicit Gate(int slots) : slots_(slots) {}
  void Enter() {
    if (slots_ <= 0) return;
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return in_ < slots_; });
    ++in_;
  }
  void Leave() {
    if (slots_ <= 0) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      --in_;
    }
    cv_.notify_one();
  }

 private:
  const int slots_;
  int in_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace

void CallRegistry::Add(grpc::ClientContext* ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  calls_.insert(ctx);
  if (cancelled_) ctx->TryCancel();
}

void CallRegistry::Remove(grpc::ClientContext* ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  calls_.erase(ctx);
}

void CallRegistry::CancelAll() {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_ = true;
  for (grpc::ClientContext* ctx : calls_) ctx->TryCancel();
}

RequestRecord RunOne(v1::LeankService::StubInterface& stub, const v1::GenerateRequest& req,
                     double timeout_s, Clock* clock, CallRegistry* calls) {
  RequestRecord rec;
  rec.max_tokens = req.max_tokens();
  grpc::ClientContext ctx;
  ctx.set_deadline(client::DeadlineIn(timeout_s));
  struct Registration {
    CallRegistry* calls;
    grpc::ClientContext* ctx;
    ~Registration() {
      if (calls != nullptr) calls->Remove(ctx);
    }
  } registration{calls, &ctx};
  if (calls != nullptr) calls->Add(&ctx);
  rec.send_s = clock->Now();
  std::unique_ptr<grpc::ClientReaderInterface<v1::GenerateResponse>> reader =
      stub.Generate(&ctx, req);
  v1::GenerateResponse chunk;
  double last_s = 0;
  while (reader->Read(&chunk)) {
    last_s = clock->Now() - rec.send_s;
    if (chunk.token_ids_size() > 0) {
      rec.chunk_s.push_back(last_s);
      rec.chunk_tokens.push_back(chunk.token_ids_size());
      rec.output_tokens += chunk.token_ids_size();
    }
    if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      rec.finish_reason = client::FinishReasonName(chunk.finish_reason());
      if (chunk.has_usage()) {
        rec.server_prompt_tokens = chunk.usage().prompt_tokens();
        rec.server_completion_tokens = chunk.usage().completion_tokens();
      }
      if (chunk.finish_reason() == v1::FINISH_REASON_ERROR) {
        rec.error_code = "FINISH_REASON_ERROR";
        rec.error_message = chunk.error();
      }
    }
  }
  const grpc::Status status = reader->Finish();
  rec.end_s = last_s > 0 ? last_s : clock->Now() - rec.send_s;
  if (!status.ok()) {
    rec.end_s = clock->Now() - rec.send_s;
    rec.error_code = client::StatusCodeName(status.error_code());
    rec.error_message = status.error_message();
  } else if (rec.finish_reason.empty() && rec.error_code.empty()) {
    rec.error_code = "NO_FINISH_REASON";  // OK status but the stream never finished
    rec.error_message = "stream ended without a final chunk";
  }
  rec.ok = rec.error_code.empty();
  return rec;
}

RunResult RunLoad(std::shared_ptr<v1::LeankService::StubInterface> stub,
                  const std::vector<BenchPrompt>& prompts, const v1::GenerateRequest& base,
                  const RunOptions& o, Clock* clock, Progress* progress,
                  const std::atomic<bool>* stop_flag) {
  RunResult result;
  if (prompts.empty() || o.num_requests <= 0) return result;
  std::mutex mu;  // guards result.records
  const double start = clock->Now();
  CallRegistry calls;
  // Ctrl-C: cancel what is in flight rather than wait up to the request timeout.
  std::atomic<bool> finished{false};
  std::thread canceller([&] {
    while (!finished.load()) {
      if (stop_flag != nullptr && stop_flag->load()) {
        calls.CancelAll();
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  auto should_stop = [&] {
    if (stop_flag != nullptr && stop_flag->load()) return true;
    if (o.max_errors > 0 && progress->errors.load() >= o.max_errors) return true;
    return clock->Now() - start >= o.duration_s;
  };
  auto run_index = [&](int64_t i) {
    const BenchPrompt& p = prompts[i % static_cast<int64_t>(prompts.size())];
    RequestRecord rec = RunOne(*stub, BuildRequest(p, base), o.timeout_s, clock, &calls);
    rec.index = i;
    rec.input_tokens_requested = p.input_tokens;
    progress->output_tokens += rec.output_tokens;
    if (!rec.ok) ++progress->errors;
    ++progress->done;
    std::lock_guard<std::mutex> lock(mu);
    result.records.push_back(std::move(rec));
  };

  if (!o.open_loop()) {
    std::atomic<int64_t> next{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < std::max(1, o.concurrency); ++c) {
      clients.emplace_back([&] {
        for (;;) {
          if (should_stop()) return;
          const int64_t i = next.fetch_add(1);
          if (i >= o.num_requests) return;
          ++progress->started;
          run_index(i);
        }
      });
    }
    for (std::thread& t : clients) t.join();
  } else {
    ArrivalProcess arrivals(o.request_rate, o.burstiness, o.seed);
    Gate gate(o.max_concurrency);
    ThreadSet threads;
    DispatchLimits limits;
    limits.max_requests = o.num_requests;
    limits.duration_s = o.duration_s;
    Dispatch(
        clock, &arrivals, limits,
        [&](int64_t i) {
          ++progress->started;
          threads.Spawn([&, i] {
            gate.Enter();
            run_index(i);
            gate.Leave();
          });
        },
        should_stop);
    threads.JoinAll();
  }
  finished = true;
  canceller.join();
  double first = std::numeric_limits<double>::infinity(), last = start;
  for (const RequestRecord& r : result.records) {
    first = std::min(first, r.send_s);
    last = std::max(last, r.send_s + r.end_s);
  }
  result.duration_s = result.records.empty() ? 0 : last - first;
  return result;
}

}  // namespace leank::bench
