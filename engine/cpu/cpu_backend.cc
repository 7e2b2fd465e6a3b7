#include "engine/cpu/cpu_backend.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <new>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cache/reference.h"
#include "engine/cpu/ops.h"
#include "engine/cpu/thread_pool.h"

namespace leank {
namespace {

struct CpuLayer {
  std::vector<float> input_norm, post_norm;
  std::vector<float> qkv;       // [q_size + 2 * kv_size][hidden] (fused q, k, v rows)
  std::vector<float> qkv_bias;  // [q_size + 2 * kv_size] or empty
  std::vector<float> o;         // [hidden][q_size]
  std::vector<float> gate_up;   // [2 * intermediate][hidden] (gate rows, then up rows)
  std::vector<float> down;      // [hidden][intermediate]
};

void Append(std::vector<float>& dst, const TensorView& t) {
  std::vector<float> f = t.ToFloat();
  dst.insert(dst.end(), f.begin(), f.end());
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(const ModelConfig& config, const cache::CacheLayout& layout, cache::PoolSizes sizes,
             const CpuBackendOptions& options)
      : config_(config),
        layout_(layout),
        sizes_(sizes),
        pool_(options.num_threads),
        rope_(config),
        bf16_(options.bf16_activations) {}

  void Load(const ModelWeights& w) {
    embed_ = w.embed_tokens.ToFloat();
    final_norm_ = w.final_norm.ToFloat();
    tied_ = w.lm_head.data == w.embed_tokens.data;
    if (!tied_) lm_head_ = w.lm_head.ToFloat();
    layers_.resize(w.layers.size());
    for (size_t l = 0; l < w.layers.size(); ++l) {
      const LayerWeights& src = w.layers[l];
      CpuLayer& dst = layers_[l];
      dst.input_norm = src.input_norm.ToFloat();
      dst.post_norm = src.post_attention_norm.ToFloat();
      Append(dst.qkv, src.q_proj);
      Append(dst.qkv, src.k_proj);
      Append(dst.qkv, src.v_proj);
      if (src.q_bias) {
        Append(dst.qkv_bias, *src.q_bias);
        Append(dst.qkv_bias, *src.k_bias);
        Append(dst.qkv_bias, *src.v_bias);
      }
      dst.o = src.o_proj.ToFloat();
      Append(dst.gate_up, src.gate_proj);
      Append(dst.gate_up, src.up_proj);
      dst.down = src.down_proj.ToFloat();
    }
  }

  // The KV pools, zeroed. A budget the host cannot hold (kv_cache_bytes too large) is an
  // error, not a std::bad_alloc abort or the OOM killer while the pool is being zeroed.
  absl::Status AllocateCache() {
    int64_t full_elems =
        layout_.options().num_layers * sizes_.num_full_blocks * layout_.full_block_elems();
    const int last = config_.num_layers - 1;
    const int64_t pruned_elems =
        layout_.dense() ? 0
                        : layout_.pruned_layer_base(last, sizes_.num_pruned_blocks) +
                              sizes_.num_pruned_blocks * layout_.pruned_block_elems(last);
    const int64_t bytes = (full_elems + pruned_elems) * static_cast<int64_t>(sizeof(float));
    const int64_t host_bytes =
        static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
    if (host_bytes > 0 && bytes > host_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the KV cache needs ", bytes, " bytes but the host has ", host_bytes,
                       " bytes of memory; give a smaller KV cache budget"));
    }
    try {
      full_.assign(full_elems, 0.0f);
      // A mask that keeps no channel anywhere has an empty pruned arena; one element keeps
      // the storage pointer valid (blocks of 0 elements all start there).
      pruned_.assign(layout_.dense() ? 0 : std::max<int64_t>(pruned_elems, 1), 0.0f);
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot allocate the KV cache (", bytes,
                       " bytes) in host memory; give a smaller KV cache budget"));
    }
    storage_ = {full_.data(), pruned_.data(), sizes_};
    return absl::OkStatus();
  }

  std::string name() const override { return "cpu"; }
  const ModelConfig& config() const override { return config_; }
  const cache::CacheLayout& layout() const override { return layout_; }
  cache::PoolSizes pool_sizes() const override { return sizes_; }

  absl::Status Forward(const StepPlan& plan, StepOutput* out) override;

 private:
  void AttentionBlock(const StepPlan& plan, int layer, std::vector<float>& x);
  void MlpBlock(int layer, std::vector<float>& x, int64_t rows);
  // Where the CUDA backend writes a bf16 tensor, the bf16 mode rounds.
  void AsBf16(std::vector<float>& v) const {
    if (bf16_) cpu::RoundToBf16(v.data(), static_cast<int64_t>(v.size()));
  }

  ModelConfig config_;
  const cache::CacheLayout& layout_;
  cache::PoolSizes sizes_;
  ThreadPool pool_;
  cpu::Rope rope_;
  bool bf16_;
  std::vector<float> embed_, final_norm_, lm_head_;
  bool tied_ = false;
  std::vector<CpuLayer> layers_;
  std::vector<float> full_, pruned_;
  cache::FloatStorage storage_;
};

