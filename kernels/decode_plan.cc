// DecodeAttention: host-side plan (block tables + the split-KV work lists of every layer
// from decode_work.cc, one upload per step) and the per-layer launch.

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "kernels/decode_tma.h"
#include "kernels/decode_work.h"
#include "kernels/host_pool.h"
#include "kernels/internal.h"

namespace leank::kernels {

using detail::DecodeItem;

namespace {

int CeilDiv(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

std::atomic<bool>& PdlFlag() {
  static std::atomic<bool> flag{[] {
    const char* env = std::getenv("LEANK_CUDA_PDL");
    return !(env && env[0] == '0');
  }()};
  return flag;
}

}  // namespace

void SetDecodeProgrammaticLaunch(bool enabled) { PdlFlag() = enabled; }
bool DecodeProgrammaticLaunch() { return PdlFlag(); }

DecodeAttention::DecodeAttention(const DeviceMeta& meta) : meta_(meta) {
  int dev = 0;
  LEANK_CUDA_CHECK(cudaGetDevice(&dev));
  LEANK_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, dev));
  const int resident = num_sms_ * detail::DecodeBlocksPerSm(meta.shape().head_dim);
  planner_ = std::make_unique<DecodePlanner>(meta.shape(), meta.dense(), meta.kept_table(),
                                             resident, HostPool::DefaultThreads());
  tma_ = std::make_unique<detail::DecodeTmaCache>();
}

DecodeAttention::~DecodeAttention() {
  cudaFree(d_partial_);
  cudaFree(d_counters_);
}

absl::Status DecodeAttention::Plan(std::span<const SeqView> seqs, cudaStream_t stream,
                                   int target_ctas) {
  const AttentionShape& sh = meta_.shape();
  const int S = static_cast<int>(seqs.size()), H = sh.num_kv_heads, D = sh.head_dim,
            B = sh.block_size, G = sh.num_q_heads / sh.num_kv_heads;
  // Host tables, members reused from step to step: fresh vectors grew and page-faulted
  // every step (64 x 32K LeanK: ~1 ms on the dev VM for 0.5 MB of block ids).
  std::vector<int32_t>& seq_tokens = seq_tokens_;
  std::vector<int32_t>& full_ptr = full_ptr_;
  std::vector<int32_t>& pruned_ptr = pruned_ptr_;
  std::vector<int32_t>& full_idx = full_idx_;
  std::vector<int32_t>& pruned_idx = pruned_idx_;
  seq_tokens.assign(2 * S, 0);
  full_ptr.assign(S + 1, 0);
  pruned_ptr.assign(S + 1, 0);
  full_idx.clear();
  pruned_idx.clear();
  for (int s = 0; s < S; ++s) {
    const SeqView& v = seqs[s];
    const int64_t n = v.num_tokens, m = MiddleTokens(sh, meta_.dense(), n);
    if (n <= 0 || n > (int64_t(1) << 30))
      return absl::InvalidArgumentError(absl::StrCat("decode seq ", s, ": num_tokens ", n));
    if (static_cast<int64_t>(v.full.size()) != CeilDiv(n - m, B) ||
        static_cast<int64_t>(v.pruned.size()) != m / B)
      return absl::InvalidArgumentError(absl::StrCat(
          "decode seq ", s, ": ", v.full.size(), " full / ", v.pruned.size(),
          " pruned blocks, expected ", CeilDiv(n - m, B), " / ", m / B, " for ", n, " tokens"));
    seq_tokens[2 * s] = static_cast<int32_t>(n);
    seq_tokens[2 * s + 1] = static_cast<int32_t>(m);
    full_idx.insert(full_idx.end(), v.full.begin(), v.full.end());
    pruned_idx.insert(pruned_idx.end(), v.pruned.begin(), v.pruned.end());
    full_ptr[s + 1] = static_cast<int32_t>(full_idx.size());
    pruned_ptr[s + 1] = static_cast<int32_t>(pruned_idx.size());
  }

  // Every layer's work list (decode_work.h: byte-balanced splits so all SMs are busy).
  const DecodeWork& work = planner_->Plan(seq_tokens, target_ctas);
  max_items_ = work.max_items;
  const std::vector<DecodeItem>& items = work.items;
  const std::vector<int32_t>& merge_ptr = work.merge_ptr;

  plan_.Clear();
  off_tokens_ = plan_.Append(seq_tokens.data(), seq_tokens.size());
  off_full_ptr_ = plan_.Append(full_ptr.data(), full_ptr.size());
  off_full_idx_ = plan_.Append(full_idx.data(), full_idx.size());
  off_pruned_ptr_ = plan_.Append(pruned_ptr.data(), pruned_ptr.size());
  off_pruned_idx_ = plan_.Append(pruned_idx.data(), pruned_idx.size());
  off_items_ = plan_.Append(items.data(), items.size());
  off_merge_ptr_ = plan_.Append(merge_ptr.data(), merge_ptr.size());
  const size_t partial = size_t(std::max(1, max_items_)) * G * (D + 1) * sizeof(float);
  if (partial > partial_capacity_) {
    LEANK_CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaFree(d_partial_);
    partial_capacity_ = partial * 2;
    LEANK_CUDA_CHECK(cudaMalloc(&d_partial_, partial_capacity_));
  }
  if (size_t(S) * H > counters_capacity_) {
    LEANK_CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaFree(d_counters_);
    counters_capacity_ = size_t(S) * H * 2;
    LEANK_CUDA_CHECK(cudaMalloc(&d_counters_, counters_capacity_ * sizeof(int32_t)));
    LEANK_CUDA_CHECK(cudaMemsetAsync(d_counters_, 0, counters_capacity_ * sizeof(int32_t), stream));
  }
  plan_.Upload(stream);
  num_seqs_ = S;
  return absl::OkStatus();
}

