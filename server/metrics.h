#pragma once
// Prometheus metrics in the text exposition format, named like vLLM's with the
// "leank:" prefix. Updated by the engine thread (per step) and the RPC threads
// (rejections); rendered by the HTTP thread. One mutex: updates are a few per step.

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "engine/core/engine.h"

namespace leank::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double v);
  // Appends the _bucket/_sum/_count lines.
  void Render(const std::string& name, std::string* out) const;
  int64_t count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;  // per bucket, not cumulative; rendered cumulative
  double sum_ = 0;
  int64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();

  // Engine thread.
  void ObserveQueueTime(double s);
  void ObserveFirstToken(double ttft_s);
  void ObserveInterToken(double s);
  void ObserveFinished(const std::string& reason, double e2e_s, double tpot_s, bool has_tpot);
  void AddPromptTokens(int64_t n);
  void AddGenerationTokens(int64_t n);
  void SetEngineState(const EngineStats& stats, int pending, int64_t steps);
  // RPC threads.
  void AddRejected(const std::string& code);  // "invalid_argument", "resource_exhausted", ...
  void SetStreams(int active);
  void SetReady(bool ready, bool draining);

  std::string Render() const;

 private:
  mutable std::mutex mu_;
  Histogram ttft_, itl_, tpot_, e2e_, queue_;
  int64_t prompt_tokens_ = 0, generation_tokens_ = 0;
  std::map<std::string, int64_t> finished_;  // by finished_reason
  std::map<std::string, int64_t> rejected_;  // by code
  EngineStats engine_;
  int pending_ = 0, streams_ = 0;
  int64_t steps_ = 0;
  bool ready_ = false, draining_ = false;
};

}  // namespace leank::server