void CpuBackend::AttentionBlock(const StepPlan& plan, int layer, std::vector<float>& x) {
  const int64_t hidden = config_.hidden_size, q_size = config_.q_size(),
                kv_size = config_.kv_size(), qkv_size = q_size + 2 * kv_size;
  const int64_t rows = plan.num_tokens();
  const CpuLayer& w = layers_[layer];
  std::vector<float> h(rows * hidden), qkv(rows * qkv_size);
  cpu::RmsNorm(x.data(), w.input_norm.data(), rows, hidden, config_.rms_norm_eps, h.data());
  AsBf16(h);
  cpu::MatMulT(pool_, h.data(), rows, w.qkv.data(), qkv_size, hidden,
               w.qkv_bias.empty() ? nullptr : w.qkv_bias.data(), qkv.data());

  // Split into per-token q, k, v with RoPE applied to q and k.
  std::vector<float> q(rows * q_size), k(rows * kv_size), v(rows * kv_size);
  int64_t row = 0;
  for (const SeqWork& s : plan.seqs) {
    for (size_t t = 0; t < s.tokens.size(); ++t, ++row) {
      const float* src = qkv.data() + row * qkv_size;
      std::copy(src, src + q_size, q.data() + row * q_size);
      std::copy(src + q_size, src + q_size + kv_size, k.data() + row * kv_size);
      std::copy(src + q_size + kv_size, src + qkv_size, v.data() + row * kv_size);
      const int64_t pos = s.cache.start_pos + static_cast<int64_t>(t);
      rope_.Apply(q.data() + row * q_size, config_.num_heads, pos);
      rope_.Apply(k.data() + row * kv_size, config_.num_kv_heads, pos);
    }
  }
  // The GPU's q buffer and KV cache are bf16.
  AsBf16(q);
  AsBf16(k);
  AsBf16(v);

  // Cache write, attention, compaction: per sequence, sequences in parallel.
  std::vector<int64_t> first_row(plan.seqs.size() + 1, 0);
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    first_row[i + 1] = first_row[i] + static_cast<int64_t>(plan.seqs[i].tokens.size());
  }
  std::vector<float> attn(rows * q_size);
  const float scale = 1.0f / std::sqrt(static_cast<float>(config_.head_dim));
  auto run_seqs = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const cache::AppendPlan& cp = plan.seqs[i].cache;
      const int64_t r = first_row[i];
      cache::WriteKv(layout_, storage_, layer, cp, k.data() + r * kv_size, v.data() + r * kv_size);
      cache::Attend(layout_, storage_, layer, cp, config_.num_heads, scale, q.data() + r * q_size,
                    attn.data() + r * q_size);
      cache::Compact(layout_, storage_, layer, cp);
    }
  };
  if (plan.seqs.size() > 1) {
    pool_.ParallelFor(static_cast<int64_t>(plan.seqs.size()), run_seqs);
  } else {
    run_seqs(0, static_cast<int64_t>(plan.seqs.size()));
  }

  AsBf16(attn);
  std::vector<float> o(rows * hidden);
  cpu::MatMulT(pool_, attn.data(), rows, w.o.data(), hidden, q_size, nullptr, o.data());
  for (int64_t i = 0; i < rows * hidden; ++i) x[i] += o[i];
}

