// kernels/model GEMVs against a CPU computation in double precision: the plain GEMV for
// 1..16 rows, RMSNorm fused into it for 1..2 rows (also against the unfused RmsNorm
// kernel followed by the plain GEMV), with programmatic
// dependent launch on and off, fp32 (with beta) and bf16 outputs. Random bf16 inputs,
// outputs poisoned before each launch. Skips without a GPU.

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/model/ops.h"

namespace leank::kernels::model {
namespace {

bool HasGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}
#define SKIP_WITHOUT_GPU() \
  if (!HasGpu()) GTEST_SKIP() << "no CUDA device"

// bf16 round-to-nearest-even on the host (finite inputs).
float RoundBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count) : n(count) { EXPECT_EQ(cudaMalloc(&p, count * sizeof(T)), cudaSuccess); }
  ~Dev() { cudaFree(p); }
  void Put(const std::vector<T>& v) {
    ASSERT_EQ(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  std::vector<T> Get() const {
    std::vector<T> v(n);
    EXPECT_EQ(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }
  void Poison() { ASSERT_EQ(cudaMemset(p, 0xff, n * sizeof(T)), cudaSuccess); }  // NaN bits
};

std::vector<bf16> ToBf16(const std::vector<float>& f) {
  std::vector<bf16> b(f.size());
  for (size_t i = 0; i < f.size(); ++i) b[i] = __float2bfloat16(f[i]);
  return b;
}
std::vector<float> Floats(const std::vector<bf16>& b) {
  std::vector<float> f(b.size());
  for (size_t i = 0; i < b.size(); ++i) f[i] = __bfloat162float(b[i]);
  return f;
}
std::vector<float> RandomBf16Values(size_t n, float scale, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = RoundBf16(u(rng));
  return v;
}

// y[r][c] = sum_i x[r][i] * w[c][i] in double.
std::vector<double> MatVec(const std::vector<float>& x, const std::vector<float>& w, int rows,
                           int n, int k) {
  std::vector<double> y(size_t(rows) * n, 0.0);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < n; ++c) {
      double s = 0;
      for (int i = 0; i < k; ++i) s += double(x[size_t(r) * k + i]) * w[size_t(c) * k + i];
      y[size_t(r) * n + c] = s;
    }
  }
  return y;
}

// max |a - b| / (max |b| over the row + tiny): per-row scale-relative error.
double MaxRelErr(const std::vector<float>& got, const std::vector<double>& want, int rows, int n) {
  double worst = 0;
  for (int r = 0; r < rows; ++r) {
    double scale = 1e-30;
    for (int c = 0; c < n; ++c) scale = std::max(scale, std::abs(want[size_t(r) * n + c]));
    for (int c = 0; c < n; ++c) {
      const double g = got[size_t(r) * n + c];
      if (!std::isfinite(g)) return INFINITY;
      worst = std::max(worst, std::abs(g - want[size_t(r) * n + c]) / scale);
    }
  }
  return worst;
}

struct Shape {
  int n, k;
};
// Odd column counts (a partial last warp / CTA), k % 8 == 0 but not a power of two.
const Shape kShapes[] = {{1000, 512}, {67, 2056}, {4099, 1024}};

TEST(ModelKernels, GemvMatchesCpuForEveryRowCount) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(11);
  for (bool pdl : {true, false}) {
    SetProgrammaticLaunch(pdl);
    for (const Shape& sh : kShapes) {
      const std::vector<float> w = RandomBf16Values(size_t(sh.n) * sh.k, 0.05f, rng);
      Dev<bf16> dw(w.size());
      dw.Put(ToBf16(w));
      for (int rows = 1; rows <= kMaxGemvRows; ++rows) {
        const std::vector<float> x = RandomBf16Values(size_t(rows) * sh.k, 1.0f, rng);
        const std::vector<float> y0 = RandomBf16Values(size_t(rows) * sh.n, 1.0f, rng);
        Dev<bf16> dx(x.size());
        dx.Put(ToBf16(x));
        Dev<float> dy(y0.size());
        dy.Put(y0);
        // fp32 out, beta = 1 (the residual add of the O and down projections).
        GemvF32(dx.p, dw.p, dy.p, rows, sh.n, sh.k, 1.0f, nullptr);
        std::vector<double> want = MatVec(x, w, rows, sh.n, sh.k);
        for (size_t i = 0; i < want.size(); ++i) want[i] += y0[i];
        EXPECT_LE(MaxRelErr(dy.Get(), want, rows, sh.n), 1e-5)
            << "f32 rows " << rows << " n " << sh.n << " k " << sh.k << " pdl " << pdl;
        // bf16 out.
        Dev<bf16> db(size_t(rows) * sh.n);
        db.Poison();
        GemvBf16(dx.p, dw.p, db.p, rows, sh.n, sh.k, nullptr);
        want = MatVec(x, w, rows, sh.n, sh.k);
        EXPECT_LE(MaxRelErr(Floats(db.Get()), want, rows, sh.n), 8e-3)
            << "bf16 rows " << rows << " n " << sh.n << " k " << sh.k << " pdl " << pdl;
      }
    }
  }
  SetProgrammaticLaunch(true);
}

