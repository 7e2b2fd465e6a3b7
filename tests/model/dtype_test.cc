#include "engine/model/dtype.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/model/test_util.h"

namespace leank {
namespace {

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}

TEST(DTypeTest, NamesAndSizes) {
  EXPECT_EQ(DTypeName(DType::kBF16), "bfloat16");
  EXPECT_EQ(DTypeSize(DType::kF32), 4);
  EXPECT_EQ(DTypeSize(DType::kF16), 2);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2);
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16}) {
    EXPECT_EQ(*ParseSafetensorsDType(SafetensorsDTypeName(d)), d);
    EXPECT_EQ(*ParseTorchDType(DTypeName(d)), d);
  }
  EXPECT_EQ(*ParseTorchDType("torch.bfloat16"), DType::kBF16);
  EXPECT_EQ(*ParseTorchDType("half"), DType::kF16);
  EXPECT_STATUS(ParseSafetensorsDType("I64").status(), absl::StatusCode::kInvalidArgument, "I64");
  EXPECT_STATUS(ParseTorchDType("int8").status(), absl::StatusCode::kInvalidArgument, "int8");
}

TEST(DTypeTest, F16KnownValues) {
  EXPECT_EQ(F16ToFloat(0x3c00), 1.0f);
  EXPECT_EQ(F16ToFloat(0xc000), -2.0f);
  EXPECT_EQ(F16ToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(F16ToFloat(0x0400), std::ldexp(1.0f, -14));     // smallest normal
  EXPECT_EQ(F16ToFloat(0x0001), std::ldexp(1.0f, -24));     // smallest subnormal
  EXPECT_EQ(F16ToFloat(0x03ff), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(F16ToFloat(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(Bits(F16ToFloat(0x8000)), 0x80000000u);  // -0 keeps its sign
  EXPECT_EQ(F16ToFloat(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(F16ToFloat(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(F16ToFloat(0x7e00)));
  EXPECT_TRUE(std::isnan(F16ToFloat(0x7c01)));  // signalling payload stays NaN
  EXPECT_TRUE(std::isnan(F16ToFloat(0xfe00)));
}

TEST(DTypeTest, FloatToF16RoundsToNearestEven) {
  EXPECT_EQ(FloatToF16(1.0f), 0x3c00);
  EXPECT_EQ(FloatToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie -> even
  EXPECT_EQ(FloatToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(FloatToF16(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToF16(65519.0f), 0x7bff);
  EXPECT_EQ(FloatToF16(65520.0f), 0x7c00);  // halfway to 2^16 rounds to infinity
  EXPECT_EQ(FloatToF16(-1e10f), 0xfc00);
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -25)), 0x0000);      // tie between 0 and 1 ulp
  EXPECT_EQ(FloatToF16(3 * std::ldexp(1.0f, -25)), 0x0002);  // tie -> even
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_EQ(FloatToF16(-std::ldexp(1.0f, -24)), 0x8001);
  EXPECT_EQ(FloatToF16(std::ldexp(1023.5f, -24)), 0x0400);  // rounds up into the normals
  EXPECT_EQ(FloatToF16(std::numeric_limits<float>::denorm_min()), 0x0000);
  const uint16_t nan = FloatToF16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x03ff, 0);
}

TEST(DTypeTest, F16RoundTripsEveryValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = F16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(f)))) << std::hex << h;
    } else {
      ASSERT_EQ(FloatToF16(f), h) << std::hex << h;
    }
  }
}

#if defined(__FLT16_MANT_DIG__)
// The compiler's _Float16 is an independent oracle for both directions.
TEST(DTypeTest, F16MatchesCompilerFloat16) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t bits = static_cast<uint16_t>(h);
    _Float16 half;
    std::memcpy(&half, &bits, sizeof(half));
    const float want = static_cast<float>(half);
    const float got = F16ToFloat(bits);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got));
    } else {
      ASSERT_EQ(Bits(got), Bits(want)) << std::hex << h;
    }
  }
  std::vector<float> values = test_util::RandomFloats(20000, 7);
  for (size_t i = 0; i < values.size(); ++i) {
    // Spread magnitudes over the subnormal, normal and overflow ranges.
    const float f = std::ldexp(values[i], static_cast<int>(i % 48) - 30);
    const _Float16 half = static_cast<_Float16>(f);
    uint16_t want;
    std::memcpy(&want, &half, sizeof(want));
    ASSERT_EQ(FloatToF16(f), want) << f;
  }
}
#endif

TEST(DTypeTest, Bf16RoundTrip) {
  EXPECT_EQ(Bf16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);      // tie -> even
  EXPECT_EQ(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);  // tie -> even (up)
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = Bf16ToFloat(static_cast<uint16_t>(h));
    if (!std::isnan(f)) {
      ASSERT_EQ(FloatToBf16(f), h) << std::hex << h;
    }
  }
}

TEST(DTypeTest, ConvertToFloatFromUnalignedBuffers) {
  const std::vector<float> values = test_util::RandomFloats(37, 11);
  std::vector<uint8_t> buffer(1 + values.size() * 4);
  std::vector<float> out(values.size());
  // F32: exact.
  std::memcpy(buffer.data() + 1, values.data(), values.size() * 4);
  ConvertToFloat(DType::kF32, buffer.data() + 1, values.size(), out.data());
  EXPECT_EQ(out, values);
  // F16 and BF16: equal to the scalar conversions of the rounded values.
  for (DType d : {DType::kF16, DType::kBF16}) {
    std::vector<float> want(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      const uint16_t h = d == DType::kF16 ? FloatToF16(values[i]) : FloatToBf16(values[i]);
      std::memcpy(buffer.data() + 1 + 2 * i, &h, 2);
      want[i] = d == DType::kF16 ? F16ToFloat(h) : Bf16ToFloat(h);
      EXPECT_NEAR(want[i], values[i], std::abs(values[i]) * (d == DType::kF16 ? 1e-3 : 8e-3));
    }
    ConvertToFloat(d, buffer.data() + 1, values.size(), out.data());
    EXPECT_EQ(out, want) << DTypeName(d);
  }
}

}  // namespace
}  // namespace leank
