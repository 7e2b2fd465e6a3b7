// Mask construction, file round trip, and every refused input.

#include "cache/mask.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cache/test_util.h"

namespace leank::cache {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using json = nlohmann::json;

std::filesystem::path TempPath(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / "leank_cache_test";
  std::filesystem::create_directories(dir);
  return dir / (name + "." + std::to_string(::getpid()) + ".safetensors");
}

std::filesystem::path DataPath(const std::string& name) {
  return std::filesystem::path(LEANK_TEST_DATA_DIR) / "cache" / name;
}

// Writes a safetensors file from a header and raw data, valid or not.
void WriteRaw(const std::filesystem::path& path, const std::string& header,
              const std::string& data) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  std::ofstream(path, std::ios::binary) << bytes << header << data;
}

// A well-formed mask file of shape [2, 2, 32] (align 16), with overrides.
struct FileSpec {
  std::map<std::string, std::string> meta = {{"format", "leank-mask/1"}, {"sink", "32"},
                                             {"recent", "64"},           {"align", "16"},
                                             {"target_sparsity", "0.5"}, {"model", "tiny"}};
  std::string dtype = "U8";
  json shape = {2, 2, 32};
  std::string data = [] {
    std::string d(2 * 2 * 32, '\0');
    for (int i = 0; i < 16; ++i) d[i] = 1;           // layer 0 head 0: 16 kept
    for (int i = 32 * 3; i < 32 * 4; ++i) d[i] = 1;  // layer 1 head 1: all kept
    return d;
  }();
  json offsets = {0, 128};
};

std::filesystem::path WriteSpec(const std::string& name, const FileSpec& spec) {
  json header;
  header["__metadata__"] = spec.meta;
  header["leank.kept"] = {
      {"dtype", spec.dtype}, {"shape", spec.shape}, {"data_offsets", spec.offsets}};
  const auto path = TempPath(name);
  WriteRaw(path, header.dump(), spec.data);
  return path;
}

constexpr MaskShape kTiny{2, 2, 32};

absl::Status LoadSpec(const std::string& name, const FileSpec& spec, MaskShape expected = kTiny) {
  return LoadMask(WriteSpec(name, spec), expected).status();
}

TEST(MaskTest, CreateAndAccessors) {
  std::vector<uint8_t> kept(2 * 2 * 32, 0);
  for (int c : {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31}) kept[32 + c] = 1;
  auto mask = Mask::Create(kTiny, kept, 16);
  ASSERT_TRUE(mask.ok()) << mask.status();
  EXPECT_EQ(mask->KeptCount(0, 0), 0);
  EXPECT_EQ(mask->KeptCount(0, 1), 16);
  EXPECT_TRUE(mask->kept(0, 1, 3));
  EXPECT_FALSE(mask->kept(0, 1, 2));
  EXPECT_EQ(mask->KeptChannels(0, 1).front(), 1);
  EXPECT_EQ(mask->KeptChannels(0, 1).back(), 31);
  EXPECT_TRUE(std::is_sorted(mask->KeptChannels(0, 1).begin(), mask->KeptChannels(0, 1).end()));
  EXPECT_DOUBLE_EQ(mask->KeptFraction(), 16.0 / 128.0);
  EXPECT_FALSE(mask->IsAllOnes());

  Mask ones = Mask::AllOnes(kTiny);
  EXPECT_TRUE(ones.IsAllOnes());
  EXPECT_EQ(ones.KeptCount(1, 1), 32);
  EXPECT_DOUBLE_EQ(ones.KeptFraction(), 1.0);
}

TEST(MaskTest, CreateRefusesBadInput) {
  std::vector<uint8_t> ok(128, 0);
  EXPECT_THAT(Mask::Create({0, 2, 32}, {}, 16).status().message(), HasSubstr("must be positive"));
  EXPECT_THAT(Mask::Create(kTiny, std::vector<uint8_t>(100), 16).status().message(),
              AllOf(HasSubstr("100 values"), HasSubstr("128")));
  EXPECT_THAT(Mask::Create(kTiny, ok, 8).status().message(), HasSubstr("align is 8"));
  EXPECT_THAT(Mask::Create({1, 1, 48}, std::vector<uint8_t>(48), 32).status().message(),
              HasSubstr("does not divide head_dim 48"));
  std::vector<uint8_t> two = ok;
  two[32 * 3 + 5] = 2;
  EXPECT_THAT(Mask::Create(kTiny, two, 16).status().message(),
              AllOf(HasSubstr("value 2"), HasSubstr("layer 1, head 1, channel 5")));
  std::vector<uint8_t> odd = ok;
  for (int i = 0; i < 17; ++i) odd[32 * 2 + i] = 1;
  const auto st = Mask::Create(kTiny, odd, 16).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), AllOf(HasSubstr("layer 1, head 0 keeps 17"), HasSubstr("align 16")));
}