TEST(ModelKernels, FusedRmsNormGemvMatchesCpuAndUnfusedKernels) {
  SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(12);
  const float eps = 1e-5f;
  for (bool pdl : {true, false}) {
    SetProgrammaticLaunch(pdl);
    for (const Shape& sh : kShapes) {
      const std::vector<float> w = RandomBf16Values(size_t(sh.n) * sh.k, 0.05f, rng);
      const std::vector<float> gamma = RandomBf16Values(sh.k, 2.0f, rng);
      Dev<bf16> dw(w.size()), dg(gamma.size());
      dw.Put(ToBf16(w));
      dg.Put(ToBf16(gamma));
      for (int rows = 1; rows <= kMaxFusedGemvRows; ++rows) {
        ASSERT_TRUE(FusedGemvApplies(rows, sh.k));
        std::vector<float> x(size_t(rows) * sh.k);
        std::normal_distribution<float> nd(0.3f, 3.0f);
        for (float& v : x) v = nd(rng);  // fp32 residual, not bf16-representable
        Dev<float> dx(x.size());
        dx.Put(x);
        // CPU: the norm in double, rounded to bf16 as the kernels do, then the product.
        std::vector<float> normed(x.size());
        for (int r = 0; r < rows; ++r) {
          double ss = 0;
          for (int i = 0; i < sh.k; ++i) ss += double(x[size_t(r) * sh.k + i]) * x[size_t(r) * sh.k + i];
          const double inv = 1.0 / std::sqrt(ss / sh.k + eps);
          for (int i = 0; i < sh.k; ++i) {
            normed[size_t(r) * sh.k + i] =
                RoundBf16(static_cast<float>(gamma[i] * (x[size_t(r) * sh.k + i] * inv)));
          }
        }
        const std::vector<double> want = MatVec(normed, w, rows, sh.n, sh.k);
        Dev<float> fused(size_t(rows) * sh.n), unfused(size_t(rows) * sh.n);
        fused.Poison();
        unfused.Poison();
        GemvRmsNormF32(dx.p, dg.p, eps, dw.p, fused.p, rows, sh.n, sh.k, nullptr);
        Dev<bf16> dh(x.size());
        RmsNorm(dx.p, nullptr, rows, sh.k, dg.p, eps, dh.p, nullptr);
        GemvF32(dh.p, dw.p, unfused.p, rows, sh.n, sh.k, 0.0f, nullptr);
        // A last-ulp difference in 1/rms may flip a bf16 rounding of the normed input:
        // the budget is a few bf16 ulps of one input times a weight, not 1e-5.
        EXPECT_LE(MaxRelErr(fused.Get(), want, rows, sh.n), 2e-3)
            << "rows " << rows << " n " << sh.n << " k " << sh.k << " pdl " << pdl;
        EXPECT_LE(MaxRelErr(unfused.Get(), want, rows, sh.n), 2e-3);
        Dev<bf16> fb(size_t(rows) * sh.n);
        fb.Poison();
        GemvRmsNormBf16(dx.p, dg.p, eps, dw.p, fb.p, rows, sh.n, sh.k, nullptr);
        EXPECT_LE(MaxRelErr(Floats(fb.Get()), want, rows, sh.n), 1e-2)
            << "bf16 rows " << rows << " n " << sh.n << " k " << sh.k;
      }
    }
  }
  SetProgrammaticLaunch(true);
}

}  // namespace
}  // namespace leank::kernels::model
