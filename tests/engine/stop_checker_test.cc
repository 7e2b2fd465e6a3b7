#include "engine/core/stop_checker.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace leank {
namespace {

// Token i decodes to pieces[i] (bytes, possibly partial UTF-8).
class FakeTokenizer : public Tokenizer {
 public:
  explicit FakeTokenizer(std::vector<std::string> pieces) : pieces_(std::move(pieces)) {}
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view, bool) const override {
    return std::vector<int32_t>{};
  }
  std::string DecodeBytes(std::span<const int32_t> ids, bool) const override {
    std::string s;
    for (int32_t id : ids) s += pieces_[id];
    return s;
  }
  std::string Decode(std::span<const int32_t> ids, bool skip) const override {
    return DecodeBytes(ids, skip);
  }
  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  std::optional<int32_t> TokenToId(std::string_view) const override { return std::nullopt; }
  std::string IdToToken(int32_t id) const override { return pieces_[id]; }
  bool IsSpecial(int32_t) const override { return false; }

 private:
  std::vector<std::string> pieces_;
};

std::string Feed(StopChecker& c, const std::vector<int32_t>& ids, bool* stopped) {
  std::string out;
  *stopped = false;
  for (int32_t id : ids) {
    auto r = c.Push(id, true);
    out += r.text;
    if (r.stopped) {
      *stopped = true;
      return out;
    }
  }
  return out + c.Flush();
}

const FakeTokenizer& Tok() {
  // 0 "Hello", 1 " wor", 2 "ld", 3 "\n\n", 4 "END", 5 first byte of "é", 6 second byte
  static FakeTokenizer t({"Hello", " wor", "ld", "\n\n", "END", "\xC3", "\xA9"});
  return t;
}

TEST(StopCheckerTest, NoStopStringsReleasesEverything) {
  StopChecker c(Tok(), {}, false);
  bool stopped;
  EXPECT_EQ(Feed(c, {0, 1, 2}, &stopped), "Hello world");
  EXPECT_FALSE(stopped);
}

TEST(StopCheckerTest, StopStringAcrossTokensIsCutAndNeverLeaked) {
  StopChecker c(Tok(), {"world"}, false);
  std::string released;
  auto r = c.Push(0, true);
  released += r.text;
  r = c.Push(1, true);  // " wor" could start "world": held back
  released += r.text;
  EXPECT_EQ(released, "Hello ");
  r = c.Push(2, true);
  released += r.text;
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(released, "Hello ");
}

TEST(StopCheckerTest, IncludeStopString) {
  StopChecker c(Tok(), {"ld\n"}, true);
  bool stopped;
  EXPECT_EQ(Feed(c, {0, 1, 2, 3, 0}, &stopped), "Hello world\n");
  EXPECT_TRUE(stopped);
}

TEST(StopCheckerTest, EarliestOfSeveralStopStrings) {
  StopChecker c(Tok(), {"END", "wor"}, false);
  bool stopped;
  EXPECT_EQ(Feed(c, {0, 1, 2, 4}, &stopped), "Hello ");
  EXPECT_TRUE(stopped);
}

TEST(StopCheckerTest, NoStopsBeforeMinTokens) {
  StopChecker c(Tok(), {"Hello"}, false);
  auto r = c.Push(0, /*check_stops=*/false);
  EXPECT_FALSE(r.stopped);
  std::string text = r.text + c.Flush();
  EXPECT_EQ(text, "Hello");
}

TEST(StopCheckerTest, SplitUtf8IsReleasedWhole) {
  StopChecker c(Tok(), {}, false);
  auto r = c.Push(5, true);
  EXPECT_EQ(r.text, "");
  r = c.Push(6, true);
  EXPECT_EQ(r.text, "\xC3\xA9");
}

}  // namespace
}  // namespace leank
