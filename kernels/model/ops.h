#pragma once
// CUDA kernels of the model around attention (engine/cuda drives them): embedding,
// RMSNorm, bias + RoPE + paged K/V write, SwiGLU, a generic paged attention for shapes
// the fast kernels (kernels/attention.h) do not cover, a generic compaction, greedy
// argmax, and a cuBLASLt GEMM wrapper (bf16 in, fp32 accumulate).
//
// Activations: the residual stream is fp32 [rows][hidden]; GEMM inputs are bf16.
// Every launch checks cudaGetLastError and aborts on failure (a programming error).
// This header compiles as C++17 (nvcc) and C++20 (host): no std::span here.

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <tuple>

namespace leank::kernels::model {

using bf16 = __nv_bfloat16;

// x[r][:] = float(table[tokens[r]][:]).
// tokens: [rows] int32 (device), table: [vocab][hidden] bf16, x: [rows][hidden] fp32.
void Embedding(const int32_t* tokens, int rows, const bf16* table, int hidden, float* x,
               cudaStream_t stream);

// out[r] = bf16(x[src_row(r)] / sqrt(mean(x^2) + eps) * weight), sums in fp32.
// x: [*][hidden] fp32, weight: [hidden] bf16, out: [rows][hidden] bf16.
// row_index: [rows] int32 (device) picking the input rows, or nullptr (identity).
void RmsNorm(const float* x, const int32_t* row_index, int rows, int hidden, const bf16* weight,
             float eps, bf16* out, cudaStream_t stream);

// Per-layer channel metadata of the paged cache for the generic kernels (cache/README.md).
struct CacheMetaView {
  const int32_t* kept;      // [layers][H]
  const int32_t* k_off;     // [layers][H] element offset of the K tile in a pruned block
  const int32_t* v_off;     // [layers][H]
  const uint8_t* channels;  // [layers][H][D] ascending kept channels (first kept(l,h) valid)
  int num_kv_heads = 0;
  int head_dim = 0;
  int block_size = 16;
  int sink = 0;
  int recent = 0;
  bool dense = true;
};

// One sequence of a step, as the device sees it (AppendPlan semantics: storage
// positions use middle_before; full blocks are the table before compaction).
struct StepSeq {
  int32_t start_pos;      // tokens cached before this step
  int32_t num_new;        // new tokens (rows)
  int32_t middle_before;  // M(start_pos)
  int32_t row_begin;      // first row of this sequence in the step's activations
  int32_t full_begin;     // offset of its table in full_idx
  int32_t pruned_begin;   // offset of its table in pruned_idx
};

struct StepTables {
  const StepSeq* seqs;        // [num_seqs]
  const int32_t* row_seq;     // [rows] sequence of each row; -1: a padding row
  const int32_t* full_idx;    // concatenated full-block tables
  const int32_t* pruned_idx;  // concatenated pruned-block tables
};

// Adds the bias, applies RoPE (HF rotate_half; angle = float(pos) * inv_freq[i]) to q and k,
// writes q as bf16 and K/V (bf16) into this layer's full blocks at the positions of
// the plan. qkv: [rows][(Hq + 2 H) * D] fp32, bias: same row layout bf16 or nullptr,
// inv_freq: [D / 2] fp32, q_out: [rows][Hq][D] bf16,
// full_layer: this layer's full blocks [num_full_blocks][2][H][B][D] bf16.
// Rows with row_seq -1 (the padding of a CUDA graph batch-size bucket, whose launch
// covers the bucket's rows) are skipped: neither q_out nor the cache is written.
void QkvRopeWrite(const float* qkv, const bf16* bias, const float* inv_freq, int rows,
                  int num_q_heads, const CacheMetaView& meta, const StepTables& tables, bf16* q_out,
                  bf16* full_layer, cudaStream_t stream);

// out[r][i] = bf16(silu(gu[r][i]) * gu[r][inter + i]). gu: [rows][2 * inter] bf16.
void SiluMul(const bf16* gate_up, int rows, int inter, bf16* out, cudaStream_t stream);

// Generic attention of every row of the step over the paged cache (any head_dim <= 256,
// any group): exactly the semantics of cache/README.md with the pre-compaction tables.
// Rows [row_begin, row_begin + num_rows) of q/out; seq_ids: sequence per row via tables.
// q, out: [rows][Hq][D] bf16. pruned_layer: this layer's pruned arena.
void GenericAttention(const bf16* q, int row_begin, int num_rows, int num_q_heads, int layer,
                      const CacheMetaView& meta, const StepTables& tables, const bf16* full_layer,
                      const bf16* pruned_layer, int64_t pruned_block_elems, float scale, bf16* out,
                      cudaStream_t stream);

// Generic compaction of one layer: jobs [num_jobs][2] = (src full block, dst pruned block).
void GenericCompact(const int32_t* jobs, int num_jobs, int layer, const CacheMetaView& meta,
                    const bf16* full_layer, bf16* pruned_layer, int64_t pruned_block_elems,
                    cudaStream_t stream);

// out[r] = argmax_v logits[r][v] (lowest index on ties, NaN never wins).
// logits: [rows][vocab] fp32, out: [rows] int32.
void Argmax(const float* logits, int rows, int vocab, int32_t* out, cudaStream_t stream);

// Fills data[0, n) with random bf16 values in [-1, 1) (a hash of seed and index).
void FillRandomBf16(bf16* data, size_t n, uint64_t seed, cudaStream_t stream);

// Reads `bytes` bytes (16-byte vectors, a multiple of 16) and writes a checksum to
// *sink, so the reads cannot be elided: a read-bandwidth probe.
void ReadProbe(const char* data, size_t bytes, float* sink, cudaStream_t stream);

// Small-batch GEMV (decode): same contract as Gemm below for rows <= kMaxGemvRows and
// k % 8 == 0 (16-byte rows; x, w, y 16-byte aligned).
constexpr int kMaxGemvRows = 16;
bool GemvApplies(int rows, int k);
void GemvF32(const bf16* x, const bf16* w, float* y, int rows, int n, int k, float beta,
             cudaStream_t stream);
void GemvBf16(const bf16* x, const bf16* w, bf16* y, int rows, int n, int k, cudaStream_t stream);

// Fused small-batch GEMV for 1..kMaxFusedGemvRows rows (FusedGemvApplies):
// y = RmsNorm(x) . w^T, the norm as RmsNorm above (x: [rows][k] fp32 residual,
// norm_weight: [k] bf16), so RmsNorm + Gemv in one launch.
constexpr int kMaxFusedGemvRows = 2;
bool FusedGemvApplies(int rows, int k);
void GemvRmsNormF32(const float* x, const bf16* norm_weight, float eps, const bf16* w, float* y,
                    int rows, int n, int k, cudaStream_t stream);
void GemvRmsNormBf16(const float* x, const bf16* norm_weight, float eps, const bf16* w, bf16* y,
                     int rows, int n, int k, cudaStream_t stream);

// Programmatic dependent launch of the kernels above (Embedding, RmsNorm, QkvRopeWrite,
// SiluMul, the GEMVs): each may start while the previous kernel of its stream finishes
// (it waits for that kernel's results inside). On by default (LEANK_CUDA_PDL=0 turns it
// off); a process-wide switch for benchmarks and tests.
bool ProgrammaticLaunchEnabled();
void SetProgrammaticLaunch(bool enabled);

// y[rows][n] = x[rows][k] . w[n][k]^T (+ beta * y), bf16 inputs, fp32 accumulation.
// y is fp32 or bf16 (beta must be 0 for bf16). Algorithms are cached per shape.
class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  void RunF32(const bf16* x, const bf16* w, float* y, int rows, int n, int k, float beta,
              cudaStream_t stream);
  void RunBf16(const bf16* x, const bf16* w, bf16* y, int rows, int n, int k, cudaStream_t stream);

 private:
  void Run(const bf16* x, const bf16* w, void* y, bool f32_out, int rows, int n, int k, float beta,
           cudaStream_t stream);
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  struct Plan;
  std::map<std::tuple<int, int, int, bool>, Plan*> plans_;
};

}  // namespace leank::kernels::model
