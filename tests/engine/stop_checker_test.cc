#include "engine/core/stop_checker.h"

#include <random>
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

TEST(StopCheckerTest, TheStopStringThatEndsFirstWinsHoweverTheTextIsSplit) {
  // "bc" is complete at the 4th character, "abcd" only at the 5th: streamed a character
  // at a time the text stops at "bc". One token carrying all of "xabcd" must stop there
  // too (it used to cut at the earliest start, "abcd": "x" / "xabcd").
  FakeTokenizer tok({"x", "a", "b", "c", "d", "xabcd"});
  for (bool include : {false, true}) {
    SCOPED_TRACE(include);
    const std::string want = include ? "xabc" : "xa";
    for (const std::vector<int32_t>& ids : {std::vector<int32_t>{0, 1, 2, 3, 4}, {5}}) {
      StopChecker c(tok, {"abcd", "bc"}, include);
      bool stopped;
      EXPECT_EQ(Feed(c, ids, &stopped), want) << ids.size() << " tokens";
      EXPECT_TRUE(stopped);
    }
  }
  // Two ending at the same byte: cut at the earlier start (the longer one).
  StopChecker c(tok, {"bcd", "abcd"}, false);
  bool stopped;
  EXPECT_EQ(Feed(c, {5}, &stopped), "x");
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

TEST(StopCheckerTest, StopBeforeMinTokensDoesNotHideALaterOne) {
  // "ld" completes within min_tokens (ignored, released); its second occurrence, after
  // min_tokens, must stop. The search used to find the first, released one and give up.
  StopChecker c(Tok(), {"ld", "a much longer stop"}, false);
  std::string released;
  for (int32_t id : {0, 1, 2}) released += c.Push(id, /*check_stops=*/false).text;
  EXPECT_EQ(released, "Hello world");
  auto r = c.Push(2, true);
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(released + r.text, "Hello world");
  EXPECT_EQ(c.Flush(), "");
}

TEST(StopCheckerTest, StopCompletedBeforeMinTokensIsIgnoredEvenWhenHeldBack) {
  // "wo" ends inside the min_tokens window while " wor" is held back as a possible start
  // of " world!"; only matches completed after min_tokens count.
  StopChecker c(Tok(), {"wo", " world!"}, false);
  std::string text;
  text += c.Push(0, false).text;
  text += c.Push(1, false).text;
  auto r = c.Push(2, true);
  EXPECT_FALSE(r.stopped);
  text += r.text + c.Flush();
  EXPECT_EQ(text, "Hello world");
}

// Random pieces over a small alphabet with split multi-byte characters, random stop
// strings and min_tokens, against a direct reference: the first token after min_tokens
// whose text completes an occurrence of a stop string ends the output at the occurrence
// that ends first (ties: the earlier start), plus the string when included; the
// streamed deltas add up to it.
TEST(StopCheckerTest, RandomStreamsMatchTheReference) {
  const std::vector<std::string> pieces = {"a",
                                           "b",
                                           "ab",
                                           "ba",
                                           "c",
                                           "abc",
                                           "\xC3",
                                           "\xA9",
                                           "\xC3\xA9",
                                           "a\xC3",
                                           "\xA9"
                                           "b",
                                           "\xE2\x82",
                                           "\xAC",
                                           "\xE2\x82\xAC"
                                           "a",
                                           "\n",
                                           "\n\n"};
  const std::vector<std::string> alphabet = {"a", "b", "c", "\xC3\xA9", "\xE2\x82\xAC", "\n"};
  FakeTokenizer tok(pieces);
  std::mt19937_64 rng(20261125);
  auto pick = [&](int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng); };
  int stopped_runs = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<std::string> stops(1 + pick(3));
    for (std::string& s : stops) {
      const int len = 1 + pick(4);
      for (int i = 0; i < len; ++i) s += alphabet[pick(alphabet.size())];
    }
    const bool include = pick(2) == 1;
    const int min_tokens = pick(6);
    std::vector<int32_t> ids(1 + pick(24));
    for (int32_t& id : ids) id = pick(pieces.size());

    // Reference: the complete-UTF-8 text after each token.
    IncrementalDecoder dec(tok);
    std::vector<std::string> texts = {""};
    for (int32_t id : ids) texts.push_back(texts.back() + dec.Push(id));
    std::string want = texts.back() + dec.Flush();
    bool want_stop = false;
    for (size_t k = min_tokens + 1; k < texts.size() && !want_stop; ++k) {
      const std::string& t = texts[k];
      size_t best = std::string::npos, best_end = std::string::npos;
      for (const std::string& s : stops) {
        for (size_t pos = t.find(s); pos != std::string::npos; pos = t.find(s, pos + 1)) {
          const size_t end = pos + s.size();
          if (end > texts[k - 1].size() && (end < best_end || (end == best_end && pos < best))) {
            best = pos;
            best_end = end;
          }
        }
      }
      if (best != std::string::npos) {
        want = t.substr(0, include ? best_end : best);
        want_stop = true;
      }
    }

    StopChecker c(tok, stops, include);
    std::string got;
    bool got_stop = false;
    for (size_t k = 0; k < ids.size() && !got_stop; ++k) {
      auto r = c.Push(ids[k], static_cast<int>(k) >= min_tokens);
      got += r.text;
      got_stop = r.stopped;
    }
    got += c.Flush();
    std::string why = "stops:";
    for (const auto& s : stops) why += " [" + s + "]";
    why += " min_tokens " + std::to_string(min_tokens) + " text [" + texts.back() + "]";
    EXPECT_EQ(got_stop, want_stop) << why;
    EXPECT_EQ(got, want) << why;
    stopped_runs += want_stop;
  }
  EXPECT_GT(stopped_runs, 300);  // both outcomes are exercised
  EXPECT_LT(stopped_runs, 2700);
}

}  // namespace
}  // namespace leank
