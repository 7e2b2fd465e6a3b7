// cpu::RoundToBf16 (the rounding of the CPU backend's bf16-activation mode) against bf16
// bit patterns worked out by hand from the IEEE-754 bits: a bf16 is the top 16 bits of a
// float; the low 16 bits decide the rounding (above 0x8000 up, below down, exactly 0x8000
// to the even upper half).

#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/cpu/ops.h"
#include "gtest/gtest.h"

namespace leank::cpu {
namespace {

float FromBits(uint32_t bits) { return std::bit_cast<float>(bits); }
uint32_t Bits(float f) { return std::bit_cast<uint32_t>(f); }

struct Case {
  uint32_t in;    // float bits
  uint32_t want;  // bits of the rounded float (bf16 << 16)
  const char* why;
};

constexpr Case kCases[] = {
    {0x3f800000u, 0x3f800000u, "1.0: already a bf16"},
    {0x3f807fffu, 0x3f800000u, "1 + just under half an ulp: down"},
    {0x3f808000u, 0x3f800000u, "1 + 2^-8, a tie: to even 0x3f80"},
    {0x3f808001u, 0x3f810000u, "1 + just over half an ulp: up"},
    {0x3f818000u, 0x3f820000u, "1 + 3 * 2^-8, a tie: to even 0x3f82 (up)"},
    {0xbf818000u, 0xbf820000u, "negative tie: to even, sign kept"},
    {0x40490fdbu, 0x40490000u, "pi: low half 0x0fdb, down to 3.140625"},
    {0x3dcccccdu, 0x3dcd0000u, "0.1f: low half 0xcccd, up to 0.10009765625"},
    {0x3f7fffffu, 0x3f800000u, "carry into the exponent: 1 - 2^-24 -> 1.0"},
    {0x7f7f7fffu, 0x7f7f0000u, "below half under the largest bf16: stays finite"},
    {0x7f7f8000u, 0x7f800000u, "tie at the largest bf16 (odd 0x7f7f): up to +inf"},
    {0x7f7fffffu, 0x7f800000u, "largest float: rounds to +inf"},
    {0xff7fffffu, 0xff800000u, "most negative float: rounds to -inf"},
    {0x7f800000u, 0x7f800000u, "+inf passes through"},
    {0xff800000u, 0xff800000u, "-inf passes through"},
    {0x00000000u, 0x00000000u, "+0"},
    {0x80000000u, 0x80000000u, "-0 keeps its sign"},
    {0x00008000u, 0x00000000u, "subnormal tie: to even (zero)"},
    {0x00018000u, 0x00020000u, "subnormal tie: to even (up)"},
    {0x007fffffu, 0x00800000u, "largest subnormal: up to the smallest normal"},
};

TEST(RoundToBf16, MatchesHandComputedBitPatterns) {
  for (const Case& c : kCases) {
    EXPECT_EQ(Bits(RoundToBf16(FromBits(c.in))), c.want)
        << std::hex << "0x" << c.in << ": " << c.why;
  }
}

TEST(RoundToBf16, NanStaysNan) {
  // Adding the rounding bias to these bit patterns without a NaN check would give +-inf
  // (0x7f800001 -> 0x7f80) or wrap to -0 (0x7fffffff).
  for (uint32_t bits :
       {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu, 0x7f80ffffu}) {
    EXPECT_TRUE(std::isnan(RoundToBf16(FromBits(bits)))) << std::hex << "0x" << bits;
  }
}

TEST(RoundToBf16, ArrayFormRoundsEveryElementInPlace) {
  std::vector<float> x;
  for (const Case& c : kCases) x.push_back(FromBits(c.in));
  RoundToBf16(x.data(), static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(Bits(x[i]), kCases[i].want) << kCases[i].why;
  }
}

}  // namespace
}  // namespace leank::cpu
