#include "engine/cuda/cuda_backend.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/cpu/ops.h"
#include "engine/cuda/device_buffer.h"
#include "engine/cuda/gpu_sampler.h"
#include "engine/cuda/weights_upload.h"
#include "kernels/attention.h"
#include "kernels/model/ops.h"

namespace leank {
namespace {

using cuda::DeviceBuffer;
using cuda::PinnedBuffer;
using kernels::model::bf16;
namespace km = kernels::model;

constexpr size_t kAlign = 256;
constexpr int64_t kGemmWorkspaceBytes = int64_t{32} << 20;
constexpr int64_t kPlanSlackBytes = int64_t{16} << 20;  // step tables, attention plans

size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Per-row activation bytes (see ActivationBuffers).
int64_t RowBytes(const ModelConfig& c) {
  const int64_t hidden = c.hidden_size, qkv = c.q_size() + 2 * c.kv_size();
  return 4 * hidden + 2 * hidden + 4 * qkv + 2 * 2 * c.q_size() + 2 * 2 * c.intermediate_size +
         2 * c.intermediate_size;
}
int64_t LogitRowBytes(const ModelConfig& c) {
  return 4 * int64_t{c.vocab_size} + 2 * c.hidden_size;
}

// Batch sizes of the decode-step CUDA graphs, as vLLM's capture sizes: few graphs (21
// sets of L + 1 instead of one per batch size), at most 15 padding rows per step, and the
// padding is small where it costs most (small batches, bound by weight reads, pay almost
// nothing per extra row). 1 and 2 stay exact: they take the GEMV path (kGemvMaxRows).
constexpr int kGraphBatchSizes[] = {1,   2,   4,   8,   16,  24,  32,  48,  64,  80, 96,
                                    112, 128, 144, 160, 176, 192, 208, 224, 240, 256};

// Rows rounded up to their graph batch size (unchanged above the largest).
int PaddedRows(int rows) {
  const int b = CudaGraphBatchSize(rows);
  return b > 0 ? b : rows;
}
// Activation rows and logit rows of the buffers: room for the graph bucket of the
// largest decode step (<= max_num_seqs rows, <= max_batched_tokens).
int ActivationRows(int max_batched_tokens, int max_num_seqs) {
  const int tokens = std::max(1, max_batched_tokens);
  return std::max(tokens, PaddedRows(std::min(tokens, std::max(1, max_num_seqs))));
}
int LogitRows(int max_num_seqs) { return PaddedRows(std::max(1, max_num_seqs)); }

}  // namespace

int CudaGraphBatchSize(int rows) {
  for (int b : kGraphBatchSizes) {
    if (rows >= 1 && b >= rows) return b;
  }
  return 0;
}

int64_t CudaWeightBytes(const ModelConfig& c) { return cuda::PackedWeightBytes(c); }

int64_t CudaActivationBytes(const ModelConfig& c, int max_batched_tokens, int max_num_seqs) {
  return RowBytes(c) * ActivationRows(max_batched_tokens, max_num_seqs) +
         LogitRowBytes(c) * LogitRows(max_num_seqs) + kGemmWorkspaceBytes + kPlanSlackBytes;
}

int64_t CudaKvBytes(const cache::CacheLayout& layout, cache::PoolSizes sizes) {
  const int last = layout.options().num_layers - 1;
  const int64_t full =
      int64_t{layout.options().num_layers} * sizes.num_full_blocks * layout.full_block_elems();
  const int64_t pruned = layout.dense() || sizes.num_pruned_blocks == 0
                             ? 0
                             : layout.pruned_layer_base(last, sizes.num_pruned_blocks) +
                                   sizes.num_pruned_blocks * layout.pruned_block_elems(last);
  return 2 * (full + pruned);
}

absl::StatusOr<int64_t> CudaFreeMemory(int device) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count <= device) {
    cudaGetLastError();
    return absl::UnavailableError(absl::StrCat("no CUDA device ", device, " (", count, " devices; ",
                                               e == cudaSuccess ? "ok" : cudaGetErrorString(e),
                                               ")"));
  }
  if ((e = cudaSetDevice(device)) != cudaSuccess) {
    return absl::UnavailableError(
        absl::StrCat("cudaSetDevice(", device, "): ", cudaGetErrorString(e)));
  }
  size_t free_bytes = 0, total = 0;
  if ((e = cudaMemGetInfo(&free_bytes, &total)) != cudaSuccess) {
    return absl::UnavailableError(absl::StrCat("cudaMemGetInfo: ", cudaGetErrorString(e)));
  }
  return static_cast<int64_t>(free_bytes);
}

namespace {

class CudaBackend final : public Backend {
 public:
  CudaBackend(const ModelConfig& config, const cache::CacheLayout& layout, cache::PoolSizes sizes,
              const CudaBackendOptions& options)
      : config_(config), layout_(layout), sizes_(sizes), options_(options) {}
  ~CudaBackend() override {
    if (profile_ && profile_steps_ > 0) {
      static const char* kNames[] = {"gemm qkv", "gemm o",    "gemm gate/up",       "gemm down",
                                     "lm head",  "attention", "norm/rope/silu/emb", "compaction"};
      double total = 0;
      for (double v : profile_ms_) total += v;
      std::fprintf(stderr, "cuda profile over %lld steps (ms per step, device time):",
                   static_cast<long long>(profile_steps_));
      for (int i = 0; i < 8; ++i) {
        std::fprintf(stderr, " %s %.3f;", kNames[i], profile_ms_[i] / profile_steps_);
      }
      std::fprintf(stderr, " total %.3f\n", total / profile_steps_);
    }
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
    ClearGraphs();
    decode_.reset();
    meta_.reset();
    if (stream_) cudaStreamDestroy(stream_);
  }

