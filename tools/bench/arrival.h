#pragma once
// Open-loop arrivals: inter-arrival gaps drawn from a gamma distribution with shape
// `burstiness` and mean 1/rate (burstiness 1 = exponential gaps = a Poisson process;
// < 1 burstier, > 1 more regular), the convention of vLLM's benchmark_serving.
// Dispatch() is the scheduling loop itself, run on an injectable Clock.

#include <cstdint>
#include <functional>
#include <limits>
#include <random>

#include "tools/bench/clock.h"

namespace leank::bench {

class ArrivalProcess {
 public:
  // rate: requests per second, > 0; infinity = everything at t = 0.
  ArrivalProcess(double rate, double burstiness, uint64_t seed);
  // Seconds until the next arrival.
  double NextGap();
  double rate() const { return rate_; }

 private:
  double rate_;
  std::mt19937_64 rng_;
  std::gamma_distribution<double> gamma_;
};

struct DispatchLimits {
  int64_t max_requests = std::numeric_limits<int64_t>::max();
  double duration_s = std::numeric_limits<double>::infinity();  // no arrival at or after this
};

// Calls launch(i) for i = 0, 1, ... at clock times t_0 < t_1 < ... (t_0 = the first gap
// after clock->Now() at the call) until a limit is hit or `stop()` returns true.
// `launch` must not block for long (it hands the request to another thread).
// Returns the number of launches.
int64_t Dispatch(
    Clock* clock, ArrivalProcess* arrivals, const DispatchLimits& limits,
    const std::function<void(int64_t)>& launch,
    const std::function<bool()>& stop = [] { return false; });

}  // namespace leank::bench