void DecodeAttention::PrepareNextStep() { planner_->PrepareNext(); }
int64_t DecodeAttention::plans() const { return planner_->plans(); }
int64_t DecodeAttention::prepared_plans() const { return planner_->prepared_used(); }
int DecodeAttention::num_items(int layer) const { return planner_->work().layer_items[layer]; }
int64_t DecodeAttention::kv_bytes(int layer) const { return planner_->work().layer_bytes[layer]; }

void DecodeAttention::Run(int layer, const bf16* q, const bf16* full, const bf16* pruned,
                          float scale, bf16* out, cudaStream_t stream) const {
  const AttentionShape& sh = meta_.shape();
  const int H = sh.num_kv_heads, D = sh.head_dim, G = sh.num_q_heads / H;
  const unsigned char* base = plan_.device();
  detail::DecodeParams p{};
  p.q = q;
  p.full = full;
  p.pruned = pruned;
  p.out = out;
  p.seq_tokens = reinterpret_cast<const int32_t*>(base + off_tokens_);
  p.full_ptr = reinterpret_cast<const int32_t*>(base + off_full_ptr_);
  p.full_idx = reinterpret_cast<const int32_t*>(base + off_full_idx_);
  p.pruned_ptr = reinterpret_cast<const int32_t*>(base + off_pruned_ptr_);
  p.pruned_idx = reinterpret_cast<const int32_t*>(base + off_pruned_idx_);
  p.items = reinterpret_cast<const DecodeItem*>(base + off_items_) +
            planner_->work().layer_item_offset[layer];
  p.merge_ptr =
      reinterpret_cast<const int32_t*>(base + off_merge_ptr_) + size_t(layer) * (num_seqs_ * H + 1);
  p.kept = meta_.d_kept() + layer * H;
  p.k_off = meta_.d_k_off() + layer * H;
  p.v_off = meta_.d_v_off() + layer * H;
  p.channels = meta_.d_channels() + size_t(layer) * H * D;
  p.pruned_block_elems = meta_.pruned_block_elems(layer);
  p.partial_o = d_partial_;
  p.partial_lse = d_partial_ + size_t(std::max(1, max_items_)) * G * D;
  p.counters = d_counters_;
  p.num_kv_heads = H;
  p.group = G;
  p.block_size = sh.block_size;
  p.log2_block = sh.block_size == 16 ? 4 : sh.block_size == 32 ? 5 : 6;
  p.scale_log2 = scale * 1.4426950408889634f;
  const detail::DecodeTmaMaps* maps = tma_->Get(meta_, layer, full, pruned);
  if (maps != nullptr) ++tma_launches_;
  detail::LaunchDecode(p, maps, D, planner_->work().layer_items[layer], num_seqs_,
                       DecodeProgrammaticLaunch(), stream);
}

}  // namespace leank::kernels