  absl::Status Init(std::shared_ptr<const cuda::PackedWeights> weights);
  // Whole pools, for FillCudaCacheRandom.
  void FillRandom(uint64_t seed) {
    km::FillRandomBf16(kv_full_.as<bf16>(), kv_full_.bytes() / 2, seed, stream_);
    km::FillRandomBf16(kv_pruned_.as<bf16>(), kv_pruned_.bytes() / 2, seed + 1, stream_);
    LEANK_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  std::string name() const override { return "cuda"; }
  const ModelConfig& config() const override { return config_; }
  const cache::CacheLayout& layout() const override { return layout_; }
  cache::PoolSizes pool_sizes() const override { return sizes_; }
  bool samples_on_device() const override { return true; }
  absl::Status Forward(const StepPlan& plan, StepOutput* out) override;
  CudaGraphStats graph_stats() const {
    CudaGraphStats st = graph_stats_;
    for (const auto& [bucket, execs] : graphs_) st.buckets.push_back(bucket);
    if (decode_) {
      st.decode_plans = decode_->plans();
      st.decode_plans_prepared = decode_->prepared_plans();
    }
    return st;
  }

 private:
  absl::Status EnsureRows(int64_t rows, int64_t logit_rows);
  // LEANK_CUDA_PROFILE=1: device time per kind of work (events around each launch,
  // graphs off), printed when the backend is destroyed. For finding where a step goes.
  template <typename F>
  void Timed(int kind, F&& f) {
    if (!profile_) {
      f();
      return;
    }
    while (events_.size() < 2 * (marks_.size() + 1)) {
      cudaEvent_t e;
      LEANK_CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
    }
    cudaEvent_t e0 = events_[2 * marks_.size()], e1 = events_[2 * marks_.size() + 1];
    LEANK_CUDA_CHECK(cudaEventRecord(e0, stream_));
    f();
    LEANK_CUDA_CHECK(cudaEventRecord(e1, stream_));
    marks_.push_back(kind);
  }
  void CollectProfile(bool count) {  // count: a decode-only step (prefill steps skipped)
    for (size_t i = 0; i < marks_.size() && count; ++i) {
      float ms = 0;
      LEANK_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[2 * i], events_[2 * i + 1]));
      profile_ms_[marks_[i]] += ms;
    }
    marks_.clear();
    profile_steps_ += count;
  }
  void ClearGraphs() {
    for (auto& [rows, execs] : graphs_) {
      for (cudaGraphExec_t e : execs) cudaGraphExecDestroy(e);
    }
    graphs_.clear();
  }
  // The GEMV kernel beats cuBLASLt at 1 row (lm head 101% vs 90% of the read bandwidth on
  // H100) but loses at 16 rows (37-58% vs 64-89%): bench/results/engine-*.json, "gemv".
  static constexpr int kGemvMaxRows = 2;
  bool UseGemv(int rows, int k) const {
    return options_.small_batch_gemv && rows <= kGemvMaxRows && km::GemvApplies(rows, k);
  }
  // RMSNorm fused into the GEMV (1-2 rows): one launch and one dependency hop fewer.
  bool UseFusedNorm(int rows, int k) const {
    return options_.small_batch_gemv && options_.fused_norm && km::FusedGemvApplies(rows, k);
  }
  void MatMulF32(const bf16* x, const bf16* w, float* y, int rows, int n, int k, float beta) {
    if (UseGemv(rows, k)) {
      km::GemvF32(x, w, y, rows, n, k, beta, stream_);
    } else {
      gemm_.RunF32(x, w, y, rows, n, k, beta, stream_);
    }
  }
  void MatMulBf16(const bf16* x, const bf16* w, bf16* y, int rows, int n, int k) {
    if (UseGemv(rows, k)) {
      km::GemvBf16(x, w, y, rows, n, k, stream_);
    } else {
      gemm_.RunBf16(x, w, y, rows, n, k, stream_);
    }
  }
  const bf16* FullLayer(int l) const {
    return kv_full_.as<bf16>() + int64_t{l} * sizes_.num_full_blocks * layout_.full_block_elems();
  }
  bf16* FullLayerMut(int l) { return const_cast<bf16*>(FullLayer(l)); }
  bf16* PrunedLayer(int l) {
    if (layout_.dense() || sizes_.num_pruned_blocks == 0) return kv_pruned_.as<bf16>();
    return kv_pruned_.as<bf16>() + layout_.pruned_layer_base(l, sizes_.num_pruned_blocks);
  }
  int64_t PrunedBlockElems(int l) const {
    return layout_.dense() ? 0 : layout_.pruned_block_elems(l);
  }

  ModelConfig config_;
  const cache::CacheLayout& layout_;
  cache::PoolSizes sizes_;
  CudaBackendOptions options_;
  cudaStream_t stream_ = nullptr;

