#pragma once
// Fixture paths and readers shared by the tokenizer tests.

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace leank::testing {

inline std::filesystem::path TokenizerData() {
  return std::filesystem::path(LEANK_TEST_DATA_DIR) / "tokenizer";
}

// SmolLM2's tokenizer.json is not committed: tools/convert_smollm2.py makes it.
inline std::filesystem::path SmolLm2Dir() {
  const char* cache = std::getenv("LEANK_CACHE_DIR");
  const std::filesystem::path root = cache != nullptr
                                         ? std::filesystem::path(cache)
                                         : std::filesystem::path(LEANK_SOURCE_DIR) / ".cache";
  return root / "models" / "smollm2-135m-instruct";
}

// A gtest parameter name for a fixture name ("llama3-mini" -> "llama3_mini").
template <typename Info>
std::string FixtureParamName(const Info& info) {
  std::string n = info.param;
  for (char& ch : n) {
    if (ch == '-') ch = '_';
  }
  return n;
}

inline std::vector<nlohmann::json> ReadJsonl(const std::filesystem::path& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  }
  return out;
}

}  // namespace leank::testing
