#include "server/engine_loop.h"

#include <utility>

#include "server/status.h"
#include "spdlog/spdlog.h"

namespace leank::server {
namespace {

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

void RequestChannel::Push(RequestOutput output) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (closed_) return;
    closed_ = output.finished;
    queue_.push_back(std::move(output));
  }
  cv_.notify_all();
}

void RequestChannel::Reject(absl::Status status) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (closed_) return;
    rejected_ = std::move(status);
    closed_ = true;
  }
  cv_.notify_all();
}

RequestChannel::Batch RequestChannel::Wait(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait_for(l, timeout, [&] { return !queue_.empty() || !rejected_.ok(); });
  Batch b;
  b.outputs.assign(std::make_move_iterator(queue_.begin()), std::make_move_iterator(queue_.end()));
  queue_.clear();
  b.rejected = rejected_;
  b.closed = closed_;
  return b;
}

EngineLoop::EngineLoop(std::unique_ptr<Engine> engine, int max_pending, Metrics* metrics)
    : engine_(std::move(engine)), max_pending_(max_pending), metrics_(metrics) {}

EngineLoop::~EngineLoop() { Stop(); }

void EngineLoop::Start() {
  std::lock_guard<std::mutex> l(mu_);
  if (thread_.joinable() || stop_) return;
  thread_ = std::thread([this] { Run(); });
}

void EngineLoop::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<std::shared_ptr<RequestChannel>> EngineLoop::Submit(
    RequestId id, std::string log_id, std::vector<int32_t> prompt, GenerationParams params,
    std::chrono::steady_clock::time_point arrival, bool observe) {
  auto channel = std::make_shared<RequestChannel>();
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stop_) return absl::UnavailableError("the engine is stopped");
    if (static_cast<int>(inbox_.size()) + state_.engine.waiting >= max_pending_) {
      return absl::ResourceExhaustedError(
          "the request queue is full; retry later (see --max-waiting)");
    }
    inbox_.push_back(
        {id, std::move(log_id), std::move(prompt), std::move(params), channel, arrival, observe});
    state_.pending = static_cast<int>(inbox_.size());
  }
  cv_.notify_all();
  return channel;
}

void EngineLoop::Abort(RequestId id) {
  {
    std::lock_guard<std::mutex> l(mu_);
    aborts_.push_back(id);
  }
  cv_.notify_all();
}

void EngineLoop::AbortAll() {
  {
    std::lock_guard<std::mutex> l(mu_);
    abort_all_ = true;
  }
  cv_.notify_all();
}

LoopState EngineLoop::state() const {
  std::lock_guard<std::mutex> l(mu_);
  return state_;
}

int EngineLoop::InFlight() const {
  std::lock_guard<std::mutex> l(mu_);
  return state_.pending + state_.live;
}

void EngineLoop::AddSubmissions(std::vector<Submission>& subs) {
  for (Submission& s : subs) {
    const int prompt_len = static_cast<int>(s.prompt.size());
    const auto added = std::chrono::steady_clock::now();
    absl::Status st = engine_->AddRequest(s.id, std::move(s.prompt), std::move(s.params));
    if (!st.ok()) {
      spdlog::info("[{}] refused by the engine: {}", s.log_id, st.ToString());
      if (s.observe) metrics_->AddRejected(StatusCodeLabel(st.code()));
      s.channel->Reject(std::move(st));
      continue;
    }
    spdlog::debug("[{}] enqueued ({} prompt tokens)", s.log_id, prompt_len);
    Live live;
    live.log_id = std::move(s.log_id);
    live.channel = std::move(s.channel);
    live.arrival = s.arrival;
    live.added = added;
    live.observe = s.observe;
    live_.emplace(s.id, std::move(live));
  }
}