  std::shared_ptr<const cuda::PackedWeights> weights_;
  DeviceBuffer inv_freq_;
  DeviceBuffer kv_full_, kv_pruned_;
  // Channel metadata for the generic kernels: kept, k_off, v_off [L][H] int32, channels
  // [L][H][D] uint8.
  DeviceBuffer meta_buf_;
  km::CacheMetaView meta_view_;
  // Fast kernels (head_dim 64/128), absent when the shape has no instantiation.
  std::optional<kernels::DeviceMeta> meta_;
  std::unique_ptr<kernels::DecodeAttention> decode_;
  std::unique_ptr<kernels::PrefillAttention> prefill_;
  km::Gemm gemm_;
  cuda::GpuSampler sampler_;  // rows with SeqWork::sample (after the logits copy, if any)

  // Activations for `rows_cap_` rows and `logit_cap_` logit rows.
  int64_t rows_cap_ = 0, logit_cap_ = 0;
  DeviceBuffer x_, h_, qkv_, q_, attn_, gu_, act_, logits_, final_h_;
  // Step tables: one upload per step.
  PinnedBuffer staging_, logits_host_;
  DeviceBuffer step_buf_;
  // Decode-step graphs per batch-size bucket (kGraphBatchSizes): segments 0..L (Forward).
  std::map<int, std::vector<cudaGraphExec_t>> graphs_;
  std::map<int, int> graph_seen_;
  CudaGraphStats graph_stats_;  // counters only (buckets filled by graph_stats())
  // Forward's host tables, kept between steps so that their capacity is reused.
  struct StepHost {
    std::vector<int32_t> tokens, row_seq, full_idx, pruned_idx, jobs, logit_rows, words;
  } step_host_;
  bool profile_ = [] {  // LEANK_CUDA_PROFILE set and not "0"
    const char* e = std::getenv("LEANK_CUDA_PROFILE");
    return e != nullptr && e[0] != '\0' && e[0] != '0';
  }();
  std::vector<cudaEvent_t> events_;
  std::vector<int> marks_;
  double profile_ms_[8] = {};
  int64_t profile_steps_ = 0;
};

