#include "engine/core/scheduler.h"

#include <algorithm>

namespace leank {

Scheduler::Scheduler(const SchedulerOptions& options, cache::KvCacheManager* cache)
    : options_(options), cache_(cache) {}

void Scheduler::AddWaiting(SchedSeq* seq) { waiting_.push_back(seq); }

void Scheduler::Remove(SchedSeq* seq) {
  std::erase(running_, seq);
  std::erase(waiting_, seq);
  cache_->Free(seq->id);
}

void Scheduler::Preempt(SchedSeq* seq) {
  std::erase(running_, seq);
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
      if (running_.size() == 1 && out.seqs.empty()) {
        // Alone with the whole pool and still no room: it can never run.
        std::erase(running_, seq);
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
    out.seqs.push_back({seq, *std::move(plan), seq->num_cached + chunk == (int64_t)seq->tokens.size()});
    budget -= chunk;
    ++i;
  }

  // 2. Admission, FCFS, only when nothing had to be preempted.
  if (out.preempted.empty()) {
    while (!waiting_.empty() && budget > 0 &&
           static_cast<int>(running_.size()) < options_.max_num_seqs) {
      SchedSeq* seq = waiting_.front();
      int64_t chunk = std::min(seq->remaining(), budget);
      if (chunk > 1 && !cache_->CanAppend(seq->id, chunk)) chunk = LargestFittingChunk(seq, chunk);
      if (!cache_->CanAppend(seq->id, chunk)) {
        if (running_.empty() && out.seqs.empty()) {
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
      out.seqs.push_back({seq, *std::move(plan), seq->num_cached + chunk == (int64_t)seq->tokens.size()});
      budget -= chunk;
    }
  }
  for (const ScheduledSeq& s : out.seqs) out.num_tokens += s.cache.num_new_tokens;
  return out;
}

}  // namespace leank