void EngineLoop::Dispatch(std::vector<RequestOutput>& outputs) {
  const auto now = std::chrono::steady_clock::now();
  for (RequestOutput& out : outputs) {
    auto it = live_.find(out.id);
    if (it == live_.end()) {
      spdlog::error("engine output for unknown request {}", out.id);
      continue;
    }
    Live& live = it->second;
    const int64_t n = static_cast<int64_t>(out.tokens.size());
    // The server's warm-up request is no client's: it stays out of the metrics.
    Metrics* metrics = live.observe ? metrics_ : nullptr;
    // The engine times from AddRequest; the request arrived earlier (it waited in the
    // inbox while a step ran). Queue time and TTFT count from the arrival, for the
    // metrics and the client's timings alike. 0 = not scheduled yet.
    if (out.queue_time_s > 0) out.queue_time_s += Seconds(live.added - live.arrival);
    if (n > 0) {
      if (live.tokens == 0) live.first_token = now;
      if (metrics != nullptr && live.tokens == 0) {
        metrics->ObserveFirstToken(Seconds(now - live.arrival));
        metrics->ObserveQueueTime(out.queue_time_s);
      } else if (metrics != nullptr) {
        // Several tokens in one step share the step's interval.
        const double gap = Seconds(now - live.last_token) / static_cast<double>(n);
        for (int64_t i = 0; i < n; ++i) metrics->ObserveInterToken(gap);
      }
      live.last_token = now;
      live.tokens += n;
      if (metrics != nullptr) metrics->AddGenerationTokens(n);
    }
    if (live.tokens > 0) out.ttft_s = Seconds(live.first_token - live.arrival);
    if (!live.prompt_counted && (n > 0 || out.finished)) {
      if (metrics != nullptr) metrics->AddPromptTokens(out.prompt_tokens);
      live.prompt_counted = true;
    }
    if (out.finished) {
      const char* reason = FinishReasonName(out.finish_reason);
      const double e2e = Seconds(now - live.arrival);
      const bool has_tpot = live.tokens > 1;
      const double tpot =
          has_tpot ? Seconds(live.last_token - live.first_token) / (live.tokens - 1) : 0;
      if (metrics != nullptr) metrics->ObserveFinished(reason, e2e, tpot, has_tpot);
      spdlog::info("[{}] finished: {} prompt={} completion={} cached={} ttft={:.3f}s e2e={:.3f}s{}",
                   live.log_id, reason, out.prompt_tokens, out.completion_tokens, out.cached_tokens,
                   out.ttft_s, e2e, out.error.ok() ? "" : " error=" + out.error.ToString());
      live.channel->Push(std::move(out));
      live_.erase(it);
    } else {
      live.channel->Push(std::move(out));
    }
  }
}

void EngineLoop::Publish() {
  const EngineStats stats = engine_->stats();
  int pending;
  {
    std::lock_guard<std::mutex> l(mu_);
    engine_has_work_ = engine_->HasWork();
    state_.engine = stats;
    state_.live = static_cast<int>(live_.size());
    state_.steps = steps_;
    pending = state_.pending;
  }
  metrics_->SetEngineState(stats, pending, steps_);
}

void EngineLoop::Run() {
  spdlog::info("engine loop started");
  Publish();
  for (;;) {
    std::vector<Submission> subs;
    std::vector<RequestId> aborts;
    bool abort_all = false;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] {
        return stop_ || !inbox_.empty() || !aborts_.empty() || abort_all_ || engine_has_work_;
      });
      if (stop_) break;
      subs.swap(inbox_);
      aborts.swap(aborts_);
      abort_all = std::exchange(abort_all_, false);
      state_.pending = 0;
    }
    AddSubmissions(subs);
    for (RequestId id : aborts) {
      auto it = live_.find(id);
      if (it == live_.end()) continue;  // finished meanwhile
      spdlog::info("[{}] abort requested", it->second.log_id);
      engine_->AbortRequest(id);
    }
    if (abort_all) {
      for (const auto& [id, live] : live_) engine_->AbortRequest(id);
    }
    if (engine_->HasWork()) {
      std::vector<RequestOutput> outputs = engine_->Step();
      ++steps_;
      Dispatch(outputs);
    }
    Publish();
  }
  // Stopping: nobody will step these again. Close their streams.
  {
    std::lock_guard<std::mutex> l(mu_);
    for (Submission& s : inbox_) s.channel->Reject(absl::UnavailableError("server shutting down"));
    inbox_.clear();
  }
  for (auto& [id, live] : live_) {
    engine_->AbortRequest(id);
    RequestOutput out;
    out.id = id;
    out.finished = true;
    out.finish_reason = FinishReason::kAbort;
    live.channel->Push(std::move(out));
  }
  live_.clear();
  Publish();
  spdlog::info("engine loop stopped");
}

}  // namespace leank::server
