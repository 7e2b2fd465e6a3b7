// cuBLASLt GEMM: y[rows][n] = x[rows][k] . w[n][k]^T, bf16 operands, fp32 accumulation.
// In cuBLAS's column-major view this is the "TN" product y^T = w^T(k x n)^T . x^T: the
// weight is the transposed A operand, the one cuBLASLt's fastest kernels expect.

#include <cstdio>
#include <cstdlib>

#include "kernels/model/ops.h"

namespace leank::kernels::model {
namespace {

#define LEANK_CUBLAS_CHECK(expr)                                                 \
  do {                                                                           \
    cublasStatus_t _s = (expr);                                                  \
    if (_s != CUBLAS_STATUS_SUCCESS) {                                           \
      std::fprintf(stderr, "%s:%d: cuBLAS error %d in %s\n", __FILE__, __LINE__, \
                   static_cast<int>(_s), #expr);                                 \
      std::abort();                                                              \
    }                                                                            \
  } while (0)

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

}  // namespace

struct Gemm::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

Gemm::Gemm() {
  LEANK_CUBLAS_CHECK(cublasLtCreate(&handle_));
  workspace_bytes_ = kWorkspaceBytes;
  if (cudaMalloc(&workspace_, workspace_bytes_) != cudaSuccess) {
    std::fprintf(stderr, "Gemm: cannot allocate the %zu-byte cuBLASLt workspace\n",
                 workspace_bytes_);
    std::abort();
  }
}

Gemm::~Gemm() {
  for (auto& [key, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p->a);
    cublasLtMatrixLayoutDestroy(p->b);
    cublasLtMatrixLayoutDestroy(p->c);
    cublasLtMatmulDescDestroy(p->desc);
    delete p;
  }
  cudaFree(workspace_);
  cublasLtDestroy(handle_);
}

void Gemm::RunF32(const bf16* x, const bf16* w, float* y, int rows, int n, int k, float beta,
                  cudaStream_t stream) {
  Run(x, w, y, true, rows, n, k, beta, stream);
}

void Gemm::RunBf16(const bf16* x, const bf16* w, bf16* y, int rows, int n, int k,
                   cudaStream_t stream) {
  Run(x, w, y, false, rows, n, k, 0.0f, stream);
}

void Gemm::Run(const bf16* x, const bf16* w, void* y, bool f32_out, int rows, int n, int k,
               float beta, cudaStream_t stream) {
  if (rows == 0) return;
  auto key = std::make_tuple(rows, n, k, f32_out);
  auto it = plans_.find(key);
  if (it == plans_.end()) {
    auto* p = new Plan;
    LEANK_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    LEANK_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    LEANK_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    // A: the weight as stored, k x n column-major (ld k); B: x, k x rows; C: n x rows.
    LEANK_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, k, n, k));
    LEANK_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, k, rows, k));
    LEANK_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p->c, f32_out ? CUDA_R_32F : CUDA_R_16BF, n, rows, n));
    cublasLtMatmulPreference_t pref = nullptr;
    LEANK_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    LEANK_CUBLAS_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                             &workspace_bytes_, sizeof(workspace_bytes_)));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    LEANK_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, p->desc, p->a, p->b, p->c, p->c,
                                                      pref, 1, &result, &found));
    cublasLtMatmulPreferenceDestroy(pref);
    if (found == 0) {
      std::fprintf(stderr, "Gemm: no cuBLASLt algorithm for rows %d n %d k %d\n", rows, n, k);
      std::abort();
    }
    p->algo = result.algo;
    it = plans_.emplace(key, p).first;
  }
  const Plan& p = *it->second;
  const float alpha = 1.0f;
  LEANK_CUBLAS_CHECK(cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c,
                                    &p.algo, workspace_, workspace_bytes_, stream));
}

}  // namespace leank::kernels::model
