#include "tools/bench/arrival.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace leank::bench {

ArrivalProcess::ArrivalProcess(double rate, double burstiness, uint64_t seed)
    : rate_(rate), rng_(seed), gamma_(burstiness > 0 ? burstiness : 1.0, 1.0) {
  if (!(rate > 0) || !(burstiness > 0)) {
    std::fprintf(stderr, "ArrivalProcess: rate %g and burstiness %g must be > 0\n", rate,
                 burstiness);
    std::abort();
  }
  // gamma(shape k, scale theta) has mean k * theta; theta = 1 / (rate * k) gives 1/rate.
  gamma_ = std::gamma_distribution<double>(burstiness, 1.0 / (rate * burstiness));
}

double ArrivalProcess::NextGap() {
  if (std::isinf(rate_)) return 0.0;
  return gamma_(rng_);
}

int64_t Dispatch(Clock* clock, ArrivalProcess* arrivals, const DispatchLimits& limits,
                 const std::function<void(int64_t)>& launch, const std::function<bool()>& stop) {
  const double start = clock->Now();
  double next = start;
  int64_t n = 0;
  while (n < limits.max_requests && !stop()) {
    // Arrival times accumulate from the schedule, not from when launch() returned, so a
    // slow launch does not stretch the process.
    next += arrivals->NextGap();
    if (next - start >= limits.duration_s) break;
    // Sleep in short slices so that stop() (Ctrl-C, a dead server) is seen promptly.
    for (double now = clock->Now(); now < next && !stop(); now = clock->Now()) {
      clock->SleepUntil(std::min(next, now + 0.1));
    }
    if (stop()) break;
    launch(n++);
  }
  return n;
}

}  // namespace leank::bench
