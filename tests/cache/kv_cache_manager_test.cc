// KvCacheManager: allocation, exhaustion, frees (explicit, RAII, deferred), preemption,
// capacity, and a long seeded random-operation run with the invariants checked each step.

#include <map>
#include <random>

#include "cache/kv_cache.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cache/test_util.h"

namespace leank::cache {
namespace {

using ::testing::HasSubstr;

// S = 32, W = 64, B = 16 over a 2-layer, 2-head, head_dim 64 model.
CacheLayout MakeLayout(bool dense) {
  LayoutOptions o;
  o.num_layers = 2;
  o.num_kv_heads = 2;
  o.head_dim = 64;
  o.block_size = 16;
  o.sink = 32;
  o.recent = 64;
  o.elem_bytes = 2;
  std::optional<Mask> mask;
  if (!dense) mask = testing::RandomMask({2, 2, 64}, 16, 3);
  auto layout = CacheLayout::Create(o, mask);
  EXPECT_TRUE(layout.ok()) << layout.status();
  return *layout;
}

struct Snapshot {
  int64_t free_full, free_pruned, pending_full, pending_pruned;
  std::map<SeqId, SeqBlocks> seqs;
  bool operator==(const Snapshot& o) const {
    if (free_full != o.free_full || free_pruned != o.free_pruned ||
        pending_full != o.pending_full || pending_pruned != o.pending_pruned ||
        seqs.size() != o.seqs.size()) {
      return false;
    }
    for (const auto& [id, s] : seqs) {
      const auto it = o.seqs.find(id);
      if (it == o.seqs.end() || it->second.num_tokens != s.num_tokens ||
          it->second.full_blocks != s.full_blocks || it->second.pruned_blocks != s.pruned_blocks) {
        return false;
      }
    }
    return true;
  }
};

Snapshot Snap(const KvCacheManager& m, const std::vector<SeqId>& ids) {
  Snapshot s{m.free_full_blocks(),
             m.free_pruned_blocks(),
             m.pending_full_blocks(),
             m.pending_pruned_blocks(),
             {}};
  for (SeqId id : ids) {
    if (m.Contains(id)) s.seqs[id] = m.blocks(id);
  }
  return s;
}

TEST(KvCacheManagerTest, AppendGrowsTablesAndCompacts) {
  const CacheLayout layout = MakeLayout(false);
  KvCacheManager m(layout, {20, 20});
  auto plan = m.Append(1, 10);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->start_pos, 0);
  EXPECT_EQ(plan->full_blocks, (std::vector<int32_t>{0}));
  EXPECT_EQ(plan->num_compactions(), 0);
  plan = m.Append(1, 100);  // 110 tokens: 7 full blocks, no middle yet (needs 112)
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->start_pos, 10);
  EXPECT_EQ(plan->full_blocks.size(), 7u);
  EXPECT_EQ(plan->middle_after, 0);
  plan = m.Append(1, 2);  // 112 tokens: the first recent block becomes middle
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->middle_before, 0);
  EXPECT_EQ(plan->middle_after, 16);
  EXPECT_EQ(plan->num_compactions(), 1);
  EXPECT_EQ(plan->full_blocks.size(), 7u);  // before compaction
  EXPECT_EQ(plan->pruned_blocks, (std::vector<int32_t>{0}));
  const int32_t compacted = plan->full_blocks[32 / 16];
  const SeqBlocks& s = m.blocks(1);
  EXPECT_EQ(s.num_tokens, 112);
  EXPECT_EQ(s.middle_tokens, 16);
  EXPECT_EQ(s.full_blocks.size(), 6u);
  EXPECT_EQ(std::count(s.full_blocks.begin(), s.full_blocks.end(), compacted), 0);
  EXPECT_EQ(m.pending_full_blocks(), 1);
  EXPECT_TRUE(m.Validate().ok()) << m.Validate();
  m.EndStep();
  EXPECT_EQ(m.free_full_blocks(), 20 - 6);
  EXPECT_TRUE(m.Validate().ok());

  // One chunk crossing several boundaries: 112 -> 200 tokens, M = 96, 5 compactions.
  plan = m.Append(1, 88);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->num_compactions(), 5);
  EXPECT_EQ(plan->pruned_blocks.size(), 6u);
  EXPECT_EQ(m.blocks(1).full_blocks.size(), static_cast<size_t>((200 - 96 + 15) / 16));
  EXPECT_TRUE(m.Validate().ok());
}