TEST(MaskTest, SaveLoadRoundTrip) {
  Mask mask = testing::RandomMask({3, 4, 64}, 16, 7);
  mask.sink = 64;
  mask.recent = 256;
  mask.target_sparsity = 0.625;
  mask.model = "round-trip";
  const auto path = TempPath("roundtrip");
  ASSERT_TRUE(SaveMask(mask, path).ok());
  auto loaded = LoadMask(path, {3, 4, 64});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->raw(), mask.raw());
  EXPECT_EQ(loaded->align, 16);
  EXPECT_EQ(loaded->sink, 64);
  EXPECT_EQ(loaded->recent, 256);
  EXPECT_DOUBLE_EQ(loaded->target_sparsity, 0.625);
  EXPECT_EQ(loaded->model, "round-trip");
  for (int l = 0; l < 3; ++l) {
    for (int h = 0; h < 4; ++h) EXPECT_EQ(loaded->KeptChannels(l, h), mask.KeptChannels(l, h));
  }
}

TEST(MaskTest, WellFormedSpecLoads) {
  auto mask = LoadMask(WriteSpec("good", FileSpec{}), kTiny);
  ASSERT_TRUE(mask.ok()) << mask.status();
  EXPECT_EQ(mask->KeptCount(0, 0), 16);
  EXPECT_EQ(mask->KeptCount(1, 1), 32);
  EXPECT_EQ(mask->sink, 32);
  EXPECT_EQ(mask->recent, 64);
}

TEST(MaskTest, LoadRefusesEachBadInput) {
  auto expect_bad = [](const std::string& name, const FileSpec& spec, const std::string& what,
                       MaskShape expected = kTiny) {
    const absl::Status st = LoadSpec(name, spec, expected);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << name << ": " << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr(what)) << name;
    EXPECT_THAT(std::string(st.message()), HasSubstr("mask file")) << name;
  };
  FileSpec s;
  s.meta["format"] = "leank-mask/2";
  expect_bad("format", s, "format is \"leank-mask/2\", expected \"leank-mask/1\"");
  s = {};
  s.meta.erase("format");
  expect_bad("noformat", s, "no \"format\"");
  expect_bad("shape", FileSpec{}, "mask shape [2, 2, 32] does not match the model's [30, 3, 64]",
             {30, 3, 64});
  s = {};
  s.data[40] = 3;
  expect_bad("value", s, "value 3 at layer 0, head 1, channel 8");
  s = {};
  s.data[20] = 1;
  expect_bad("align_count", s, "layer 0, head 0 keeps 17 channels, not a multiple of align 16");
  s = {};
  s.meta["align"] = "8";
  expect_bad("align8", s, "align is 8, must be 16 or 32");
  s = {};
  s.meta["align"] = "64";
  expect_bad("align64", s, "align is 64");
  s = {};
  s.meta["align"] = "32";  // head 0 of layer 0 keeps 16
  expect_bad("align32", s, "keeps 16 channels, not a multiple of align 32");
  for (const char* bad : {"0", "-128", "abc", "1.5", ""}) {
    s = {};
    s.meta["sink"] = bad;
    expect_bad(std::string("sink") + bad, s, "\"sink\" must be a positive integer");
    s = {};
    s.meta["recent"] = bad;
    expect_bad(std::string("recent") + bad, s, "\"recent\" must be a positive integer");
  }
  s = {};
  s.meta["target_sparsity"] = "1.5";
  expect_bad("sparsity", s, "\"target_sparsity\" must be a number in [0, 1]");
  s = {};
  s.dtype = "F32";
  expect_bad("dtype", s, "x F32 needs 512");  // the reader refuses the size first
  s.data.resize(512);  // a well-formed F32 tensor: refused for its dtype
  s.offsets = {0, 512};
  expect_bad("dtype_f32", s, "dtype \"F32\", expected \"U8\"");
  s = {};
  s.shape = {4, 32};
  expect_bad("rank", s, "expected [layers, kv_heads, head_dim]");
  s = {};
  s.shape = {2, 0, 32};
  expect_bad("zero_dim", s, "shape [2, 0, 32] x U8 needs 0");
  s = {};
  s.offsets = {0, 256};
  expect_bad("offsets", s, "data_offsets [0,256] reach past the data section");
  s = {};
  s.data.resize(100);
  expect_bad("short_data", s, "data section (100 bytes)");
}

