// Byte-level BPE tokenizers against ids produced by HF `tokenizers`
// (tools/make_tokenizer_fixtures.py): encode, encode with special tokens,
// decode (lossy), streaming decode.

#include "engine/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/chat_template.h"
#include "engine/tokenizer/unicode.h"
#include "test_util.h"

namespace leank {
namespace {

using testing::ReadJsonl;
using testing::TokenizerData;

struct TokenizerCase {
  std::string name;
};

std::filesystem::path TokenizerJson(const std::string& name) {
  if (name == "smollm2") return testing::SmolLm2Dir() / "tokenizer.json";
  return TokenizerData() / name / "tokenizer.json";
}

class FixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const auto path = TokenizerJson(GetParam());
    if (GetParam() == "smollm2" && !std::filesystem::exists(path)) {
      GTEST_SKIP() << path << " is missing: run tools/convert_smollm2.py first";
    }
    auto tok = Tokenizer::Load(path);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = *std::move(tok);
    cases_ = ReadJsonl(TokenizerData() / (GetParam() + ".cases.jsonl"));
    ASSERT_GE(cases_.size(), 2000u);
  }
  std::unique_ptr<Tokenizer> tok_;
  std::vector<nlohmann::json> cases_;
};

std::string Show(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) absl::StrAppend(&s, s.empty() ? "" : " ", id);
  return s;
}