absl::Status CudaBackend::Init(std::shared_ptr<const cuda::PackedWeights> weights) {
  const ModelConfig& c = config_;
  LEANK_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  weights_ = std::move(weights);

  std::vector<float> inv_freq = cpu::Rope(c).inv_freq();
  if (auto s = inv_freq_.Allocate(inv_freq.size() * 4, "rope table"); !s.ok()) return s;
  LEANK_CUDA_CHECK(cudaMemcpy(inv_freq_.as<float>(), inv_freq.data(), inv_freq.size() * 4,
                              cudaMemcpyHostToDevice));

  // KV pools. Poisoned with NaN bits in debug spirit? No: zeros are never read (every
  // read slot is written first), and a memset costs seconds on 60 GB pools.
  const int64_t kv_bytes = CudaKvBytes(layout_, sizes_);
  const int64_t full_bytes =
      2 * int64_t{c.num_layers} * sizes_.num_full_blocks * layout_.full_block_elems();
  if (auto s = kv_full_.Allocate(full_bytes, "the full KV blocks"); !s.ok()) return s;
  if (auto s = kv_pruned_.Allocate(kv_bytes - full_bytes, "the pruned KV blocks"); !s.ok())
    return s;

  // Channel metadata (generic kernels).
  const int L = c.num_layers, H = c.num_kv_heads, D = c.head_dim;
  std::vector<int32_t> ints(3 * L * H, 0);
  std::vector<uint8_t> chans(size_t(L) * H * D, 0);
  std::vector<std::vector<std::vector<int>>> kept_channels;
  if (!layout_.dense()) kept_channels.assign(L, std::vector<std::vector<int>>(H));
  for (int l = 0; l < L; ++l) {
    for (int h = 0; h < H; ++h) {
      ints[l * H + h] = layout_.kept(l, h);
      ints[L * H + l * H + h] = layout_.dense() ? 0 : layout_.pruned_k_offset(l, h);
      ints[2 * L * H + l * H + h] = layout_.dense() ? 0 : layout_.pruned_v_offset(l, h);
      if (layout_.dense()) continue;
      const std::vector<int>& ch = layout_.mask()->KeptChannels(l, h);
      kept_channels[l][h] = ch;
      for (size_t i = 0; i < ch.size(); ++i) chans[(size_t(l) * H + h) * D + i] = ch[i];
    }
  }
  if (auto s = meta_buf_.Allocate(ints.size() * 4 + chans.size(), "cache metadata"); !s.ok())
    return s;
  LEANK_CUDA_CHECK(
      cudaMemcpy(meta_buf_.as<char>(), ints.data(), ints.size() * 4, cudaMemcpyHostToDevice));
  LEANK_CUDA_CHECK(cudaMemcpy(meta_buf_.as<char>() + ints.size() * 4, chans.data(), chans.size(),
                              cudaMemcpyHostToDevice));
  meta_view_.kept = meta_buf_.as<int32_t>();
  meta_view_.k_off = meta_buf_.as<int32_t>() + L * H;
  meta_view_.v_off = meta_buf_.as<int32_t>() + 2 * L * H;
  meta_view_.channels = reinterpret_cast<const uint8_t*>(meta_buf_.as<char>() + ints.size() * 4);
  meta_view_.num_kv_heads = H;
  meta_view_.head_dim = D;
  meta_view_.block_size = layout_.block_size();
  meta_view_.sink = layout_.options().sink;
  meta_view_.recent = layout_.options().recent;
  meta_view_.dense = layout_.dense();

  if (!options_.force_generic_attention) {
    kernels::AttentionShape shape{L,
                                  H,
                                  c.num_heads,
                                  D,
                                  layout_.block_size(),
                                  layout_.options().sink,
                                  layout_.options().recent};
    auto meta = kernels::DeviceMeta::Create(shape, kept_channels);
    if (meta.ok()) {
      for (int l = 0; l < L && !layout_.dense(); ++l) {
        if (meta->pruned_block_elems(l) != layout_.pruned_block_elems(l)) {
          return absl::InternalError(
              absl::StrCat("kernels::DeviceMeta and cache::CacheLayout "
                           "disagree on pruned block size of layer ",
                           l));
        }
      }
      meta_.emplace(*std::move(meta));
      decode_ = std::make_unique<kernels::DecodeAttention>(*meta_);
      prefill_ = std::make_unique<kernels::PrefillAttention>(*meta_);
    }
  }
  if (auto s = EnsureRows(ActivationRows(options_.max_batched_tokens, options_.max_num_seqs),
                          LogitRows(options_.max_num_seqs));
      !s.ok())
    return s;
  LEANK_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::EnsureRows(int64_t rows, int64_t logit_rows) {
  const ModelConfig& c = config_;
  if (rows > rows_cap_) {
    LEANK_CUDA_CHECK(cudaStreamSynchronize(stream_));
    const int64_t hidden = c.hidden_size, qkv = c.q_size() + 2 * c.kv_size();
    for (auto [buf, bytes, what] :
         {std::tuple{&x_, 4 * hidden, "residual"}, std::tuple{&h_, 2 * hidden, "normed"},
          std::tuple{&qkv_, 4 * qkv, "qkv"}, std::tuple{&q_, int64_t{2} * c.q_size(), "q"},
          std::tuple{&attn_, int64_t{2} * c.q_size(), "attention output"},
          std::tuple{&gu_, int64_t{4} * c.intermediate_size, "gate/up"},
          std::tuple{&act_, int64_t{2} * c.intermediate_size, "mlp activation"}}) {
      if (auto s = buf->Allocate(AlignUp(bytes * rows), what); !s.ok()) return s;
    }
    // The padding rows of a graph bucket feed attn_ rows that no attention writes this
    // step into the O GEMM: zeros or rows of earlier steps rather than whatever cudaMalloc
    // left (harmless either way, rows are independent outside attention, but finite).
    LEANK_CUDA_CHECK(cudaMemsetAsync(attn_.as<char>(), 0, attn_.bytes(), stream_));
    rows_cap_ = rows;
    ClearGraphs();
  }
  if (logit_rows > logit_cap_) {
    LEANK_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (auto s = logits_.Allocate(AlignUp(int64_t{4} * c.vocab_size * logit_rows), "logits");
        !s.ok())
      return s;
    if (auto s = final_h_.Allocate(AlignUp(int64_t{2} * c.hidden_size * logit_rows), "final norm");
        !s.ok())
      return s;
    logits_host_.Reserve(int64_t{4} * c.vocab_size * logit_rows);
    logit_cap_ = logit_rows;
    ClearGraphs();
  }
  return absl::OkStatus();
}

// Appends `n` int32 values to `words` at a 16-byte boundary; returns the offset (words).
size_t AppendWords(std::vector<int32_t>& words, const int32_t* data, size_t n) {
  const size_t off = (words.size() + 3) & ~size_t{3};
  words.resize(off + n);
  if (n) std::memcpy(words.data() + off, data, n * 4);
  return off;
}

absl::Status CudaBackend::Forward(const StepPlan& plan, StepOutput* out) {
  const ModelConfig& c = config_;
  const int64_t vocab = c.vocab_size, hidden = c.hidden_size;
  const int nseq = static_cast<int>(plan.seqs.size());
  // Row order: decode sequences (one new token) first when the fast decode kernel runs,
  // so their q rows are contiguous; the model is row-independent outside attention.
  std::vector<int> order;
  int num_decode = 0;
  for (int i = 0; i < nseq; ++i) {
    const SeqWork& s = plan.seqs[i];
    if (s.cache.num_new_tokens != static_cast<int64_t>(s.tokens.size())) {
      return absl::InternalError(absl::StrCat("plan for sequence ", s.cache.seq, " has ",
                                              s.tokens.size(), " tokens but reserves ",
                                              s.cache.num_new_tokens));
    }
    if (s.tokens.empty() && s.want_logits) {
      return absl::InternalError(
          absl::StrCat("sequence ", s.cache.seq, " wants logits but has no new token"));
    }
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", t, " outside vocabulary"));
      }
    }
    if (decode_ && s.tokens.size() == 1) {
      order.push_back(i);
      ++num_decode;
    }
  }
  for (int i = 0; i < nseq; ++i) {
    if (!(decode_ && plan.seqs[i].tokens.size() == 1)) order.push_back(i);
  }

  // Host tables in row order, members reused from step to step: fresh vectors grew and
  // page-faulted every step (the block ids of 64 x 32K LeanK are 0.5 MB: ~1 ms on the dev
  // VM, 85 us reused).
  std::vector<int32_t>& tokens = step_host_.tokens;
  std::vector<int32_t>& row_seq = step_host_.row_seq;
  std::vector<int32_t>& full_idx = step_host_.full_idx;
  std::vector<int32_t>& pruned_idx = step_host_.pruned_idx;
  std::vector<int32_t>& jobs = step_host_.jobs;
  std::vector<int32_t>& logit_rows = step_host_.logit_rows;
  for (auto* v : {&tokens, &row_seq, &full_idx, &pruned_idx, &jobs, &logit_rows}) v->clear();
  std::vector<km::StepSeq> seqs(nseq);
  std::vector<int> row_begin(nseq);
  int32_t rows = 0;
  for (int k = 0; k < nseq; ++k) {
    const int i = order[k];
    const SeqWork& s = plan.seqs[i];
    const cache::AppendPlan& cp = s.cache;
    km::StepSeq& ss = seqs[k];
    ss.start_pos = static_cast<int32_t>(cp.start_pos);
    ss.num_new = static_cast<int32_t>(s.tokens.size());
    ss.middle_before = static_cast<int32_t>(cp.middle_before);
    ss.row_begin = rows;
    ss.full_begin = static_cast<int32_t>(full_idx.size());
    ss.pruned_begin = static_cast<int32_t>(pruned_idx.size());
    row_begin[i] = rows;
    full_idx.insert(full_idx.end(), cp.full_blocks.begin(), cp.full_blocks.end());
    pruned_idx.insert(pruned_idx.end(), cp.pruned_blocks.begin(), cp.pruned_blocks.end());
    tokens.insert(tokens.end(), s.tokens.begin(), s.tokens.end());
    row_seq.insert(row_seq.end(), s.tokens.size(), k);
    rows += ss.num_new;
    const int S = layout_.options().sink, B = layout_.block_size();
    for (int j = 0; j < cp.num_compactions(); ++j) {
      jobs.push_back(cp.full_blocks[S / B + j]);
      jobs.push_back(cp.pruned_blocks[cp.middle_before / B + j]);
    }
  }
  for (int i = 0; i < nseq; ++i) {
    if (plan.seqs[i].want_logits) {
      logit_rows.push_back(row_begin[i] + static_cast<int32_t>(plan.seqs[i].tokens.size()) - 1);
    }
  }
  const int num_logits = static_cast<int>(logit_rows.size());
  // Device sampling: the DeviceSample of each logits row (nullptr: not sampled).
  std::vector<const DeviceSample*> row_samples;
  for (const SeqWork& s : plan.seqs) {
    if (s.want_logits) row_samples.push_back(s.sample ? &*s.sample : nullptr);
  }
  const int num_sampled = static_cast<int>(
      std::count_if(row_samples.begin(), row_samples.end(), [](auto* p) { return p != nullptr; }));
  out->vocab = vocab;
  out->logits.clear();
  out->sampled.clear();
  if (rows == 0) return absl::OkStatus();
  if (auto s = EnsureRows(rows, std::max(1, num_logits)); !s.ok()) return s;

  // Decode-only steps run from the CUDA graphs of their batch-size bucket (the smallest
  // of kGraphBatchSizes >= rows), over graph_rows = bucket rows. Padding rows
  // [rows, graph_rows) are harmless:
  // - their token id is 0 (the embedding reads a valid row) and their row_seq entry is
  //   -1: QkvRopeWrite reads it from the uploaded table (the captured grid is the
  //   bucket's, so the real count must come from device memory) and skips the row, so
  //   nothing is written into the KV cache (nor q);
  // - their logit_rows entry is 0 (a real row): the final norm and the LM head run over
  //   graph_rows rows, and logits rows >= num_logits are never copied or sampled;
  // - attention, compaction, the logits copy and the sampler run outside the graphs with
  //   the real counts; the GEMMs, norms, SwiGLU and embedding in the graphs treat rows
  //   independently, over buffers of >= graph_rows rows (a bucket larger than the
  //   buffers runs without graphs).
  const int bucket = CudaGraphBatchSize(rows);
  const bool graphable = !profile_ && options_.cuda_graphs && decode_ && num_decode == nseq &&
                         num_logits == nseq && bucket > 0 && bucket <= rows_cap_ &&
                         bucket <= logit_cap_;
  const int graph_rows = graphable ? bucket : rows;       // rows of the model kernels
  const int head_rows = graphable ? bucket : num_logits;  // rows of the LM head
  // Here nseq == num_logits == rows: the four sections read inside the graphs get
  // graph_rows entries.
  if (graphable) {
    tokens.resize(graph_rows, 0);
    row_seq.resize(graph_rows, -1);
    seqs.resize(graph_rows, km::StepSeq{});
    logit_rows.resize(head_rows, 0);
  }

  std::vector<int32_t>& words = step_host_.words;
  words.clear();
  // Sizes of the first sections depend only on (rows, sequences, logit rows), all
  // graph_rows in a graph step, so a CUDA graph captured for a bucket finds its tables at
  // the same addresses (the later sections are read outside the graphs, or through
  // full_idx via StepSeq offsets).
  const size_t o_tokens = AppendWords(words, tokens.data(), tokens.size());
  const size_t o_row_seq = AppendWords(words, row_seq.data(), row_seq.size());
  const size_t o_seqs = AppendWords(words, reinterpret_cast<const int32_t*>(seqs.data()),
                                    seqs.size() * sizeof(km::StepSeq) / 4);
  const size_t o_logit = AppendWords(words, logit_rows.data(), logit_rows.size());
  const size_t o_full = AppendWords(words, full_idx.data(), full_idx.size());
  const size_t o_pruned = AppendWords(words, pruned_idx.data(), pruned_idx.size());
  const size_t o_jobs = AppendWords(words, jobs.data(), jobs.size());
  const size_t bytes = words.size() * 4;
  if (bytes > step_buf_.bytes()) {
    LEANK_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (auto s = step_buf_.Allocate(AlignUp(bytes * 2), "step tables"); !s.ok()) return s;
    ClearGraphs();
  }
  staging_.Reserve(bytes);
  std::memcpy(staging_.as<int32_t>(), words.data(), bytes);
  LEANK_CUDA_CHECK(cudaMemcpyAsync(step_buf_.as<int32_t>(), staging_.as<int32_t>(), bytes,
                                   cudaMemcpyHostToDevice, stream_));
  const int32_t* d = step_buf_.as<int32_t>();
  km::StepTables tables{reinterpret_cast<const km::StepSeq*>(d + o_seqs), d + o_row_seq, d + o_full,
                        d + o_pruned};
  const int num_jobs = static_cast<int>(jobs.size() / 2);

  // Host plans of the attention kernels: built while segment 0 (embedding, layer 0's
  // QKV) runs on the GPU (see the launch loop below); their uploads do not wait.
  bool prefill_fast = false;
  auto plan_attention = [&]() -> absl::Status {
    if (num_decode > 0) {
      std::vector<std::vector<int32_t>> full_after(num_decode);
      std::vector<kernels::SeqView> views(num_decode);
      for (int k = 0; k < num_decode; ++k) {
        const cache::AppendPlan& cp = plan.seqs[order[k]].cache;
        full_after[k] = kernels::DecodeFullBlocksAfterCompaction(meta_->shape(), cp.full_blocks,
                                                                 cp.num_compactions());
        views[k] = {cp.start_pos + 1, full_after[k], cp.pruned_blocks};
      }
      if (auto s = decode_->Plan(views, stream_); !s.ok()) {
        return absl::InternalError(absl::StrCat("decode plan: ", s.message()));
      }
    }
    if (prefill_ && num_decode < nseq) {
      std::vector<kernels::PrefillSeq> pseqs;
      for (int k = num_decode; k < nseq; ++k) {
        const cache::AppendPlan& cp = plan.seqs[order[k]].cache;
        pseqs.push_back({cp.start_pos, cp.num_new_tokens, cp.full_blocks, cp.pruned_blocks});
      }
      if (auto s = prefill_->Plan(pseqs, stream_); !s.ok()) {
        return absl::InternalError(absl::StrCat("prefill plan: ", s.message()));
      }
      prefill_fast = true;
    }
    return absl::OkStatus();
  };

  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const float eps = static_cast<float>(c.rms_norm_eps);
  const int qkv_n = c.q_size() + 2 * c.kv_size(), inter = c.intermediate_size;
  float* x = x_.as<float>();
  bf16* h = h_.as<bf16>();
  const int64_t q_row = int64_t{c.num_heads} * c.head_dim;
  // The step in three kinds of pieces: before attention (norm, QKV, RoPE + K/V write),
  // attention (compaction, decode, prefill), after attention (O, MLP); then the LM head.
  auto pre = [&](int l) {
    const cuda::PackedLayer& w = weights_->layers[l];
    if (UseFusedNorm(graph_rows, c.hidden_size)) {
      Timed(0, [&] {
        km::GemvRmsNormF32(x, w.input_norm, eps, w.qkv, qkv_.as<float>(), graph_rows, qkv_n,
                           c.hidden_size, stream_);
      });
    } else {
      Timed(6, [&] {
        km::RmsNorm(x, nullptr, graph_rows, c.hidden_size, w.input_norm, eps, h, stream_);
      });
      Timed(0,
            [&] { MatMulF32(h, w.qkv, qkv_.as<float>(), graph_rows, qkv_n, c.hidden_size, 0.0f); });
    }
    Timed(6, [&] {
      km::QkvRopeWrite(qkv_.as<float>(), w.qkv_bias, inv_freq_.as<float>(), graph_rows, c.num_heads,
                       meta_view_, tables, q_.as<bf16>(), FullLayerMut(l), stream_);
    });
  };
  auto attend = [&](int l) {
    if (num_jobs > 0) {
      if (meta_) {
        kernels::LaunchCompact(*meta_, l, l + 1, kv_full_.as<bf16>(), sizes_.num_full_blocks,
                               kv_pruned_.as<bf16>(), sizes_.num_pruned_blocks,
                               reinterpret_cast<const kernels::CompactJob*>(d + o_jobs), num_jobs,
                               stream_);
      } else {
        km::GenericCompact(d + o_jobs, num_jobs, l, meta_view_, FullLayer(l), PrunedLayer(l),
                           PrunedBlockElems(l), stream_);
      }
    }
    if (num_decode > 0) {
      decode_->Run(l, q_.as<bf16>(), FullLayer(l), PrunedLayer(l), scale, attn_.as<bf16>(),
                   stream_);
    }
    if (num_decode == rows) return;
    if (prefill_fast) {
      prefill_->Run(l, q_.as<bf16>() + num_decode * q_row, FullLayer(l), PrunedLayer(l), scale,
                    attn_.as<bf16>() + num_decode * q_row, stream_);
    } else {
      km::GenericAttention(q_.as<bf16>(), num_decode, rows - num_decode, c.num_heads, l, meta_view_,
                           tables, FullLayer(l), PrunedLayer(l), PrunedBlockElems(l), scale,
                           attn_.as<bf16>(), stream_);
    }
  };
  auto post = [&](int l) {
    const cuda::PackedLayer& w = weights_->layers[l];
    Timed(1, [&] {
      MatMulF32(attn_.as<bf16>(), w.o, x, graph_rows, c.hidden_size, c.q_size(), 1.0f);
    });
    if (UseFusedNorm(graph_rows, c.hidden_size)) {
      // RMSNorm fused into the gate/up GEMV.
      Timed(2, [&] {
        km::GemvRmsNormBf16(x, w.post_norm, eps, w.gate_up, gu_.as<bf16>(), graph_rows, 2 * inter,
                            c.hidden_size, stream_);
      });
    } else {
      Timed(6, [&] {
        km::RmsNorm(x, nullptr, graph_rows, c.hidden_size, w.post_norm, eps, h, stream_);
      });
      Timed(2, [&] {
        MatMulBf16(h, w.gate_up, gu_.as<bf16>(), graph_rows, 2 * inter, c.hidden_size);
      });
    }
    Timed(6, [&] { km::SiluMul(gu_.as<bf16>(), graph_rows, inter, act_.as<bf16>(), stream_); });
    Timed(3,
          [&] { MatMulF32(act_.as<bf16>(), w.down, x, graph_rows, c.hidden_size, inter, 1.0f); });
  };
  auto head = [&] {
    if (num_logits == 0) return;
    km::RmsNorm(x, d + o_logit, head_rows, c.hidden_size, weights_->final_norm, eps,
                final_h_.as<bf16>(), stream_);
    Timed(4, [&] {
      MatMulF32(final_h_.as<bf16>(), weights_->lm_head, logits_.as<float>(), head_rows,
                static_cast<int>(vocab), c.hidden_size, 0.0f);
    });
    // The logits copy and the sampler run after the segments (outside the graphs: which
    // rows are sampled changes from step to step).
  };
  // Segment s of a step: s = 0 embedding + pre(0); 0 < s < L: post(s-1) + pre(s);
  // s = L: post(L-1) + head.
  const int L = c.num_layers;
  auto segment = [&](int s) {
    if (s == 0) km::Embedding(d + o_tokens, graph_rows, weights_->embed, c.hidden_size, x, stream_);
    if (s > 0) post(s - 1);
    if (s < L) {
      pre(s);
    } else {
      head();
    }
  };
  std::vector<cudaGraphExec_t>* graphs = nullptr;
  if (graphable) {
    // Captured at the second step of a bucket: the first one (run directly, over the
    // same graph_rows) creates the GEMM plans.
    if (++graph_seen_[graph_rows] >= 2) {
      graphs = &graphs_[graph_rows];
      if (graphs->empty()) {
        ++graph_stats_.captures;
        for (int s = 0; s <= L; ++s) {
          LEANK_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
          segment(s);
          cudaGraph_t g = nullptr;
          LEANK_CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
          cudaGraphExec_t exec = nullptr;
          LEANK_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
          LEANK_CUDA_CHECK(cudaGraphDestroy(g));
          graphs->push_back(exec);
        }
      }
      ++graph_stats_.replays;
      graph_stats_.padded_rows += graph_rows - rows;
    }
  }
  for (int s = 0; s <= L; ++s) {
    if (graphs) {
      LEANK_CUDA_CHECK(cudaGraphLaunch((*graphs)[s], stream_));
    } else {
      segment(s);
    }
    if (s == 0) {
      if (absl::Status st = plan_attention(); !st.ok()) {
        // Staging buffers are reused by the next step: let the queued work finish first.
        LEANK_CUDA_CHECK(cudaStreamSynchronize(stream_));
        return st;
      }
    }
    if (s < L) Timed(5, [&] { attend(s); });
  }
  // Raw logits to the host unless every row is sampled here; the sampler modifies its rows
  // in place, so it runs after the copy.
  const bool copy_logits = num_logits > 0 && num_sampled < num_logits;
  if (copy_logits) {
    LEANK_CUDA_CHECK(cudaMemcpyAsync(logits_host_.as<float>(), logits_.as<float>(),
                                     size_t(num_logits) * vocab * 4, cudaMemcpyDeviceToHost,
                                     stream_));
  }
  absl::Status sample_status;
  if (num_sampled > 0) {
    sample_status = sampler_.Enqueue(logits_.as<float>(), vocab, row_samples, stream_);
  }
  // While the GPU runs the step: the decode work lists of the next step, for the case that
  // it is this batch one token on (the common one); the next Plan takes them only if its
  // inputs are exactly those (kernels/decode_work.h), else it builds anew.
  if (num_decode > 0) decode_->PrepareNextStep();
  cudaError_t e = cudaStreamSynchronize(stream_);
  if (e != cudaSuccess) {
    return absl::InternalError(absl::StrCat("CUDA step failed: ", cudaGetErrorString(e)));
  }
  if (!sample_status.ok()) return sample_status;
  if (profile_) CollectProfile(num_decode == nseq);
  if (copy_logits) {
    out->logits.assign(logits_host_.as<float>(), logits_host_.as<float>() + num_logits * vocab);
  }
  if (num_sampled > 0) sampler_.Results(&out->sampled);
  (void)hidden;
  return absl::OkStatus();
}

