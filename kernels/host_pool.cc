#include "kernels/host_pool.h"

#include <algorithm>

namespace leank::kernels {

HostPool::HostPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { Work(); });
}

HostPool::~HostPool() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : workers_) t.join();
}

int HostPool::DefaultThreads() {
  const int hw = static_cast<int>(std::thread::hardware_concurrency());
  return std::clamp(hw / 2, 1, 4);
}

// Takes indices until none is left; counts each one done.
void HostPool::RunShare() {
  std::unique_lock<std::mutex> l(mu_);
  while (next_ < n_) {
    const int i = next_++;
    const std::function<void(int)>& fn = *fn_;
    l.unlock();
    fn(i);
    l.lock();
    if (++finished_ == n_) done_.notify_all();
  }
}

void HostPool::Work() {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> l(mu_);
      wake_.wait(l, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    RunShare();
  }
}

void HostPool::ParallelFor(int n, const std::function<void(int)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    fn_ = &fn;
    n_ = n;
    next_ = 0;
    finished_ = 0;
    ++generation_;
  }
  wake_.notify_all();
  RunShare();
  std::unique_lock<std::mutex> l(mu_);
  done_.wait(l, [&] { return finished_ == n_; });
  fn_ = nullptr;
  n_ = 0;
}

}  // namespace leank::kernels