TEST_P(FixtureTest, EncodeMatchesHf) {
  int failures = 0;
  for (const auto& c : cases_) {
    const std::string text = c["text"];
    const auto expected = c["ids"].get<std::vector<int32_t>>();
    auto ids = tok_->Encode(text, false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    if (*ids != expected && ++failures <= 5) {
      ADD_FAILURE() << "text: " << nlohmann::json(text).dump() << "\n  got:      " << Show(*ids)
                    << "\n  expected: " << Show(expected);
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST_P(FixtureTest, EncodeWithSpecialTokensMatchesHf) {
  int failures = 0;
  for (const auto& c : cases_) {
    const auto expected = c.value("ids_special", c["ids"]).get<std::vector<int32_t>>();
    auto ids = tok_->Encode(c["text"].get<std::string>(), true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    if (*ids != expected && ++failures <= 5) {
      ADD_FAILURE() << "text: " << c["text"].dump() << "\n  got:      " << Show(*ids)
                    << "\n  expected: " << Show(expected);
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST_P(FixtureTest, DecodeRoundTrips) {
  int failures = 0;
  for (const auto& c : cases_) {
    // HF's decode(ids); equals the text except where the normalizer changed it (NFC).
    const std::string expected = c.value("decoded", c["text"].get<std::string>());
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    if (tok_->Decode(ids, false) != expected && ++failures <= 5) {
      ADD_FAILURE() << "decode of " << c["text"].dump() << " gave "
                    << nlohmann::json(tok_->Decode(ids, false)).dump();
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST_P(FixtureTest, DecodeRandomIdsMatchesHfLossyDecode) {
  const auto cases = ReadJsonl(TokenizerData() / (GetParam() + ".decode.jsonl"));
  ASSERT_GE(cases.size(), 100u);
  for (const auto& c : cases) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok_->Decode(ids, false), c["text"].get<std::string>()) << c["ids"].dump();
    EXPECT_EQ(tok_->Decode(ids, true), c["text_skip"].get<std::string>()) << c["ids"].dump();
  }
}

TEST_P(FixtureTest, IncrementalDecoderEqualsFullDecode) {
  for (const auto& c : cases_) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    for (bool skip : {false, true}) {
      IncrementalDecoder dec(*tok_, skip);
      std::string streamed;
      for (int32_t id : ids) {
        const std::string piece = dec.Push(id);
        ASSERT_TRUE(IsValidUtf8(piece));
        streamed += piece;
      }
      streamed += dec.Flush();
      ASSERT_EQ(streamed, tok_->Decode(ids, skip)) << c["text"].dump();
    }
  }
}

TEST_P(FixtureTest, RefusesInvalidUtf8) {
  for (std::string bad : {std::string("\xff"), std::string("abc\xc3"), std::string("\xed\xa0\x80"),
                          std::string("\xc0\xaf"), std::string("ok \xf4\x90\x80\x80 ok"),
                          std::string("\x80"), std::string("\xe4\xb8")}) {
    auto ids = tok_->Encode(bad, false);
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument)
        << nlohmann::json::binary(std::vector<uint8_t>(bad.begin(), bad.end())).dump();
  }
}

TEST_P(FixtureTest, VocabAccessors) {
  EXPECT_GT(tok_->vocab_size(), 1000);
  int specials = 0;
  for (int32_t id = 0; id < tok_->vocab_size(); ++id) {
    const std::string token = tok_->IdToToken(id);
    if (token.empty()) continue;
    auto back = tok_->TokenToId(token);
    ASSERT_TRUE(back.has_value()) << token;
    EXPECT_EQ(*back, id) << token;
    specials += tok_->IsSpecial(id);
  }
  EXPECT_GE(specials, 3);
  EXPECT_EQ(tok_->IdToToken(-1), "");
  EXPECT_EQ(tok_->IdToToken(tok_->vocab_size()), "");
  EXPECT_FALSE(tok_->TokenToId("surely not a token \x01").has_value());
}

// A character split over several byte tokens streams out only when complete.
TEST_P(FixtureTest, IncrementalDecoderWaitsForWholeCharacters) {
  // GPT-2's byte-to-char map, to find each single byte's token.
  auto byte_token = [&](unsigned char b) {
    int n = 0;
    char32_t c = 0;
    for (int x = 0; x < 256; ++x) {
      const bool printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE;
      const char32_t cx = printable ? x : 256 + n++;
      if (x == b) c = cx;
    }
    std::string s;
    if (c < 0x80) {
      s.push_back(static_cast<char>(c));
    } else {
      s.push_back(static_cast<char>(0xC0 | (c >> 6)));
      s.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
    auto id = tok_->TokenToId(s);
    EXPECT_TRUE(id.has_value());
    return id.value_or(0);
  };
  const std::string text = "a\xe4\xb8\xad\xf0\x9f\x98\x80\xc3\xa9!";  // a中😀é!
  IncrementalDecoder dec(*tok_);
  std::vector<std::string> out;
  for (unsigned char b : text) out.push_back(dec.Push(byte_token(b)));
  EXPECT_EQ(dec.Flush(), "");
  const std::vector<std::string> expected = {
      "a", "", "", "\xe4\xb8\xad", "", "", "", "\xf0\x9f\x98\x80", "", "\xc3\xa9", "!"};
  EXPECT_EQ(out, expected);
  // An incomplete character left at the end flushes as U+FFFD.
  IncrementalDecoder dec2(*tok_);
  EXPECT_EQ(dec2.Push(byte_token(0xe4)), "");
  EXPECT_EQ(dec2.Push(byte_token(0xb8)), "");
  EXPECT_EQ(dec2.Flush(), "\xEF\xBF\xBD");
  // A broken sequence is replaced as soon as it cannot complete.
  IncrementalDecoder dec3(*tok_);
  EXPECT_EQ(dec3.Push(byte_token(0xe4)), "");
  EXPECT_EQ(dec3.Push(byte_token('x')), "\xEF\xBF\xBDx");
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, FixtureTest,
                         ::testing::Values("llama3-mini", "qwen2-mini", "smollm2"),
                         [](const auto& info) { return testing::FixtureParamName(info); });

TEST(TokenizerTest, Llama3PrependsBosWithSpecialTokens) {
  auto tok = Tokenizer::Load(TokenizerData() / "llama3-mini" / "tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const auto bos = (*tok)->TokenToId("<|begin_of_text|>");
  ASSERT_TRUE(bos.has_value());
  auto with = (*tok)->Encode("hello", true);
  auto without = (*tok)->Encode("hello", false);
  ASSERT_TRUE(with.ok() && without.ok());
  ASSERT_EQ(with->size(), without->size() + 1);
  EXPECT_EQ(with->front(), *bos);
  EXPECT_TRUE((*tok)->IsSpecial(*bos));
  EXPECT_EQ((*tok)->Decode(*with, true), "hello");
  EXPECT_EQ((*tok)->Decode(*with, false), "<|begin_of_text|>hello");
}

TEST(TokenizerTest, SpecialTokensInTextAreSingleIds) {
  auto tok = Tokenizer::Load(TokenizerData() / "qwen2-mini" / "tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const int32_t start = *(*tok)->TokenToId("<|im_start|>");
  const int32_t end = *(*tok)->TokenToId("<|im_end|>");
  auto ids = (*tok)->Encode("<|im_start|>user\nhi<|im_end|>", false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->front(), start);
  EXPECT_EQ(ids->back(), end);
  EXPECT_EQ(std::count(ids->begin(), ids->end(), start), 1);
}

std::string MinimalJson(const std::string& model, const std::string& pre,
                        const std::string& normalizer = "null") {
  return absl::StrCat(R"({"model":)", model, R"(,"pre_tokenizer":)", pre, R"(,"normalizer":)",
                      normalizer, R"(,"decoder":{"type":"ByteLevel"},"added_tokens":[]})");
}

TEST(TokenizerTest, RefusesUnsupportedConfigurationsByName) {
  const std::string bpe = R"({"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]})";
  const std::string byte_level = R"({"type":"ByteLevel"})";
  struct Bad {
    std::string json, word;
  } cases[] = {
      {MinimalJson(R"({"type":"WordPiece","vocab":{}})", byte_level), "WordPiece"},
      {MinimalJson(R"({"type":"Unigram","vocab":[]})", byte_level), "Unigram"},
      {MinimalJson(bpe, R"({"type":"Metaspace"})"), "Metaspace"},
      {MinimalJson(bpe, byte_level, R"({"type":"NFKC"})"), "NFKC"},
      {MinimalJson(bpe, R"({"type":"Split","pattern":{"Regex":"("},"behavior":"Isolated"})"),
       "regex"},
      {MinimalJson(R"({"type":"BPE","vocab":{"a":0},"merges":["a b"]})", byte_level), "merge"},
      {MinimalJson(R"({"type":"BPE","vocab":{},"merges":[],"byte_fallback":true})", byte_level),
       "byte_fallback"},
      {MinimalJson(R"({"type":"BPE","vocab":{},"merges":[],"dropout":0.1})", byte_level),
       "dropout"},
      {"not json", "JSON"},
  };
  for (const Bad& b : cases) {
    auto tok = Tokenizer::FromJson(b.json);
    ASSERT_FALSE(tok.ok()) << b.json;
    EXPECT_NE(tok.status().message().find(b.word), std::string::npos) << tok.status();
  }
  // dropout 0 is plain BPE in HF tokenizers (it was refused as "dropout").
  auto zero = Tokenizer::FromJson(
      MinimalJson(R"({"type":"BPE","vocab":{"a":0},"merges":[],"dropout":0.0})", byte_level));
  EXPECT_TRUE(zero.ok()) << zero.status();
  auto missing = Tokenizer::Load("/nonexistent/tokenizer.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

// Ids index dense tables: a huge id allocated that many entries (bad_alloc or an
// OOM kill at start-up), ids past INT32_MAX wrapped, and a float id was truncated.
TEST(TokenizerTest, TokenIdsOutOfRangeOrNotIntegersAreNamed) {
  const std::string byte_level = R"({"type":"ByteLevel"})";
  auto with_added = [&](const std::string& id) {
    return absl::StrCat(R"({"model":{"type":"BPE","vocab":{"a":0,"b":1},"merges":[]},)",
                        R"("pre_tokenizer":{"type":"ByteLevel"},"normalizer":null,)",
                        R"("decoder":{"type":"ByteLevel"},"added_tokens":[{"id":)", id,
                        R"(,"content":"<x>","special":true}]})");
  };
  auto with_vocab_id = [&](const std::string& id) {
    return MinimalJson(
        absl::StrCat(R"({"type":"BPE","vocab":{"a":0,"b":)", id, R"(},"merges":[]})"), byte_level);
  };
  struct Bad {
    std::string json, word;
  } cases[] = {
      {with_added("2000000000"), "added token '<x>': id must be an integer in [0, 16777215]"},
      {with_added("4294967298"), "added token '<x>'"},
      {with_added("-1"), "added token '<x>'"},
      {with_added("2.5"), "got 2.5"},
      {with_added(R"("2")"), "added token '<x>'"},
      {with_vocab_id("3000000000"), "vocab entry 'b': id must be an integer"},
      {with_vocab_id("1.0"), "vocab entry 'b'"},
      {with_vocab_id("-4"), "vocab entry 'b'"},
  };
  for (const Bad& b : cases) {
    auto tok = Tokenizer::FromJson(b.json);
    ASSERT_FALSE(tok.ok()) << b.json;
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument) << tok.status();
    EXPECT_NE(tok.status().message().find(b.word), std::string::npos) << tok.status();
  }
  auto ok = Tokenizer::FromJson(with_added("1000"));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)->TokenToId("<x>"), 1000);
}

TEST(TokenizerTest, MergeFormatsAndSplitBehaviors) {
  // Merges as "a b" strings and as [a, b] pairs give the same model.
  const std::string vocab = R"({"a":0,"b":1,"ab":2,"c":3,"abc":4,"-":5})";
  for (const std::string merges : {R"(["a b","ab c"])", R"([["a","b"],["ab","c"]])"}) {
    auto tok = Tokenizer::FromJson(
        MinimalJson(absl::StrCat(R"({"type":"BPE","vocab":)", vocab, R"(,"merges":)", merges, "}"),
                    R"({"type":"Split","pattern":{"String":"-"},"behavior":"Removed"})"));
    ASSERT_TRUE(tok.ok()) << tok.status();
    auto ids = (*tok)->Encode("abc-ab--cab", false);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*ids, (std::vector<int32_t>{4, 2, 3, 2}));
  }
  // Splitting "ab--c" at "-" with each behavior; "b -" is the first merge so
  // the pieces decide the ids: ab|-|-|c, ab-|-|c, ab|-|-c, ab|--|c, ab|c.
  const std::string vocab2 = R"({"a":0,"b":1,"ab":2,"c":3,"-":5,"b-":6,"-c":7,"--":8})";
  struct {
    const char* behavior;
    std::vector<int32_t> ids;
  } behaviors[] = {{"Isolated", {2, 5, 5, 3}},
                   {"MergedWithPrevious", {0, 6, 5, 3}},
                   {"MergedWithNext", {2, 5, 7}},
                   {"Contiguous", {2, 8, 3}},
                   {"Removed", {2, 3}}};
  for (const auto& b : behaviors) {
    auto tok = Tokenizer::FromJson(
        MinimalJson(absl::StrCat(R"({"type":"BPE","vocab":)", vocab2,
                                 R"(,"merges":["b -","a b","- c","- -"]})"),
                    absl::StrCat(R"({"type":"Split","pattern":{"String":"-"},"behavior":")",
                                 b.behavior, R"("})")));
    ASSERT_TRUE(tok.ok()) << tok.status();
    auto ids = (*tok)->Encode("ab--c", false);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*ids, b.ids) << b.behavior;
  }
}

// A pair listed twice in merges takes the rank of its LAST occurrence, as in HF
// tokenizers 0.23 (it collects the merges into a map, later entries overwriting): with
// "b c" at ranks 0 and 3, "a b" (1) merges first and "abc" is one token. HF:
// Tokenizer.from_str(...).encode("abc").ids == [5], encode("bcab").ids == [4, 3].
TEST(TokenizerTest, RepeatedMergeTakesItsLastRankLikeHf) {
  for (const std::string merges :
       {R"(["b c","a b","ab c","b c"])", R"([["b","c"],["a","b"],["ab","c"],["b","c"]])"}) {
    auto tok = Tokenizer::FromJson(MinimalJson(
        absl::StrCat(R"({"type":"BPE","vocab":{"a":0,"b":1,"c":2,"ab":3,"bc":4,"abc":5},)",
                     R"("merges":)", merges, "}"),
        R"({"type":"ByteLevel","add_prefix_space":false,"use_regex":false})"));
    ASSERT_TRUE(tok.ok()) << tok.status();
    EXPECT_EQ((*tok)->Encode("abc", false).value(), (std::vector<int32_t>{5})) << merges;
    EXPECT_EQ((*tok)->Encode("bcab", false).value(), (std::vector<int32_t>{4, 3})) << merges;
  }
}

}  // namespace
}  // namespace leank

namespace leank {
namespace {

// lstrip/rstrip on added tokens: llama3-mini with the same edits the fixture
// script made before asking HF for the ids.
TEST(TokenizerTest, AddedTokenLstripRstripMatchHf) {
  std::ifstream in(TokenizerData() / "llama3-mini" / "tokenizer.json");
  nlohmann::json data = nlohmann::json::parse(in);
  for (auto& t : data["added_tokens"]) {
    if (t["content"] == "<|eot_id|>") t["lstrip"] = true;
    if (t["content"] == "<|end_of_text|>") t["rstrip"] = true;
    if (t["content"] == "<|start_header_id|>") t["lstrip"] = t["rstrip"] = true;
  }
  auto tok = Tokenizer::FromJson(data.dump());
  ASSERT_TRUE(tok.ok()) << tok.status();
  const auto cases = ReadJsonl(TokenizerData() / "strip.cases.jsonl");
  ASSERT_GE(cases.size(), 100u);
  for (const auto& c : cases) {
    auto ids = (*tok)->Encode(c["text"].get<std::string>(), false);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*ids, c["ids"].get<std::vector<int32_t>>()) << c["text"].dump();
  }
}

// An added token inside the whitespace an lstrip/rstrip token swallows is still a
// token in HF (find_matches takes the matches of the raw text, then widens each by its
// strip): llama3-mini + "<X>" (lstrip, rstrip) and "\n", ids from tokenizers 0.23.3.
// The old code resumed its search after the swallowed whitespace and lost the "\n"s.
TEST(TokenizerTest, AddedTokenInsideStrippedWhitespaceMatchesHf) {
  std::ifstream in(TokenizerData() / "llama3-mini" / "tokenizer.json");
  nlohmann::json data = nlohmann::json::parse(in);
  auto added = [&](const char* content, int id, bool strip) {
    data["added_tokens"].push_back({{"id", id},
                                    {"content", content},
                                    {"single_word", false},
                                    {"lstrip", strip},
                                    {"rstrip", strip},
                                    {"normalized", false},
                                    {"special", false}});
  };
  added("<X>", 3256, true);
  added("\n", 3257, false);
  auto tok = Tokenizer::FromJson(data.dump());
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::pair<const char*, std::vector<int32_t>> cases[] = {
      {"<X>\n\n<X>", {3256, 3257, 3257, 3256}}, {"<X>\n  abc", {3256, 3257, 220, 1349, 66}},
      {"a \n<X>b", {64, 220, 3257, 3256, 65}},  {"a\n <X> \nb", {64, 3257, 3256, 3257, 65}},
      {"<X><X> x", {3256, 3256, 87}},
  };
  for (const auto& [text, ids] : cases) {
    EXPECT_EQ((*tok)->Encode(text, false).value(), ids) << nlohmann::json(text).dump();
  }
}

TEST(TokenizerTest, NfcMatchesPythonUnicodedata) {
  const auto cases = ReadJsonl(TokenizerData() / "nfc.jsonl");
  ASSERT_GE(cases.size(), 1000u);
  for (const auto& c : cases) {
    EXPECT_EQ(tokenizer_internal::NormalizeNfc(c["text"].get<std::string>()),
              c["nfc"].get<std::string>())
        << c["text"].dump();
  }
}

}  // namespace
}  // namespace leank

namespace leank {
namespace {

// Encode is const and shared by request threads: results do not depend on
// other threads filling the word cache at the same time.
TEST(TokenizerTest, ConcurrentEncodeIsConsistent) {
  auto tok = Tokenizer::Load(TokenizerData() / "qwen2-mini" / "tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const auto cases = ReadJsonl(TokenizerData() / "qwen2-mini.cases.jsonl");
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = t; i < cases.size() + t; ++i) {
        const auto& c = cases[i % cases.size()];
        auto ids = (*tok)->Encode(c["text"].get<std::string>(), false);
        if (!ids.ok() || *ids != c["ids"].get<std::vector<int32_t>>()) ++mismatches;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// The converted SmolLM2 folder's tokenizer_config.json (when present).
TEST(ChatTemplateTest, ConvertedSmolLm2Config) {
  const auto path = testing::SmolLm2Dir() / "tokenizer_config.json";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " missing";
  auto tmpl = ChatTemplate::Load(path);
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  EXPECT_EQ(tmpl->family(), ChatTemplate::Family::kChatML);
  const ChatMessage msgs[] = {{"user", "Hi"}};
  EXPECT_EQ(*tmpl->Render(msgs),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

}  // namespace
}  // namespace leank
