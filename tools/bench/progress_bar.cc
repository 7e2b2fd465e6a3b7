#include "tools/bench/progress_bar.h"

#include <algorithm>
#include <chrono>
#include <cmath>

namespace leank::bench {

ProgressBar::ProgressBar(const Progress* progress, int64_t total_requests, double duration_s,
                         Clock* clock, FILE* out, bool tty)
    : progress_(progress),
      total_(total_requests),
      duration_s_(duration_s),
      clock_(clock),
      out_(out),
      tty_(tty) {}

ProgressBar::~ProgressBar() { Finish(); }

std::string ProgressBar::Render(int64_t started, int64_t done, int64_t errors, int64_t tokens,
                                double elapsed_s, int64_t total, double duration_s) {
  constexpr int kWidth = 24;
  double frac = -1;
  if (std::isfinite(duration_s) && duration_s > 0) {
    frac = elapsed_s / duration_s;
  }
  if (total > 0 && total < (int64_t{1} << 40)) {
    frac = std::max(frac, static_cast<double>(done) / static_cast<double>(total));
  }
  std::string bar;
  if (frac >= 0) {
    const int filled = static_cast<int>(std::min(1.0, frac) * kWidth);
    bar.push_back('[');
    bar.append(filled, '#');
    bar.append(kWidth - filled, '.');
    bar.append("] ");
  }
  char buf[256];
  const double tps = elapsed_s > 0 ? tokens / elapsed_s : 0;
  const double rps = elapsed_s > 0 ? done / elapsed_s : 0;
  std::string count = std::to_string(done);
  if (total > 0 && total < (int64_t{1} << 40)) count.append("/").append(std::to_string(total));
  std::snprintf(buf, sizeof(buf),
                "%s%s req  in-flight %lld  %.2f req/s  %.1f tok/s  errors %lld  %.1fs", bar.c_str(),
                count.c_str(), static_cast<long long>(started - done), rps, tps,
                static_cast<long long>(errors), elapsed_s);
  return buf;
}

void ProgressBar::Start() {
  start_ = clock_->Now();
  running_ = true;
  thread_ = std::thread([this] {
    int ticks = 0;
    while (running_.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      if (!running_.load()) break;
      if (tty_ || ++ticks % 40 == 0) Draw(false);
    }
  });
}

void ProgressBar::Draw(bool final) {
  const std::string line =
      Render(progress_->started.load(), progress_->done.load(), progress_->errors.load(),
             progress_->output_tokens.load(), clock_->Now() - start_, total_, duration_s_);
  if (tty_) {
    std::fprintf(out_, "\r\033[K%s%s", line.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
}

void ProgressBar::Finish() {
  if (!running_.exchange(false)) return;
  if (thread_.joinable()) thread_.join();
  Draw(true);
}

}  // namespace leank::bench
