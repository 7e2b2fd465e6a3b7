#pragma once
// A small pool of host threads for the per-step plans: ParallelFor(n, fn) runs fn(0..n-1)
// on the workers and the calling thread, and returns when all are done. One caller at a
// time (a plan is single-threaded per DecodeAttention); fn must not throw.

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace leank::kernels {

class HostPool {
 public:
  // threads - 1 workers (threads <= 1: none, ParallelFor runs inline).
  explicit HostPool(int threads);
  ~HostPool();
  HostPool(const HostPool&) = delete;
  HostPool& operator=(const HostPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }
  void ParallelFor(int n, const std::function<void(int)>& fn);

  // min(4, hardware threads / 2), at least 1: leaves cores to the engine and RPC threads.
  static int DefaultThreads();

 private:
  void Work();
  void RunShare();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  const std::function<void(int)>* fn_ = nullptr;  // guarded by mu_
  int n_ = 0, next_ = 0, finished_ = 0;           // guarded by mu_
  uint64_t generation_ = 0;                       // guarded by mu_
  bool stop_ = false;                             // guarded by mu_
};

}  // namespace leank::kernels
