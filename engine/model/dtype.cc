#include "engine/model/dtype.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace leank {

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "float32";
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
  }
  return "unknown";
}

int DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
  }
  std::fprintf(stderr, "DTypeSize: invalid DType %d\n", static_cast<int>(dtype));
  std::abort();
}

std::string_view SafetensorsDTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
  }
  return "unknown";
}

absl::StatusOr<DType> ParseSafetensorsDType(std::string_view s) {
  if (s == "F32") return DType::kF32;
  if (s == "F16") return DType::kF16;
  if (s == "BF16") return DType::kBF16;
  return absl::InvalidArgumentError(absl::StrCat("unsupported safetensors dtype '", std::string(s),
                                                 "' (supported: F32, F16, BF16)"));
}

absl::StatusOr<DType> ParseTorchDType(std::string_view s) {
  // Old configs sometimes carry the repr of the torch object.
  if (s.substr(0, 6) == "torch.") s.remove_prefix(6);
  if (s == "float32" || s == "float" || s == "fp32") return DType::kF32;
  if (s == "float16" || s == "half" || s == "fp16") return DType::kF16;
  if (s == "bfloat16" || s == "bf16") return DType::kBF16;
  return absl::InvalidArgumentError(absl::StrCat("unsupported torch dtype '", std::string(s),
                                                 "' (supported: float32, float16, bfloat16)"));
}

float F16ToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  } else if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf, or NaN with its payload
  } else {
    bits = sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

uint16_t FloatToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) {  // NaN: keep the top payload bits, force quiet.
    return sign | 0x7e00u | static_cast<uint16_t>((magnitude >> 13) & 0x3ffu);
  }
  // 65520 is halfway between 65504 (max half) and 2^16; ties go to even, i.e. infinity.
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;
  if (magnitude < 0x38800000u) {  // below 2^-14: a half subnormal (or zero)
    float abs_value;
    std::memcpy(&abs_value, &magnitude, sizeof(abs_value));
    // Scaling by 2^24 is exact; nearbyint rounds half to even in the default mode.
    return sign | static_cast<uint16_t>(std::nearbyint(abs_value * 0x1p24f));
  }
  magnitude += 0xfffu + ((magnitude >> 13) & 1u);  // round to nearest even at bit 13
  return sign | static_cast<uint16_t>((magnitude - 0x38000000u) >> 13);
}

void ConvertToFloat(DType dtype, const void* src, int64_t count, float* dst) {
  if (count <= 0) return;  // empty tensors may come with null pointers
  const auto* bytes = static_cast<const uint8_t*>(src);
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(count) * sizeof(float));
      return;
    case DType::kF16:
      for (int64_t i = 0; i < count; ++i) {
        uint16_t h;  // memcpy: the mapping gives no alignment guarantee
        std::memcpy(&h, bytes + 2 * i, sizeof(h));
        dst[i] = F16ToFloat(h);
      }
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < count; ++i) {
        uint16_t h;
        std::memcpy(&h, bytes + 2 * i, sizeof(h));
        dst[i] = Bf16ToFloat(h);
      }
      return;
  }
  std::fprintf(stderr, "ConvertToFloat: invalid DType %d\n", static_cast<int>(dtype));
  std::abort();
}

}  // namespace leank
