#pragma once
// Continuous-batching scheduler: a pure object over sequences and the KV cache
// manager (no model, no threads), so it is unit-tested and benchmarked alone.
//
// Each step: running sequences first, oldest first, each gets the tokens it still
// needs (a prefill chunk or one decode token) within the step's token budget; when
// the cache cannot hold them, the newest running sequence is preempted (its blocks
// freed, it goes back to the front of the waiting queue and recomputes later).
// Then, if nothing was preempted, waiting sequences are admitted in FCFS order
// while the budget, the running cap and free blocks allow (no skipping ahead), and,
// with Admission::kReserve, while every admitted sequence fits at its final length.

#include <cstdint>
#include <deque>
#include <vector>

#include "cache/kv_cache.h"

namespace leank {

struct SchedulerOptions {
  int max_num_seqs = 64;
  int max_batched_tokens = 512;
  // Admission. kReserve admits a sequence only when the blocks of every running
  // sequence at its final length (prompt + max_tokens) fit with it, so requests that
  // run to max_tokens are never preempted (what TGI does). kOptimistic admits whenever
  // the next chunk fits (vLLM's default) and preempts by recompute when blocks run
  // out: more sequences at once, but long prompts can thrash under pressure.
  enum class Admission { kReserve, kOptimistic };
  Admission admission = Admission::kReserve;
};

// What the scheduler needs to know of a sequence. The engine owns it.
struct SchedSeq {
  cache::SeqId id = 0;
  std::vector<int32_t> tokens;   // prompt + generated so far
  int64_t num_cached = 0;        // tokens whose K/V are in the cache
  int64_t arrival = 0;           // FCFS order (smaller = older)
  int64_t max_total_tokens = 0;  // prompt + max_tokens: what kReserve admission reserves
  int num_preemptions = 0;
  bool reserved = false;           // `reservation` is counted in the scheduler's total
  cache::BlockDemand reservation;  // its blocks at its final length (kReserve)

  int64_t remaining() const { return static_cast<int64_t>(tokens.size()) - num_cached; }
};

struct ScheduledSeq {
  SchedSeq* seq = nullptr;
  cache::AppendPlan cache;   // cache.num_new_tokens tokens from seq->num_cached
  bool want_logits = false;  // the chunk reaches the end of seq->tokens
};

struct Schedule {
  std::vector<ScheduledSeq> seqs;
  std::vector<SchedSeq*> preempted;  // freed this step, back in the waiting queue
  // Sequences that cannot run even alone in an empty pool: the engine fails them.
  std::vector<SchedSeq*> unschedulable;
  int64_t num_tokens = 0;
};

class Scheduler {
 public:
  Scheduler(const SchedulerOptions& options, cache::KvCacheManager* cache);

  void AddWaiting(SchedSeq* seq);  // appended at the back of the waiting queue
  // Removes a sequence wherever it is and frees its blocks: at once (KvCacheManager::
  // Release) unless it was appended in the step under way. Safe for unknown seqs.
  void Remove(SchedSeq* seq);
  Schedule Step();

  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  int64_t num_preemptions() const { return num_preemptions_; }
  // Tokens (prompt + max_tokens) one request alone in the empty pool can run to: what
  // the cache can grow to, and under kReserve also what the reservation admits.
  int64_t MaxSequenceTokens() const;

 private:
  void Preempt(SchedSeq* seq);
  // Blocks freed this step wait for EndStep: the free lists are not all that is not held,
  // so "no room even alone" does not yet mean "can never fit".
  bool BlocksPending() const;
  // The largest n <= chunk with CanAppend(seq, n), or 1.
  int64_t LargestFittingChunk(const SchedSeq* seq, int64_t chunk) const;
  // kReserve: blocks of a sequence at its final length; whether it fits beside the
  // reservations of the running ones; and the bookkeeping.
  cache::BlockDemand FinalBlocks(const SchedSeq* seq) const;
  bool FitsReservation(const SchedSeq* seq) const;
  // kReserve: full blocks kept free of reservations for a step's prefill tokens.
  int64_t ReserveHeadroom() const;
  void Reserve(SchedSeq* seq);
  void Unreserve(SchedSeq* seq);

  SchedulerOptions options_;
  cache::KvCacheManager* cache_;
  std::vector<SchedSeq*> running_;  // oldest first
  std::deque<SchedSeq*> waiting_;
  int64_t num_preemptions_ = 0;
  cache::BlockDemand reserved_;  // sum of FinalBlocks over reserved running sequences
};

}  // namespace leank
