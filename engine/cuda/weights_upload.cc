#include "engine/cuda/weights_upload.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/model/dtype.h"

namespace leank::cuda {
namespace {

constexpr int64_t kAlign = 256;
int64_t AlignUp(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// The tensors of the packed image in upload order, as (list of sources) per slot.
struct Slot {
  std::vector<const TensorView*> parts;  // concatenated along rows
  const bf16** dst;
};

int64_t LayerBytes(const ModelConfig& c) {
  const int64_t hd = c.hidden_size, qkv = c.q_size() + 2 * c.kv_size();
  int64_t b = AlignUp(2 * hd) * 2 + AlignUp(2 * qkv * hd) + AlignUp(2 * hd * c.q_size()) +
              AlignUp(2 * 2 * int64_t{c.intermediate_size} * hd) +
              AlignUp(2 * hd * c.intermediate_size);
  if (c.attention_bias) b += AlignUp(2 * qkv);
  return b;
}

// Host conversion of one tensor to bf16 into `dst` (numel elements).
void ToBf16(const TensorView& t, uint16_t* dst) {
  const int64_t n = t.numel();
  if (t.dtype == DType::kBF16) {
    std::memcpy(dst, t.data, n * 2);
    return;
  }
  if (t.dtype == DType::kF16) {
    const auto* src = static_cast<const uint16_t*>(t.data);
    for (int64_t i = 0; i < n; ++i) dst[i] = FloatToBf16(F16ToFloat(src[i]));
    return;
  }
  const auto* src = static_cast<const float*>(t.data);
  for (int64_t i = 0; i < n; ++i) dst[i] = FloatToBf16(src[i]);
}

}  // namespace

int64_t PackedWeightBytes(const ModelConfig& c) {
  const int64_t emb = AlignUp(2 * int64_t{c.vocab_size} * c.hidden_size);
  return emb * (c.tie_word_embeddings ? 1 : 2) + AlignUp(2 * int64_t{c.hidden_size}) +
         c.num_layers * LayerBytes(c);
}

absl::Status PackedWeights::Upload(const ModelConfig& c, const ModelWeights& w,
                                   cudaStream_t stream) {
  const bool tied = w.lm_head.data == w.embed_tokens.data;
  layers.assign(c.num_layers, PackedLayer{});
  std::vector<Slot> slots;
  slots.push_back({{&w.embed_tokens}, &embed});
  slots.push_back({{&w.final_norm}, &final_norm});
  if (!tied) slots.push_back({{&w.lm_head}, &lm_head});
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& src = w.layers[l];
    PackedLayer& dst = layers[l];
    slots.push_back({{&src.input_norm}, &dst.input_norm});
    slots.push_back({{&src.q_proj, &src.k_proj, &src.v_proj}, &dst.qkv});
    if (src.q_bias) slots.push_back({{&*src.q_bias, &*src.k_bias, &*src.v_bias}, &dst.qkv_bias});
    slots.push_back({{&src.o_proj}, &dst.o});
    slots.push_back({{&src.post_attention_norm}, &dst.post_norm});
    slots.push_back({{&src.gate_proj, &src.up_proj}, &dst.gate_up});
    slots.push_back({{&src.down_proj}, &dst.down});
  }
  int64_t total = 0;
  std::vector<int64_t> offsets;
  for (const Slot& s : slots) {
    offsets.push_back(total);
    int64_t n = 0;
    for (const TensorView* t : s.parts) n += t->numel();
    total += AlignUp(2 * n);
  }
  if (auto st = storage.Allocate(total, "the bf16 weights"); !st.ok()) return st;
  // Convert through a pinned staging buffer, one slot at a time (at most the embedding).
  PinnedBuffer stage;
  for (size_t i = 0; i < slots.size(); ++i) {
    int64_t n = 0;
    for (const TensorView* t : slots[i].parts) n += t->numel();
    LEANK_CUDA_CHECK(cudaStreamSynchronize(stream));  // the stage is reused
    stage.Reserve(2 * n);
    uint16_t* p = stage.as<uint16_t>();
    for (const TensorView* t : slots[i].parts) {
      ToBf16(*t, p);
      p += t->numel();
    }
    char* dst = storage.as<char>() + offsets[i];
    LEANK_CUDA_CHECK(cudaMemcpyAsync(dst, stage.as<char>(), 2 * n, cudaMemcpyHostToDevice, stream));
    *slots[i].dst = reinterpret_cast<const bf16*>(dst);
  }
  LEANK_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (tied) lm_head = embed;
  return absl::OkStatus();
}

}  // namespace leank::cuda
