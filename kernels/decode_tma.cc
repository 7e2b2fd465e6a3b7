// Tensor maps for the decode kernel's whole-block TMA loads (decode_tma.h).
//
// A box is one head's K or V rows of one block. Rows are split in parts of 64 channels
// (a dimension of stride 128 bytes walks the parts, so one copy lands them as
// [part][B rows of 128 bytes]), then a 32- and a 16-channel part with their own maps.
// Each part is swizzled at its row width, which the kernel's ldmatrix addresses undo.
// (A first version with 16-byte rows, no swizzle, was request-bound at 67% of the read
// bandwidth on the H100: docs/benchmarks.md.)

#include "kernels/decode_tma.h"

#include <cuda.h>
#include <cudaTypedefs.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace leank::kernels {
namespace {

DecodeLoads LoadsFromEnv() {
  const char* v = std::getenv("LEANK_DECODE_LOADS");
  if (v == nullptr || std::strcmp(v, "tma") == 0) return DecodeLoads::kTma;
  if (std::strcmp(v, "cpasync") == 0) return DecodeLoads::kCpAsync;
  std::fprintf(stderr, "LEANK_DECODE_LOADS=%s: expected tma or cpasync; using tma\n", v);
  return DecodeLoads::kTma;
}

std::atomic<int>& LoadsFlag() {
  static std::atomic<int> flag{static_cast<int>(LoadsFromEnv())};
  return flag;
}

PFN_cuTensorMapEncodeTiled_v12000 EncodeFn() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return PFN_cuTensorMapEncodeTiled_v12000{nullptr};
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

constexpr cuuint64_t kMaxBlocks = cuuint64_t{1} << 30;  // block ids are int32 coordinates

// A bf16 view whose box is the whole of dims[0..3) (a head's rows of one block: channels,
// tokens, parts) and one index of every outer dimension (head, block); the swizzle
// matches the row width dims[0] * 2 bytes (128, 64 or 32). Rank-3 views have no parts.
bool Encode(CUtensorMap* map, const void* base, int rank, const cuuint64_t* dims,
            const cuuint64_t* strides) {
  const int box_dims = rank == 3 ? 2 : 3;
  cuuint32_t box[5], elem_strides[5];
  for (int i = 0; i < rank; ++i) {
    box[i] = i < box_dims ? static_cast<cuuint32_t>(dims[i]) : 1;
    elem_strides[i] = 1;
  }
  const CUtensorMapSwizzle swizzle = dims[0] == 64   ? CU_TENSOR_MAP_SWIZZLE_128B
                                     : dims[0] == 32 ? CU_TENSOR_MAP_SWIZZLE_64B
                                                     : CU_TENSOR_MAP_SWIZZLE_32B;
  const CUresult r =
      EncodeFn()(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, rank, const_cast<void*>(base), dims,
                 strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                 CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

bool EncodeLayer(const DeviceMeta& meta, int layer, const bf16* full, const bf16* pruned,
                 detail::DecodeTmaMaps* out) {
  std::memset(out, 0, sizeof(*out));
  const AttentionShape& sh = meta.shape();
  const cuuint64_t H = sh.num_kv_heads, B = sh.block_size, D = sh.head_dim, e = sizeof(bf16);
  {  // full[block][K/V][head][B][D]: one map, the head picked by the 4th coordinate
    const cuuint64_t dims[5] = {64, B, D / 64, 2 * H, kMaxBlocks};
    const cuuint64_t strides[4] = {D * e, 128, B * D * e, 2 * H * B * D * e};
    if (!Encode(&out->full, full, 5, dims, strides)) return false;
  }
  if (meta.dense()) return true;
  const cuuint64_t block = meta.pruned_block_elems(layer) * e;
  for (int h = 0; h < sh.num_kv_heads; ++h) {
    const cuuint64_t kept = meta.kept(layer, h);
    if (kept == 0) continue;  // no pruned items for this head
    // pruned K tile [B][kept]: parts of 64, 32 and 16 channels (kept is a multiple of 16)
    const bf16* k = pruned + meta.pruned_k_offset(layer, h);
    const cuuint64_t a = kept / 64, b = (kept / 32) % 2, c = (kept / 16) % 2;
    if (a > 0) {
      const cuuint64_t dims[4] = {64, B, a, kMaxBlocks}, strides[3] = {kept * e, 128, block};
      if (!Encode(&out->k64[h], k, 4, dims, strides)) return false;
    }
    if (b > 0) {
      const cuuint64_t dims[3] = {32, B, kMaxBlocks}, strides[2] = {kept * e, block};
      if (!Encode(&out->k32[h], k + 64 * a, 3, dims, strides)) return false;
    }
    if (c > 0) {
      const cuuint64_t dims[3] = {16, B, kMaxBlocks}, strides[2] = {kept * e, block};
      if (!Encode(&out->k16[h], k + 64 * a + 32 * b, 3, dims, strides)) return false;
    }
    const cuuint64_t dims[4] = {64, B, D / 64, kMaxBlocks}, strides[3] = {D * e, 128, block};
    if (!Encode(&out->v[h], pruned + meta.pruned_v_offset(layer, h), 4, dims, strides))
      return false;
  }
  return true;
}

}  // namespace

void SetDecodeLoads(DecodeLoads loads) { LoadsFlag() = static_cast<int>(loads); }
DecodeLoads GetDecodeLoads() { return static_cast<DecodeLoads>(LoadsFlag().load()); }

namespace detail {

const DecodeTmaMaps* DecodeTmaCache::Get(const DeviceMeta& meta, int layer, const bf16* full,
                                         const bf16* pruned) {
  if (GetDecodeLoads() != DecodeLoads::kTma) return nullptr;
  if (supported_ < 0) {
    int dev = 0, major = 0;
    LEANK_CUDA_CHECK(cudaGetDevice(&dev));
    LEANK_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    supported_ = major >= 9 && meta.shape().num_kv_heads <= kMaxTmaKvHeads && EncodeFn() != nullptr;
  }
  if (!supported_) return nullptr;
  if (layers_.size() <= static_cast<size_t>(layer)) layers_.resize(layer + 1);
  std::vector<Entry>& entries = layers_[layer];
  for (const Entry& e : entries) {
    if (e.full == full && e.pruned == pruned) return e.ok ? &e.maps : nullptr;
  }
  Entry& e = entries.emplace_back();
  e.full = full;
  e.pruned = pruned;
  e.ok = EncodeLayer(meta, layer, full, pruned, &e.maps);
  if (!e.ok) {
    std::fprintf(
        stderr, "decode attention: layer %d storage refused as a TMA map; using cp.async\n", layer);
  }
  return e.ok ? &e.maps : nullptr;
}

}  // namespace detail
}  // namespace leank::kernels