TEST(KvCacheManagerTest, ExhaustionReturnsStatusAndChangesNothing) {
  const CacheLayout layout = MakeLayout(false);
  KvCacheManager m(layout, {10, 2});
  ASSERT_TRUE(m.Append(1, 100).ok());  // 7 full
  m.EndStep();
  const Snapshot before = Snap(m, {1, 2});
  EXPECT_FALSE(m.CanAppend(2, 64));  // needs 4 full, 3 free
  auto st = m.Append(2, 64);
  EXPECT_EQ(st.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(st.status().message()), HasSubstr("needs 4 full"));
  EXPECT_FALSE(m.Contains(2));
  EXPECT_TRUE(Snap(m, {1, 2}) == before);
  // Pruned exhaustion: 100 + 60 tokens -> M = 64 needs 4 pruned blocks, 2 exist.
  EXPECT_FALSE(m.CanAppend(1, 60));
  EXPECT_EQ(m.Append(1, 60).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Snap(m, {1, 2}) == before);
  EXPECT_TRUE(m.Validate().ok());
  EXPECT_TRUE(m.CanAppend(1, 40));
  EXPECT_EQ(m.Append(1, -1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(KvCacheManagerTest, FreeIsDeferredToEndStep) {
  const CacheLayout layout = MakeLayout(false);
  KvCacheManager m(layout, {8, 4});
  ASSERT_TRUE(m.Append(1, 128).ok());  // 8 full before compaction, M = 32
  EXPECT_EQ(m.free_full_blocks(), 0);
  EXPECT_EQ(m.pending_full_blocks(), 2);
  EXPECT_FALSE(m.CanAppend(2, 1));  // compacted blocks are not reusable in this step
  m.EndStep();
  EXPECT_TRUE(m.CanAppend(2, 1));
  m.Free(1);  // cancel
  EXPECT_FALSE(m.Contains(1));
  EXPECT_EQ(m.free_full_blocks(), 2);
  auto plan = m.Append(2, 32);  // must not get any of sequence 1's blocks this step
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(m.Append(3, 1).status().code(), absl::StatusCode::kResourceExhausted);
  m.Free(42);  // unknown: ignored
  m.EndStep();
  EXPECT_EQ(m.free_full_blocks(), 6);
  EXPECT_EQ(m.free_pruned_blocks(), 4);
  EXPECT_TRUE(m.Validate().ok());
}

// Release (preemption while planning a step) frees at once, unless the sequence was
// appended in the current step: then it is deferred like Free.
TEST(KvCacheManagerTest, ReleaseIsImmediateOnlyForSequencesNotInTheStep) {
  const CacheLayout layout = MakeLayout(false);
  KvCacheManager m(layout, {10, 4});
  ASSERT_TRUE(m.Append(1, 64).ok());  // 4 full
  m.EndStep();
  m.Release(1);  // not appended in this step: blocks are free now
  EXPECT_FALSE(m.Contains(1));
  EXPECT_EQ(m.free_full_blocks(), 10);
  EXPECT_EQ(m.pending_full_blocks(), 0);
  ASSERT_TRUE(m.Append(2, 160).ok());  // needs all 10 full blocks, in the same step
  EXPECT_TRUE(m.Validate().ok());
  m.Release(2);  // appended in this step: deferred
  EXPECT_EQ(m.free_full_blocks(), 0);
  EXPECT_GT(m.pending_full_blocks(), 0);
  m.Release(99);  // unknown: ignored
  m.EndStep();
  EXPECT_EQ(m.free_full_blocks(), 10);
  EXPECT_EQ(m.free_pruned_blocks(), 4);
  EXPECT_TRUE(m.Validate().ok());
}

TEST(KvCacheManagerTest, LeaseFreesOnDestructionAndSupportsPreemption) {
  const CacheLayout layout = MakeLayout(false);
  KvCacheManager m(layout, {30, 30});
  {
    SequenceLease lease = m.Lease(7);
    ASSERT_TRUE(lease.Append(200).ok());
    EXPECT_EQ(lease.num_tokens(), 200);
    SequenceLease moved = std::move(lease);  // ownership moves, no double free
    EXPECT_FALSE(lease.valid());
    EXPECT_TRUE(moved.valid());
    EXPECT_TRUE(m.Contains(7));
  }
  EXPECT_FALSE(m.Contains(7));
  m.EndStep();
  EXPECT_EQ(m.free_full_blocks(), 30);
  EXPECT_EQ(m.free_pruned_blocks(), 30);

  // Preemption: free a running sequence, recompute it from token 0 later.
  SequenceLease lease = m.Lease(8);
  ASSERT_TRUE(lease.Append(150).ok());
  m.EndStep();
  lease.Preempt();
  EXPECT_FALSE(m.Contains(8));
  EXPECT_EQ(lease.num_tokens(), 0);
  m.EndStep();
  auto plan = lease.Append(151);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->start_pos, 0);
  EXPECT_EQ(lease.num_tokens(), 151);
  // Release gives up ownership: the blocks stay.
  const SeqId id = lease.Release();
  EXPECT_EQ(id, 8);
  EXPECT_TRUE(m.Contains(8));
  m.Free(8);
  m.EndStep();
  EXPECT_EQ(m.free_full_blocks(), 30);
  EXPECT_TRUE(m.Validate().ok());
}

// The length one sequence alone in a pool of `sizes` reaches, a token a step, by
// running the manager itself.
int64_t GrownCapacity(const CacheLayout& layout, PoolSizes sizes) {
  KvCacheManager m(layout, sizes);
  int64_t n = 0;
  while (m.Append(1, 1).ok()) {
    m.EndStep();
    ++n;
  }
  return n;
}

TEST(KvCacheManagerTest, HugeSinkAndRecentDoNotOverflowTheCapacity) {
  // sink + recent = 4e9 overflowed int: a negative capacity, and the server refused to
  // start with "KV cache budget ... holds no useful sequence". Nothing is ever pruned, so
  // every full block holds tokens.
  LayoutOptions o;
  o.num_layers = 2;
  o.num_kv_heads = 2;
  o.head_dim = 64;
  o.block_size = 16;
  o.sink = 2000000000;
  o.recent = 2000000000;
  o.elem_bytes = 4;
  auto layout = CacheLayout::Create(o, testing::RandomMask({2, 2, 64}, 16, 3));
  ASSERT_TRUE(layout.ok()) << layout.status();
  KvCacheManager m(*layout, {6, 5});
  EXPECT_EQ(m.TokenCapacity(), 6 * 16);
}

TEST(KvCacheManagerTest, TokenCapacityAndUsage) {
  for (bool dense : {false, true}) {
    const CacheLayout layout = MakeLayout(dense);
    // Sink + recent is 6 blocks: {6, 5} has no spare full block for the token after
    // them, so it stops at 96 (the steady-state count said 176, and a request of 100
    // tokens passed the engine's check to fail in the middle of its generation).
    for (auto [nf, np] : std::vector<std::pair<int64_t, int64_t>>{
             {0, 0}, {3, 5}, {6, 0}, {6, 5}, {7, 0}, {7, 3}, {8, 9}, {20, 1}}) {
      KvCacheManager m(layout, {nf, np});
      EXPECT_EQ(m.TokenCapacity(), GrownCapacity(layout, {nf, np}))
          << "dense " << dense << " full " << nf << " pruned " << np;
    }
    EXPECT_EQ(KvCacheManager(layout, {6, 5}).TokenCapacity(), 96);
  }
  const CacheLayout layout = MakeLayout(false);
  KvCacheManager m(layout, {10, 10});
  EXPECT_DOUBLE_EQ(m.Usage(), 0.0);
  ASSERT_TRUE(m.Append(1, 16 * 10).ok());
  m.EndStep();
  const double fb = layout.full_block_bytes(), pb = layout.pruned_block_bytes();
  const SeqBlocks& s = m.blocks(1);
  EXPECT_NEAR(m.Usage(),
              (s.full_blocks.size() * fb + s.pruned_blocks.size() * pb) / (10 * fb + 10 * pb),
              1e-12);
}

// >= 100k random operations over a small pool: appends of random sizes to random
// sequences (new or existing), frees, step ends. After every step the accounting must be
// exact; failed appends must change nothing; at the end every block is free.
TEST(KvCacheManagerTest, RandomOperationsKeepAccountingExact) {
  for (bool dense : {false, true}) {
    const CacheLayout layout = MakeLayout(dense);
    KvCacheManager m(layout, {60, 90});
    std::mt19937 rng(dense ? 11 : 12);
    std::map<SeqId, int64_t> tokens;  // the model of what the manager should hold
    SeqId next_id = 0;
    int64_t appends = 0, exhausted = 0, frees = 0;
    const int kOps = 120000;
    for (int op = 0; op < kOps; ++op) {
      const int r = std::uniform_int_distribution<int>(0, 99)(rng);
      if (r < 70) {
        SeqId id;
        if (tokens.empty() || r < 8) {
          id = next_id++;
        } else {
          auto it = tokens.begin();
          std::advance(it, std::uniform_int_distribution<size_t>(0, tokens.size() - 1)(rng));
          id = it->first;
        }
        // Mostly decode-sized appends, some prefill chunks.
        const int64_t k = r % 5 == 0 ? std::uniform_int_distribution<int64_t>(0, 150)(rng)
                                     : std::uniform_int_distribution<int64_t>(1, 3)(rng);
        const bool can = m.CanAppend(id, k);
        const Snapshot before = Snap(m, {id});
        auto plan = m.Append(id, k);
        ASSERT_EQ(plan.ok(), can);
        if (plan.ok()) {
          ++appends;
          ASSERT_EQ(plan->start_pos, tokens[id]);
          tokens[id] += k;
          ASSERT_EQ(m.blocks(id).num_tokens, tokens[id]);
          ASSERT_EQ(plan->middle_after, layout.MiddleTokens(tokens[id]));
        } else {
          ++exhausted;
          ASSERT_EQ(plan.status().code(), absl::StatusCode::kResourceExhausted);
          ASSERT_TRUE(Snap(m, {id}) == before);
        }
      } else if (r < 80 && !tokens.empty()) {
        auto it = tokens.begin();
        std::advance(it, std::uniform_int_distribution<size_t>(0, tokens.size() - 1)(rng));
        if (r % 2 == 0) {
          m.Free(it->first);
        } else {
          m.Release(it->first);  // immediate unless appended in this step
        }
        tokens.erase(it);
        ++frees;
      } else {
        m.EndStep();
        ASSERT_TRUE(m.Validate().ok()) << m.Validate() << " at op " << op;
        ASSERT_EQ(m.num_sequences(), static_cast<int64_t>(tokens.size()));
        ASSERT_EQ(m.pending_full_blocks() + m.pending_pruned_blocks(), 0);
      }
    }
    for (const auto& [id, n] : tokens) m.Free(id);
    m.EndStep();
    ASSERT_TRUE(m.Validate().ok());
    EXPECT_EQ(m.free_full_blocks(), 60);
    EXPECT_EQ(m.free_pruned_blocks(), dense ? 0 : 90);
    EXPECT_EQ(m.num_sequences(), 0);
    // The run must have exercised both success and exhaustion.
    EXPECT_GT(appends, 10000);
    EXPECT_GT(exhausted, 300);
    EXPECT_GT(frees, 1000);
    std::printf("dense=%d: %lld appends, %lld exhausted, %lld frees\n", dense,
                static_cast<long long>(appends), static_cast<long long>(exhausted),
                static_cast<long long>(frees));
  }
}

}  // namespace
}  // namespace leank::cache