TEST(MaskTest, LoadRefusesBrokenFiles) {
  EXPECT_EQ(LoadMask("/nonexistent/mask.safetensors", kTiny).status().code(),
            absl::StatusCode::kNotFound);
  const auto path = TempPath("broken");
  WriteRaw(path, "{not json", "");
  EXPECT_THAT(LoadMask(path, kTiny).status().message(), HasSubstr("not a valid JSON object"));
  std::ofstream(path, std::ios::binary) << "abc";
  EXPECT_THAT(LoadMask(path, kTiny).status().message(), HasSubstr("less than the 8-byte header length"));
  std::string huge(8, '\xff');
  std::ofstream(path, std::ios::binary) << huge << "{}";
  EXPECT_THAT(LoadMask(path, kTiny).status().message(), HasSubstr("header length"));
  WriteRaw(path, R"({"__metadata__": {"format": "leank-mask/1"}})", "");
  EXPECT_THAT(LoadMask(path, kTiny).status().message(), HasSubstr("no tensor \"leank.kept\""));
  WriteRaw(path, R"({"__metadata__": {"format": "leank-mask/1", "sink": 128}})", "");
  EXPECT_THAT(LoadMask(path, kTiny).status().message(), HasSubstr("value of 'sink' is not a string"));
}

TEST(MaskTest, ReleasedLlamaMaskCounts) {
  auto mask = LoadMask(DataPath("llama3.1-8b-instruct.leank.safetensors"), {32, 8, 128});
  ASSERT_TRUE(mask.ok()) << mask.status();
  std::map<int, int> heads_by_count;
  for (int l = 0; l < 32; ++l) {
    for (int h = 0; h < 8; ++h) ++heads_by_count[mask->KeptCount(l, h)];
  }
  EXPECT_EQ(heads_by_count, (std::map<int, int>{{0, 47}, {32, 120}, {64, 67}, {96, 22}}));
  EXPECT_DOUBLE_EQ(mask->KeptFraction(), 0.3125);
  EXPECT_EQ(mask->align, 32);
  EXPECT_EQ(mask->sink, 128);
  EXPECT_EQ(mask->recent, 768);
  EXPECT_EQ(mask->model, "Llama-3.1-8B-Instruct");
  // The Llama model's shape check: a Qwen-shaped model refuses it.
  EXPECT_THAT(
      LoadMask(DataPath("llama3.1-8b-instruct.leank.safetensors"), {28, 4, 128}).status().message(),
      HasSubstr("[32, 8, 128] does not match the model's [28, 4, 128]"));
}

TEST(MaskTest, ReleasedQwenAndSmolLm2Masks) {
  auto qwen = LoadMask(DataPath("qwen2.5-7b-instruct.leank.safetensors"), {28, 4, 128});
  ASSERT_TRUE(qwen.ok()) << qwen.status();
  std::map<int, int> heads_by_count;
  for (int l = 0; l < 28; ++l) {
    for (int h = 0; h < 4; ++h) ++heads_by_count[qwen->KeptCount(l, h)];
  }
  EXPECT_EQ(heads_by_count, (std::map<int, int>{{0, 35}, {32, 34}, {64, 33}, {96, 10}}));
  auto smol = LoadMask(DataPath("smollm2-random.leank.safetensors"), {30, 3, 64});
  ASSERT_TRUE(smol.ok()) << smol.status();
  EXPECT_EQ(smol->align, 16);
  EXPECT_NEAR(smol->KeptFraction(), 0.3, 1e-9);
}

}  // namespace
}  // namespace leank::cache