absl::Status CheckAndPreflight(const ModelConfig& config, const cache::CacheLayout& layout,
                               cache::PoolSizes sizes, const CudaBackendOptions& options,
                               int64_t weight_bytes) {
  if (layout.options().elem_bytes != 2) {
    return absl::InvalidArgumentError("the CUDA backend stores its cache in bf16 (elem_bytes 2)");
  }
  if (config.head_dim % 2 != 0 || config.head_dim > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA backend: head_dim ", config.head_dim, " (even, <= 256)"));
  }
  auto free_bytes = CudaFreeMemory(options.device);
  if (!free_bytes.ok()) return free_bytes.status();
  const int64_t w = weight_bytes,
                a = CudaActivationBytes(config, options.max_batched_tokens, options.max_num_seqs),
                kv = CudaKvBytes(layout, sizes);
  if (w + a + kv > *free_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the model does not fit on GPU ", options.device, ": weights ", w,
        " B (bf16) + activations ", a, " B (", options.max_batched_tokens, " tokens, ",
        options.max_num_seqs, " logit rows) + KV cache ", kv, " B (", sizes.num_full_blocks,
        " full + ", sizes.num_pruned_blocks, " pruned blocks) = ", w + a + kv, " B > ", *free_bytes,
        " B free; lower --kv-cache-memory or max batched tokens"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<const cuda::PackedWeights>> UploadCudaWeights(
    const ModelConfig& config, const ModelWeights& weights, int device) {
  auto free_bytes = CudaFreeMemory(device);
  if (!free_bytes.ok()) return free_bytes.status();
  const int64_t w = CudaWeightBytes(config);
  if (w > *free_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("the weights need ", w, " B as bf16, GPU ",
                                                     device, " has ", *free_bytes, " B free"));
  }
  auto packed = std::make_shared<cuda::PackedWeights>();
  if (auto s = packed->Upload(config, weights, nullptr); !s.ok()) return s;
  return std::shared_ptr<const cuda::PackedWeights>(std::move(packed));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(
    const ModelConfig& config, std::shared_ptr<const cuda::PackedWeights> weights,
    const cache::CacheLayout& layout, cache::PoolSizes sizes, const CudaBackendOptions& options) {
  if (auto s = CheckAndPreflight(config, layout, sizes, options, 0); !s.ok()) return s;
  auto backend = std::make_unique<CudaBackend>(config, layout, sizes, options);
  if (auto s = backend->Init(std::move(weights)); !s.ok()) return s;
  return backend;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const ModelConfig& config,
                                                           const ModelWeights& weights,
                                                           const cache::CacheLayout& layout,
                                                           cache::PoolSizes sizes,
                                                           const CudaBackendOptions& options) {
  if (auto s = CheckAndPreflight(config, layout, sizes, options, CudaWeightBytes(config)); !s.ok())
    return s;
  auto packed = std::make_shared<cuda::PackedWeights>();
  if (auto s = packed->Upload(config, weights, nullptr); !s.ok()) return s;
  auto backend = std::make_unique<CudaBackend>(config, layout, sizes, options);
  if (auto s = backend->Init(std::move(packed)); !s.ok()) return s;
  return backend;
}

absl::Status FillCudaCacheRandom(Backend* backend, uint64_t seed) {
  auto* b = dynamic_cast<CudaBackend*>(backend);
  if (!b) return absl::InvalidArgumentError("FillCudaCacheRandom: not a CUDA backend");
  b->FillRandom(seed);
  return absl::OkStatus();
}

absl::StatusOr<CudaGraphStats> GetCudaGraphStats(const Backend* backend) {
  auto* b = dynamic_cast<const CudaBackend*>(backend);
  if (!b) return absl::InvalidArgumentError("GetCudaGraphStats: not a CUDA backend");
  return b->graph_stats();
}

absl::StatusOr<double> MeasureCudaReadBandwidth(int64_t bytes, int device) {
  if (auto f = CudaFreeMemory(device); !f.ok()) return f.status();
  DeviceBuffer buf, sink;
  if (auto s = buf.Allocate(bytes, "bandwidth probe"); !s.ok()) return s;
  if (auto s = sink.Allocate(4096, "bandwidth probe"); !s.ok()) return s;
  km::FillRandomBf16(buf.as<bf16>(), bytes / 2, 1, nullptr);
  cudaEvent_t e0, e1;
  LEANK_CUDA_CHECK(cudaEventCreate(&e0));
  LEANK_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int i = 0; i < 12; ++i) {
    LEANK_CUDA_CHECK(cudaEventRecord(e0));
    km::ReadProbe(buf.as<char>(), bytes, sink.as<float>(), nullptr);
    LEANK_CUDA_CHECK(cudaEventRecord(e1));
    LEANK_CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    LEANK_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    if (i >= 2) ms.push_back(t);  // two warm-up runs
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(ms.begin(), ms.end());
  return double(bytes) / (ms[ms.size() / 2] * 1e-3);
}

}  // namespace leank
