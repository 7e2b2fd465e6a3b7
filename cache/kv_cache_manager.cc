#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "cache/kv_cache.h"

namespace leank::cache {

int AppendPlan::num_compactions() const {
  return static_cast<int>((middle_after - middle_before) / block_size);
}

KvCacheManager::KvCacheManager(const CacheLayout& layout, PoolSizes sizes)
    : layout_(layout), sizes_(sizes) {
  if (layout_.dense()) sizes_.num_pruned_blocks = 0;
  // Reversed so that pop_back hands out 0, 1, 2, ...: easier to read in tests and dumps.
  free_full_.reserve(sizes_.num_full_blocks);
  for (int64_t i = sizes_.num_full_blocks - 1; i >= 0; --i)
    free_full_.push_back(static_cast<int32_t>(i));
  free_pruned_.reserve(sizes_.num_pruned_blocks);
  for (int64_t i = sizes_.num_pruned_blocks - 1; i >= 0; --i) {
    free_pruned_.push_back(static_cast<int32_t>(i));
  }
}

BlockDemand KvCacheManager::Demand(SeqId seq, int64_t num_new_tokens) const {
  const int64_t B = layout_.block_size();
  int64_t n = 0, have_full = 0, have_pruned = 0;
  if (auto it = seqs_.find(seq); it != seqs_.end()) {
    n = it->second.num_tokens;
    have_full = static_cast<int64_t>(it->second.full_blocks.size());
    have_pruned = static_cast<int64_t>(it->second.pruned_blocks.size());
  }
  const int64_t n2 = n + std::max<int64_t>(num_new_tokens, 0);
  const int64_t middle_before = layout_.MiddleTokens(n);
  // New tokens go to full blocks (positions mapped with middle_before); compaction then
  // moves whole recent blocks into freshly taken pruned blocks.
  const int64_t full_total = (n2 - middle_before + B - 1) / B;
  return BlockDemand{std::max<int64_t>(0, full_total - have_full),
                     layout_.MiddleTokens(n2) / B - have_pruned};
}

bool KvCacheManager::CanAppend(SeqId seq, int64_t num_new_tokens) const {
  if (num_new_tokens < 0) return false;
  const BlockDemand d = Demand(seq, num_new_tokens);
  return d.full <= static_cast<int64_t>(free_full_.size()) &&
         d.pruned <= static_cast<int64_t>(free_pruned_.size());
}

absl::StatusOr<AppendPlan> KvCacheManager::Append(SeqId seq, int64_t num_new_tokens) {
  if (num_new_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("KvCacheManager::Append: sequence ", seq,
                                                   ": negative token count ", num_new_tokens));
  }
  const BlockDemand d = Demand(seq, num_new_tokens);
  if (d.full > static_cast<int64_t>(free_full_.size()) ||
      d.pruned > static_cast<int64_t>(free_pruned_.size())) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache full: sequence ", seq, " needs ", d.full, " full + ", d.pruned,
                     " pruned blocks for ", num_new_tokens, " tokens; free: ", free_full_.size(),
                     " full, ", free_pruned_.size(), " pruned (", pending_full_.size(), " + ",
                     pending_pruned_.size(), " pending until the step ends)"));
  }
  SeqBlocks& s = seqs_[seq];
  const int64_t B = layout_.block_size();
  AppendPlan plan;
  plan.seq = seq;
  plan.block_size = static_cast<int>(B);
  plan.start_pos = s.num_tokens;
  plan.num_new_tokens = num_new_tokens;
  plan.middle_before = s.middle_tokens;
  plan.middle_after = layout_.MiddleTokens(s.num_tokens + num_new_tokens);
  for (int64_t i = 0; i < d.full; ++i) {
    s.full_blocks.push_back(free_full_.back());
    free_full_.pop_back();
  }
  for (int64_t i = 0; i < d.pruned; ++i) {
    s.pruned_blocks.push_back(free_pruned_.back());
    free_pruned_.pop_back();
  }
  plan.full_blocks = s.full_blocks;
  plan.pruned_blocks = s.pruned_blocks;
  // Compaction: the oldest recent blocks leave the full table now and return to the
  // pool at EndStep (the backend still reads them during this step).
  const int64_t compactions = (plan.middle_after - plan.middle_before) / B;
  if (compactions > 0) {
    const auto first = s.full_blocks.begin() + layout_.options().sink / B;
    pending_full_.insert(pending_full_.end(), first, first + compactions);
    s.full_blocks.erase(first, first + compactions);
  }
  s.num_tokens += num_new_tokens;
  s.middle_tokens = plan.middle_after;
  appended_this_step_.insert(seq);
  return plan;
}

