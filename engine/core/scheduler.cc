#include "engine/core/scheduler.h"

#include <algorithm>

namespace leank {

Scheduler::Scheduler(const SchedulerOptions& options, cache::KvCacheManager* cache)
    : options_(options), cache_(cache) {}

void Scheduler::AddWaiting(SchedSeq* seq) { waiting_.push_back(seq); }

void Scheduler::Remove(SchedSeq* seq) {
  std::erase(running_, seq);
  std::erase(waiting_, seq);
  Unreserve(seq);
  // At once unless it was appended this step (Release falls back to the deferred Free):
  // an abort between steps must not leave its blocks pending while the next step is
  // planned, where an empty free list read as "cannot fit even alone".
  cache_->Release(seq->id);
}

bool Scheduler::BlocksPending() const {
  return cache_->pending_full_blocks() > 0 || cache_->pending_pruned_blocks() > 0;
}

cache::BlockDemand Scheduler::FinalBlocks(const SchedSeq* seq) const {
  const cache::CacheLayout& layout = cache_->layout();
  const int64_t b = layout.block_size();
  const int64_t n = std::max<int64_t>(seq->max_total_tokens, seq->tokens.size());
  const int64_t middle = layout.MiddleTokens(n);
  return {(n - middle + b - 1) / b, middle / b};
}

int64_t Scheduler::ReserveHeadroom() const {
  // With a mask, full blocks also hold a step's prefill tokens until compaction: keep
  // that headroom (at most a quarter of the full blocks; chunks shrink to fit anyway).
  const int64_t b = cache_->layout().block_size();
  return cache_->layout().dense() ? 0
                                  : std::min<int64_t>((options_.max_batched_tokens + b - 1) / b + 1,
                                                      cache_->sizes().num_full_blocks / 4);
}

bool Scheduler::FitsReservation(const SchedSeq* seq) const {
  const cache::BlockDemand need = FinalBlocks(seq);
  const cache::PoolSizes& pool = cache_->sizes();
  return reserved_.full + need.full <= pool.num_full_blocks - ReserveHeadroom() &&
         reserved_.pruned + need.pruned <= pool.num_pruned_blocks;
}

int64_t Scheduler::MaxSequenceTokens() const {
  const cache::PoolSizes& pool = cache_->sizes();
  const int64_t grows_to = cache_->LongestSequence(pool.num_full_blocks, pool.num_pruned_blocks);
  if (options_.admission != SchedulerOptions::Admission::kReserve) return grows_to;
  // FinalBlocks(n) of every n up to the result fits the reservable blocks.
  return std::min(grows_to, cache_->LongestSequence(pool.num_full_blocks - ReserveHeadroom(),
                                                    pool.num_pruned_blocks));
}

void Scheduler::Reserve(SchedSeq* seq) {
  if (options_.admission != SchedulerOptions::Admission::kReserve || seq->reserved) return;
  seq->reservation = FinalBlocks(seq);
  reserved_.full += seq->reservation.full;
  reserved_.pruned += seq->reservation.pruned;
  seq->reserved = true;
}

void Scheduler::Unreserve(SchedSeq* seq) {
  if (!seq->reserved) return;
  reserved_.full -= seq->reservation.full;
  reserved_.pruned -= seq->reservation.pruned;
  seq->reserved = false;
}

void Scheduler::Preempt(SchedSeq* seq) {
  std::erase(running_, seq);
  Unreserve(seq);
  cache_->Release(seq->id);  // not part of this step: its blocks can serve others now
  seq->num_cached = 0;
  ++seq->num_preemptions;
  ++num_preemptions_;
  // Back to the front, in arrival order among other preempted sequences.
  auto it = std::find_if(waiting_.begin(), waiting_.end(),
                         [&](const SchedSeq* w) { return w->arrival > seq->arrival; });
  waiting_.insert(it, seq);
}

int64_t Scheduler::LargestFittingChunk(const SchedSeq* seq, int64_t chunk) const {
  // CanAppend is monotone in the chunk size: binary search, at least 1.
  int64_t lo = 1, hi = chunk;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (cache_->CanAppend(seq->id, mid)) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

Schedule Scheduler::Step() {
  Schedule out;
  int64_t budget = options_.max_batched_tokens;

  // 1. Running sequences, oldest first.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    SchedSeq* seq = running_[i];
    int64_t chunk = std::min(seq->remaining(), budget);
    if (chunk <= 0) {
      ++i;
      continue;
    }
    // A prefill chunk shrinks to what fits before anyone is preempted for it.
    if (chunk > 1 && !cache_->CanAppend(seq->id, chunk)) chunk = LargestFittingChunk(seq, chunk);
    bool self_preempted = false;
    while (!cache_->CanAppend(seq->id, chunk)) {
      SchedSeq* victim = running_.back();
      if (victim == seq) {
        self_preempted = true;
        break;
      }
      Preempt(victim);
      out.preempted.push_back(victim);
    }
    if (self_preempted) {
      if (running_.size() == 1 && out.seqs.empty() && BlocksPending()) {
        // Alone, but blocks freed this step (an abort) are not allocatable until
        // EndStep: wait a step with what it holds rather than fail or recompute.
        ++i;
        continue;
      }
      if (running_.size() == 1 && out.seqs.empty()) {
        // Alone with the whole pool and still no room: it can never run.
        std::erase(running_, seq);
        Unreserve(seq);
        cache_->Release(seq->id);
        out.unschedulable.push_back(seq);
      } else {
        Preempt(seq);
        out.preempted.push_back(seq);
      }
      continue;  // running_[i] is now the next sequence
    }
    auto plan = cache_->Append(seq->id, chunk);
    if (!plan.ok()) break;  // CanAppend said yes; treat as full to stay safe
    out.seqs.push_back(
        {seq, *std::move(plan), seq->num_cached + chunk == (int64_t)seq->tokens.size()});
    budget -= chunk;
    ++i;
  }

  // 2. Admission, FCFS, only when nothing had to be preempted.
  if (out.preempted.empty()) {
    while (!waiting_.empty() && budget > 0 &&
           static_cast<int>(running_.size()) < options_.max_num_seqs) {
      SchedSeq* seq = waiting_.front();
      if (options_.admission == SchedulerOptions::Admission::kReserve && !FitsReservation(seq)) {
        if (running_.empty() && out.seqs.empty()) {
          waiting_.pop_front();  // larger than the whole pool at its final length
          out.unschedulable.push_back(seq);
          continue;
        }
        break;  // FCFS: wait for running sequences to finish
      }
      int64_t chunk = std::min(seq->remaining(), budget);
      if (chunk > 1 && !cache_->CanAppend(seq->id, chunk)) chunk = LargestFittingChunk(seq, chunk);
      if (!cache_->CanAppend(seq->id, chunk)) {
        if (running_.empty() && out.seqs.empty() && !BlocksPending()) {
          // Nothing else holds blocks: this request cannot fit at all.
          waiting_.pop_front();
          out.unschedulable.push_back(seq);
          continue;
        }
        break;
      }
      auto plan = cache_->Append(seq->id, chunk);
      if (!plan.ok()) break;
      waiting_.pop_front();
      running_.push_back(seq);
      Reserve(seq);
      out.seqs.push_back(
          {seq, *std::move(plan), seq->num_cached + chunk == (int64_t)seq->tokens.size()});
      budget -= chunk;
    }
  }
  for (const ScheduledSeq& s : out.seqs) out.num_tokens += s.cache.num_new_tokens;
  return out;
}

}  // namespace leank
