#include <gtest/gtest.h>

#include <random>
#include <string>

#include "engine/tokenizer/tokenizer.h"

namespace leank {
namespace {

TEST(Utf8Test, IsValidUtf8) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf"));
  for (const char* bad : {"\x80", "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xed\xa0\x80",
                          "\xf0\x80\x80\x80", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xff",
                          "\xc3", "\xe4\xb8", "a\xc3(", "\xf0\x9f\x98"}) {
    EXPECT_FALSE(IsValidUtf8(bad)) << bad;
  }
}

TEST(Utf8Test, CompleteUtf8Prefix) {
  EXPECT_EQ(CompleteUtf8Prefix(""), 0u);
  EXPECT_EQ(CompleteUtf8Prefix("abc"), 3u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\xe4"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\xe4\xb8"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\xe4\xb8\xad"), 5u);
  EXPECT_EQ(CompleteUtf8Prefix("\xf0\x9f\x98"), 0u);
  EXPECT_EQ(CompleteUtf8Prefix("\xf0\x9f\x98\x80"), 4u);
  // Bytes that can never complete are not held back.
  EXPECT_EQ(CompleteUtf8Prefix("ab\xff"), 3u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\x80"), 3u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\xed\xa0"), 4u);  // would be a surrogate
  EXPECT_EQ(CompleteUtf8Prefix("ab\xe4x"), 4u);
}

// Random byte strings: the emitted prefix plus the pending tail never loses
// bytes, and the tail is always a proper prefix of some character.
TEST(Utf8Test, CompleteUtf8PrefixOnRandomBytes) {
  std::mt19937 rng(1234);
  for (int iter = 0; iter < 5000; ++iter) {
    std::string s;
    const int n = rng() % 12;
    for (int i = 0; i < n; ++i) {
      const int kind = rng() % 4;
      s.push_back(static_cast<char>(kind == 0 ? rng() % 0x80 : 0x80 + rng() % 0x80));
    }
    const size_t k = CompleteUtf8Prefix(s);
    ASSERT_LE(k, s.size());
    ASSERT_LE(s.size() - k, 3u);
    if (k < s.size()) {
      const auto lead = static_cast<unsigned char>(s[k]);
      ASSERT_GE(lead, 0xC2);
      ASSERT_LE(lead, 0xF4);
      ASSERT_FALSE(IsValidUtf8(s.substr(k)));
    }
  }
}

}  // namespace
}  // namespace leank
