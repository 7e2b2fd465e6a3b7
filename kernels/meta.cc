// DeviceMeta: per-layer channel metadata, offsets as in cache/README.md.

#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "kernels/internal.h"

namespace leank::kernels {

int64_t MiddleTokens(const AttentionShape& shape, bool dense, int64_t num_tokens) {
  if (dense) return 0;
  const int64_t rest = num_tokens - shape.sink - shape.recent;
  if (rest <= 0) return 0;
  return shape.block_size * (rest / shape.block_size);
}

namespace {

absl::Status CheckShape(const AttentionShape& s) {
  if (s.num_layers <= 0 || s.num_kv_heads <= 0 || s.num_q_heads <= 0)
    return absl::InvalidArgumentError("AttentionShape: layers and heads must be positive");
  if (s.num_q_heads % s.num_kv_heads != 0 || s.num_q_heads / s.num_kv_heads > detail::kMaxGroup)
    return absl::InvalidArgumentError(absl::StrCat(
        "AttentionShape: num_q_heads ", s.num_q_heads, " must be a multiple of num_kv_heads ",
        s.num_kv_heads, " with group <= ", detail::kMaxGroup));
  if (s.head_dim != 64 && s.head_dim != 128)
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionShape: head_dim ", s.head_dim, " (built: 64, 128)"));
  if (s.block_size != 16 && s.block_size != 32 && s.block_size != 64)
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionShape: block_size ", s.block_size, " (16, 32 or 64)"));
  if (s.sink < 0 || s.recent <= 0 || s.sink % s.block_size || s.recent % s.block_size)
    return absl::InvalidArgumentError("AttentionShape: sink and recent must be multiples of B");
  return absl::OkStatus();
}

template <typename T>
T* Upload(const std::vector<T>& v) {
  T* d = nullptr;
  LEANK_CUDA_CHECK(cudaMalloc(&d, std::max<size_t>(1, v.size()) * sizeof(T)));
  if (!v.empty())
    LEANK_CUDA_CHECK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

}  // namespace

absl::StatusOr<DeviceMeta> DeviceMeta::Create(
    const AttentionShape& shape, const std::vector<std::vector<std::vector<int>>>& kept_channels) {
  if (auto st = CheckShape(shape); !st.ok()) return st;
  DeviceMeta m;
  m.shape_ = shape;
  m.dense_ = kept_channels.empty();
  const int L = shape.num_layers, H = shape.num_kv_heads, D = shape.head_dim, B = shape.block_size;
  if (!m.dense_ && static_cast<int>(kept_channels.size()) != L)
    return absl::InvalidArgumentError(
        absl::StrCat("kept_channels: ", kept_channels.size(), " layers, expected ", L));
  m.kept_.assign(L * H, D);
  m.k_off_.assign(L * H, -1);
  m.v_off_.assign(L * H, -1);
  m.block_elems_.assign(L, 0);
  m.layer_prefix_.assign(L, 0);
  std::vector<uint8_t> channels(size_t(L) * H * D);
  for (int l = 0; l < L; ++l) {
    if (!m.dense_ && static_cast<int>(kept_channels[l].size()) != H)
      return absl::InvalidArgumentError(absl::StrCat(
          "kept_channels[", l, "]: ", kept_channels[l].size(), " heads, expected ", H));
    int64_t sum_kept = 0, live = 0;
    for (int h = 0; h < H; ++h) {
      uint8_t* ch = &channels[(size_t(l) * H + h) * D];
      if (m.dense_) {
        for (int c = 0; c < D; ++c) ch[c] = static_cast<uint8_t>(c);
        m.kept_[l * H + h] = D;
        sum_kept += D;
        ++live;
        continue;
      }
      const auto& kc = kept_channels[l][h];
      if (kc.size() % 16 != 0 || static_cast<int>(kc.size()) > D)
        return absl::InvalidArgumentError(absl::StrCat("kept_channels[", l, "][", h,
                                                       "]: ", kc.size(),
                                                       " channels, not a multiple of 16 <= ", D));
      for (size_t i = 0; i < kc.size(); ++i) {
        if (kc[i] < 0 || kc[i] >= D || (i > 0 && kc[i] <= kc[i - 1]))
          return absl::InvalidArgumentError(
              absl::StrCat("kept_channels[", l, "][", h, "]: not ascending in [0, ", D, ")"));
        ch[i] = static_cast<uint8_t>(kc[i]);
      }
      m.kept_[l * H + h] = static_cast<int>(kc.size());
      sum_kept += kc.size();
      live += !kc.empty();
    }
    // K tiles first (heads in order), then V tiles of the live heads.
    int64_t k = 0, v = int64_t(B) * sum_kept;
    for (int h = 0; h < H; ++h) {
      const int kept = m.kept_[l * H + h];
      if (kept == 0) continue;
      m.k_off_[l * H + h] = static_cast<int32_t>(k);
      m.v_off_[l * H + h] = static_cast<int32_t>(v);
      k += int64_t(B) * kept;
      v += int64_t(B) * D;
    }
    m.block_elems_[l] = int64_t(B) * (sum_kept + int64_t(D) * live);
    m.layer_prefix_[l] = l == 0 ? 0 : m.layer_prefix_[l - 1] + m.block_elems_[l - 1];
  }
  m.d_kept_ = Upload(m.kept_);
  m.d_k_off_ = Upload(m.k_off_);
  m.d_v_off_ = Upload(m.v_off_);
  m.d_channels_ = Upload(channels);
  return m;
}

DeviceMeta::DeviceMeta(DeviceMeta&& o) noexcept { *this = std::move(o); }

DeviceMeta& DeviceMeta::operator=(DeviceMeta&& o) noexcept {
  if (this == &o) return *this;
  Release();
  shape_ = o.shape_;
  dense_ = o.dense_;
  kept_ = std::move(o.kept_);
  k_off_ = std::move(o.k_off_);
  v_off_ = std::move(o.v_off_);
  block_elems_ = std::move(o.block_elems_);
  layer_prefix_ = std::move(o.layer_prefix_);
  d_kept_ = std::exchange(o.d_kept_, nullptr);
  d_k_off_ = std::exchange(o.d_k_off_, nullptr);
  d_v_off_ = std::exchange(o.d_v_off_, nullptr);
  d_channels_ = std::exchange(o.d_channels_, nullptr);
  return *this;
}

DeviceMeta::~DeviceMeta() { Release(); }

void DeviceMeta::Release() {
  cudaFree(d_kept_);
  cudaFree(d_k_off_);
  cudaFree(d_v_off_);
  cudaFree(d_channels_);
  d_kept_ = d_k_off_ = d_v_off_ = nullptr;
  d_channels_ = nullptr;
}

int DeviceMeta::kept(int layer, int head) const {
  return kept_[layer * shape_.num_kv_heads + head];
}
int32_t DeviceMeta::pruned_k_offset(int layer, int head) const {
  return k_off_[layer * shape_.num_kv_heads + head];
}
int32_t DeviceMeta::pruned_v_offset(int layer, int head) const {
  return v_off_[layer * shape_.num_kv_heads + head];
}
int64_t DeviceMeta::pruned_block_elems(int layer) const { return block_elems_[layer]; }
int64_t DeviceMeta::full_block_elems() const {
  return int64_t(2) * shape_.num_kv_heads * shape_.block_size * shape_.head_dim;
}
int64_t DeviceMeta::pruned_layer_base(int layer, int64_t num_pruned_blocks) const {
  return num_pruned_blocks * layer_prefix_[layer];
}

std::vector<int32_t> DecodeFullBlocksAfterCompaction(const AttentionShape& shape,
                                                     std::span<const int32_t> full_blocks,
                                                     int num_compactions) {
  const size_t sink_blocks = shape.sink / shape.block_size;
  std::vector<int32_t> out;
  out.reserve(full_blocks.size());
  for (size_t i = 0; i < full_blocks.size(); ++i) {
    if (i >= sink_blocks && i < sink_blocks + num_compactions) continue;
    out.push_back(full_blocks[i]);
  }
  return out;
}

static_assert(sizeof(CompactJob) == sizeof(detail::CompactJobRaw));

void LaunchCompact(const DeviceMeta& meta, int layer_begin, int layer_end, const bf16* full,
                   int64_t num_full_blocks, bf16* pruned, int64_t num_pruned_blocks,
                   const CompactJob* jobs, int num_jobs, cudaStream_t stream) {
  if (num_jobs == 0 || layer_end <= layer_begin || meta.dense()) return;
  const AttentionShape& sh = meta.shape();
  const int nl = layer_end - layer_begin;
  if (nl > detail::kMaxLayers) {
    std::fprintf(stderr, "LaunchCompact: at most %d layers per launch\n", detail::kMaxLayers);
    std::abort();
  }
  detail::CompactParams p{};
  p.full = full;
  p.pruned = pruned;
  p.jobs = reinterpret_cast<const detail::CompactJobRaw*>(jobs);
  p.kept = meta.d_kept();
  p.k_off = meta.d_k_off();
  p.v_off = meta.d_v_off();
  p.channels = meta.d_channels();
  for (int l = 0; l < nl; ++l) {
    p.layer_base[l] = meta.pruned_layer_base(layer_begin + l, num_pruned_blocks);
    p.block_elems[l] = meta.pruned_block_elems(layer_begin + l);
  }
  p.num_full_blocks = num_full_blocks;
  p.layer_begin = layer_begin;
  p.H = sh.num_kv_heads;
  p.B = sh.block_size;
  p.D = sh.head_dim;
  detail::LaunchCompactKernel(p, num_jobs, nl, stream);
}

}  // namespace leank::kernels