void KvCacheManager::Free(SeqId seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  const SeqBlocks& s = it->second;
  pending_full_.insert(pending_full_.end(), s.full_blocks.begin(), s.full_blocks.end());
  pending_pruned_.insert(pending_pruned_.end(), s.pruned_blocks.begin(), s.pruned_blocks.end());
  seqs_.erase(it);
}

void KvCacheManager::Release(SeqId seq) {
  if (appended_this_step_.contains(seq)) {
    Free(seq);
    return;
  }
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  const SeqBlocks& s = it->second;
  free_full_.insert(free_full_.end(), s.full_blocks.begin(), s.full_blocks.end());
  free_pruned_.insert(free_pruned_.end(), s.pruned_blocks.begin(), s.pruned_blocks.end());
  seqs_.erase(it);
}

void KvCacheManager::EndStep() {
  free_full_.insert(free_full_.end(), pending_full_.begin(), pending_full_.end());
  free_pruned_.insert(free_pruned_.end(), pending_pruned_.begin(), pending_pruned_.end());
  pending_full_.clear();
  pending_pruned_.clear();
  appended_this_step_.clear();
}

SequenceLease KvCacheManager::Lease(SeqId seq) { return SequenceLease(this, seq); }

bool KvCacheManager::Contains(SeqId seq) const { return seqs_.contains(seq); }

const SeqBlocks& KvCacheManager::blocks(SeqId seq) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) {
    std::fprintf(stderr, "KvCacheManager::blocks: unknown sequence %lld\n",
                 static_cast<long long>(seq));
    std::abort();
  }
  return it->second;
}

int64_t KvCacheManager::free_full_blocks() const { return static_cast<int64_t>(free_full_.size()); }

int64_t KvCacheManager::free_pruned_blocks() const {
  return static_cast<int64_t>(free_pruned_.size());
}

double KvCacheManager::Usage() const {
  const double full_bytes = static_cast<double>(layout_.full_block_bytes());
  const double pruned_bytes = static_cast<double>(layout_.pruned_block_bytes());
  const double total =
      sizes_.num_full_blocks * full_bytes + sizes_.num_pruned_blocks * pruned_bytes;
  if (total <= 0) return 0.0;
  const double used = (sizes_.num_full_blocks - free_full_blocks()) * full_bytes +
                      (sizes_.num_pruned_blocks - free_pruned_blocks()) * pruned_bytes;
  return used / total;
}

int64_t KvCacheManager::TokenCapacity() const {
  return LongestSequence(free_full_blocks(), free_pruned_blocks());
}

int64_t KvCacheManager::LongestSequence(int64_t full_blocks, int64_t pruned_blocks) const {
  const int64_t B = layout_.block_size();
  const int64_t full_tokens = std::max<int64_t>(full_blocks, 0) * B;
  if (layout_.dense()) return full_tokens;
  const int64_t sw = int64_t{layout_.options().sink} + layout_.options().recent;
  // Up to S + W tokens everything is full. Beyond, a sequence holds S + W + r (r < B)
  // tokens in S/B + W/B + 1 full blocks and B * pruned_blocks in the middle. S and W are
  // multiples of B, so full_tokens > S + W means that spare block exists.
  if (full_tokens <= sw) return full_tokens;
  return sw + B * std::max<int64_t>(pruned_blocks, 0) + B - 1;
}

