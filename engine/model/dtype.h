#pragma once
// Element types of weights and caches, and scalar conversions to float.

#include <cstdint>
#include <cstring>
#include <string_view>

#include "absl/status/statusor.h"

namespace leank {

enum class DType { kF32, kF16, kBF16 };

std::string_view DTypeName(DType dtype);  // "float32", "float16", "bfloat16"
int DTypeSize(DType dtype);               // bytes per element
absl::StatusOr<DType> ParseSafetensorsDType(std::string_view s);  // "F32", "F16", "BF16"
absl::StatusOr<DType> ParseTorchDType(std::string_view s);        // "float32", "bfloat16", ...

inline float Bf16ToFloat(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Round-to-nearest-even, NaN kept quiet: matches torch's float -> bfloat16.
inline uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// Exact for every half value: subnormals, +-0, +-inf and NaN (payload kept).
float F16ToFloat(uint16_t h);
// Round-to-nearest-even; overflow gives +-inf, NaN stays a quiet NaN.
uint16_t FloatToF16(float f);

// "F32", "F16", "BF16": the dtype names of the safetensors header.
std::string_view SafetensorsDTypeName(DType dtype);

// Converts `count` elements of `dtype` at `src` to float.
void ConvertToFloat(DType dtype, const void* src, int64_t count, float* dst);

}  // namespace leank
