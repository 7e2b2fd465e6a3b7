#pragma once
// The clock the load tester schedules arrivals on. Injectable so that the arrival
// process can be tested on a fake clock: FakeClock::SleepUntil jumps instead of waiting.

#include <algorithm>
#include <chrono>
#include <mutex>
#include <thread>

namespace leank::bench {

// Seconds since an arbitrary epoch (the start of the clock).
class Clock {
 public:
  virtual ~Clock() = default;
  virtual double Now() = 0;
  // Returns at or after `t` (at once when `t` has passed).
  virtual void SleepUntil(double t) = 0;
};

class SteadyClock : public Clock {
 public:
  SteadyClock() : start_(std::chrono::steady_clock::now()) {}
  double Now() override {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  void SleepUntil(double t) override {
    const double wait = t - Now();
    if (wait > 0) std::this_thread::sleep_for(std::chrono::duration<double>(wait));
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

// Time moves only when someone sleeps (or calls Advance).
class FakeClock : public Clock {
 public:
  double Now() override {
    std::lock_guard<std::mutex> lock(mu_);
    return now_;
  }
  void SleepUntil(double t) override {
    std::lock_guard<std::mutex> lock(mu_);
    now_ = std::max(now_, t);
  }
  void Advance(double seconds) {
    std::lock_guard<std::mutex> lock(mu_);
    now_ += seconds;
  }

 private:
  std::mutex mu_;
  double now_ = 0;
};

}  // namespace leank::bench