absl::Status KvCacheManager::Validate() const {
  const int64_t B = layout_.block_size();
  std::vector<uint8_t> full_seen(sizes_.num_full_blocks, 0),
      pruned_seen(sizes_.num_pruned_blocks, 0);
  auto mark = [](std::vector<uint8_t>& seen, int32_t id, const char* kind,
                 const std::string& where) -> absl::Status {
    if (id < 0 || id >= static_cast<int64_t>(seen.size())) {
      return absl::InternalError(absl::StrCat(kind, " block ", id, " out of range in ", where));
    }
    if (seen[id]++) {
      return absl::InternalError(absl::StrCat(kind, " block ", id, " held twice (", where, ")"));
    }
    return absl::OkStatus();
  };
  for (int32_t id : free_full_) {
    if (auto st = mark(full_seen, id, "full", "free list"); !st.ok()) return st;
  }
  for (int32_t id : pending_full_) {
    if (auto st = mark(full_seen, id, "full", "pending list"); !st.ok()) return st;
  }
  for (int32_t id : free_pruned_) {
    if (auto st = mark(pruned_seen, id, "pruned", "free list"); !st.ok()) return st;
  }
  for (int32_t id : pending_pruned_) {
    if (auto st = mark(pruned_seen, id, "pruned", "pending list"); !st.ok()) return st;
  }
  for (const auto& [seq, s] : seqs_) {
    const std::string where = absl::StrCat("sequence ", seq);
    for (int32_t id : s.full_blocks) {
      if (auto st = mark(full_seen, id, "full", where); !st.ok()) return st;
    }
    for (int32_t id : s.pruned_blocks) {
      if (auto st = mark(pruned_seen, id, "pruned", where); !st.ok()) return st;
    }
    const int64_t m = layout_.MiddleTokens(s.num_tokens);
    if (s.middle_tokens != m ||
        static_cast<int64_t>(s.full_blocks.size()) != (s.num_tokens - m + B - 1) / B ||
        static_cast<int64_t>(s.pruned_blocks.size()) != m / B) {
      return absl::InternalError(absl::StrCat(
          where, ": ", s.num_tokens, " tokens (middle ", s.middle_tokens, ") but ",
          s.full_blocks.size(), " full and ", s.pruned_blocks.size(), " pruned blocks"));
    }
  }
  for (size_t i = 0; i < full_seen.size(); ++i) {
    if (!full_seen[i]) return absl::InternalError(absl::StrCat("full block ", i, " lost"));
  }
  for (size_t i = 0; i < pruned_seen.size(); ++i) {
    if (!pruned_seen[i]) return absl::InternalError(absl::StrCat("pruned block ", i, " lost"));
  }
  return absl::OkStatus();
}

SequenceLease& SequenceLease::operator=(SequenceLease&& other) noexcept {
  if (this != &other) {
    Reset();
    manager_ = other.manager_;
    seq_ = other.seq_;
    other.manager_ = nullptr;
  }
  return *this;
}

absl::StatusOr<AppendPlan> SequenceLease::Append(int64_t num_new_tokens) {
  if (manager_ == nullptr) {
    return absl::FailedPreconditionError("SequenceLease::Append on an empty lease");
  }
  return manager_->Append(seq_, num_new_tokens);
}

void SequenceLease::Preempt() {
  if (manager_ != nullptr) manager_->Free(seq_);
}

void SequenceLease::Reset() {
  if (manager_ != nullptr) manager_->Free(seq_);
  manager_ = nullptr;
}

SeqId SequenceLease::Release() {
  manager_ = nullptr;
  return seq_;
}

int64_t SequenceLease::num_tokens() const {
  if (manager_ == nullptr || !manager_->Contains(seq_)) return 0;
  return manager_->blocks(seq_).num_tokens;
}

}  // namespace leank::cache
