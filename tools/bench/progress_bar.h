#pragma once
// A live progress line on stderr: requests done (of the total, or seconds of the
// duration), in flight, output tokens/s, errors. On a terminal it redraws one line
// four times a second; otherwise it prints a line every 10 s.

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>

#include "tools/bench/clock.h"
#include "tools/bench/runner.h"

namespace leank::bench {

class ProgressBar {
 public:
  // total_requests <= 0 or huge: shown as a count; duration_s finite: bar by time.
  ProgressBar(const Progress* progress, int64_t total_requests, double duration_s, Clock* clock,
              FILE* out, bool tty);
  ~ProgressBar();  // Finish()
  void Start();
  // Prints the last state and a newline; idempotent.
  void Finish();

  // The line for the given state (exposed for tests).
  static std::string Render(int64_t started, int64_t done, int64_t errors, int64_t tokens,
                            double elapsed_s, int64_t total, double duration_s);

 private:
  void Draw(bool final);
  const Progress* progress_;
  int64_t total_;
  double duration_s_;
  Clock* clock_;
  FILE* out_;
  bool tty_;
  double start_ = 0;
  std::atomic<bool> running_{false};
  std::thread thread_;
};

}  // namespace leank::bench
