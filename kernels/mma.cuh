#pragma once
// Small device helpers: cp.async, ldmatrix and mma.sync m16n8k16 (bf16 -> f32).
// Fragment layouts (PTX ISA, mma.m16n8k16): with g = lane / 4, t = lane % 4,
//   A (16x16 row-major): r0 = (g, 2t..2t+1), r1 = (g+8, 2t..), r2 = (g, 2t+8..), r3 = (g+8, 2t+8..)
//   B (16x8 "col"):      r0 = (k 2t..2t+1, n g), r1 = (k 2t+8.., n g)
//   C (16x8 f32):        c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)

#include <cuda_bf16.h>

#include <cstdint>

namespace leank::kernels::detail {

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; zero-fills when !valid (src is then not read).
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SmemAddr(smem)), "l"(gmem),
               "r"(valid ? 16 : 0));
}
// The same copy for data read once (decode K/V): evict-first in L2, so that the block
// tables, q and the split partials stay cached, with a 128-byte L2 prefetch. H100, batch
// {1, 8, 32, 64} x {4K, 16K, 32K}: 1-5% faster than CpAsync16, dense and LeanK
// (docs/benchmarks.md). Not for prefill, whose CTAs re-read each K/V tile from L2.
__device__ __forceinline__ uint64_t EvictFirstPolicy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
__device__ __forceinline__ void CpAsync16Stream(void* smem, const void* gmem, bool valid,
                                                uint64_t policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint.L2::128B [%0], [%1], 16, %2, %3;\n" ::"r"(
                   SmemAddr(smem)),
               "l"(gmem), "r"(valid ? 16 : 0), "l"(policy));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(smem)));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(smem)));
}

// c += a * b
__device__ __forceinline__ void MmaBf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Softmax probabilities P enter the P.V mma as bf16 (8 significant bits), as in
// FlashAttention. Built with -DLEANK_ATTN_SPLIT_P=1, each P is split as hi = bf16(p),
// lo = bf16(p - hi) and multiplied in two mmas, carrying ~16 bits (output within ~1e-5 of
// an fp32 P.V instead of ~2e-3). Off by default: on the H100 it cost 3.5% of 8K prefill
// and 2-11% of decode throughput, and its effect on greedy agreement with the fp32
// reference was within run-to-run noise (docs/benchmarks.md).
#ifndef LEANK_ATTN_SPLIT_P
#define LEANK_ATTN_SPLIT_P 0
#endif
__device__ __forceinline__ void SplitBf16(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
  const float2 hf = __bfloat1622float2(h);
  const __nv_bfloat162 l = __floats2bfloat162_rn(x0 - hf.x, x1 - hf.y);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = *reinterpret_cast<const uint32_t*>(&l);
}

// 2^x (MUFU.EX2); 2^-inf = 0.
__device__ __forceinline__ float FastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Programmatic dependent launch (sm_90): PdlWait blocks until the previous kernel of the
// stream has finished and its writes are visible (a no-op for an ordinary launch);
// PdlTrigger lets the next kernel, if launched as a programmatic dependent, start early.
__device__ __forceinline__ void PdlWait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void PdlTrigger() {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

__device__ __forceinline__ float QuadMax(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float QuadSum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

}  // namespace leank::kernels::detail
