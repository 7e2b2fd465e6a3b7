#pragma once
// Helpers of the engine/model tests: temporary folders and hand-made safetensors bytes.

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace leank::test_util {

// A fresh folder under the system temp dir, removed with its contents.
class TempDir {
 public:
  TempDir() {
    std::string templ = (std::filesystem::temp_directory_path() / "leank_model_XXXXXX").string();
    char* made = ::mkdtemp(templ.data());
    if (made == nullptr) ADD_FAILURE() << "mkdtemp failed";
    path_ = templ;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline void WriteBytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// A safetensors file from a header text and data bytes, with the header length as given
// (or the true one when `header_len` < 0): lets tests lie.
inline std::string SafetensorsBytes(const std::string& header, const std::string& data,
                                    int64_t header_len = -1) {
  uint64_t n = header_len < 0 ? header.size() : static_cast<uint64_t>(header_len);
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

// `n` random non-zero-ish floats with a fixed seed.
inline std::vector<float> RandomFloats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

// Checks that a status has `code` and that its message contains every piece of `parts`.
#define EXPECT_STATUS(expr, status_code, ...)                                \
  do {                                                                       \
    const absl::Status _s = (expr);                                          \
    EXPECT_EQ(_s.code(), status_code) << _s;                                 \
    for (const std::string& _part : std::vector<std::string>{__VA_ARGS__}) { \
      EXPECT_NE(std::string(_s.message()).find(_part), std::string::npos)    \
          << "message lacks '" << _part << "': " << _s.message();            \
    }                                                                        \
  } while (0)

}  // namespace leank::test_util