void CpuBackend::MlpBlock(int layer, std::vector<float>& x, int64_t rows) {
  const int64_t hidden = config_.hidden_size, inter = config_.intermediate_size;
  const CpuLayer& w = layers_[layer];
  std::vector<float> h(rows * hidden), gu(rows * 2 * inter), act(rows * inter), d(rows * hidden);
  cpu::RmsNorm(x.data(), w.post_norm.data(), rows, hidden, config_.rms_norm_eps, h.data());
  AsBf16(h);
  cpu::MatMulT(pool_, h.data(), rows, w.gate_up.data(), 2 * inter, hidden, nullptr, gu.data());
  AsBf16(gu);
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gu.data() + r * 2 * inter;
    cpu::SiluMul(g, g + inter, inter, act.data() + r * inter);
  }
  AsBf16(act);
  cpu::MatMulT(pool_, act.data(), rows, w.down.data(), hidden, inter, nullptr, d.data());
  for (int64_t i = 0; i < rows * hidden; ++i) x[i] += d[i];
}

absl::Status CpuBackend::Forward(const StepPlan& plan, StepOutput* out) {
  const int64_t hidden = config_.hidden_size, vocab = config_.vocab_size;
  const int64_t rows = plan.num_tokens();
  std::vector<float> x(rows * hidden);
  int64_t row = 0;
  for (const SeqWork& s : plan.seqs) {
    if (s.cache.num_new_tokens != static_cast<int64_t>(s.tokens.size())) {
      return absl::InternalError(absl::StrCat("plan for sequence ", s.cache.seq, " has ",
                                              s.tokens.size(), " tokens but reserves ",
                                              s.cache.num_new_tokens));
    }
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", t, " outside vocabulary"));
      }
      std::copy_n(embed_.data() + static_cast<int64_t>(t) * hidden, hidden,
                  x.data() + row++ * hidden);
    }
  }
  for (int l = 0; l < config_.num_layers; ++l) {
    AttentionBlock(plan, l, x);
    MlpBlock(l, x, rows);
  }
  // Final norm and LM head for the last token of each sequence that wants logits.
  std::vector<float> last;
  row = 0;
  for (const SeqWork& s : plan.seqs) {
    row += static_cast<int64_t>(s.tokens.size());
    if (!s.want_logits) continue;
    last.insert(last.end(), x.begin() + (row - 1) * hidden, x.begin() + row * hidden);
  }
  const int64_t n = static_cast<int64_t>(last.size()) / hidden;
  std::vector<float> normed(last.size());
  cpu::RmsNorm(last.data(), final_norm_.data(), n, hidden, config_.rms_norm_eps, normed.data());
  AsBf16(normed);
  out->vocab = vocab;
  out->logits.assign(n * vocab, 0.0f);
  cpu::MatMulT(pool_, normed.data(), n, tied_ ? embed_.data() : lm_head_.data(), vocab, hidden,
               nullptr, out->logits.data());
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const ModelConfig& config,
                                                          const ModelWeights& weights,
                                                          const cache::CacheLayout& layout,
                                                          cache::PoolSizes sizes,
                                                          const CpuBackendOptions& options) {
  if (layout.options().elem_bytes != 4) {
    return absl::InvalidArgumentError("the CPU backend stores its cache in float32 (elem_bytes 4)");
  }
  // Far more threads than any host has cores only fails thread creation (a
  // std::system_error abort in the pool's constructor).
  constexpr int kMaxThreads = 1024;
  if (options.num_threads < 0 || options.num_threads > kMaxThreads) {
    return absl::InvalidArgumentError(absl::StrCat("CPU threads must be in [0, ", kMaxThreads,
                                                   "] (0: all cores), got ", options.num_threads));
  }
  auto backend = std::make_unique<CpuBackend>(config, layout, sizes, options);
  if (absl::Status s = backend->AllocateCache(); !s.ok()) return s;
  backend->Load(weights);
  return backend;
}

}  // namespace leank
