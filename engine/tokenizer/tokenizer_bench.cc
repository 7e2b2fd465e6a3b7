// Encode throughput: leank_tokenizer_bench TOKENIZER_JSON TEXT_FILE [REPEATS [IDS_OUT]]
// IDS_OUT receives the ids (add_special_tokens=true), one per line, to diff with HF.
// Prints MB/s for a cold pass (empty word cache) and warm passes, and decode speed.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "engine/tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s TOKENIZER_JSON TEXT_FILE [REPEATS]\n", argv[0]);
    return 2;
  }
  auto tok = leank::Tokenizer::Load(argv[1]);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", tok.status().ToString().c_str());
    return 1;
  }
  std::ifstream in(argv[2], std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string text = buf.str();
  const int repeats = argc > 3 ? std::atoi(argv[3]) : 5;
  using Clock = std::chrono::steady_clock;
  size_t n_ids = 0;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    auto ids = (*tok)->Encode(text, false);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!ids.ok()) {
      std::fprintf(stderr, "%s\n", ids.status().ToString().c_str());
      return 1;
    }
    n_ids = ids->size();
    std::printf("encode pass %d (%s): %.2f MB in %.3f s = %.1f MB/s, %zu tokens\n", r,
                r == 0 ? "cold cache" : "warm cache", text.size() / 1e6, s, text.size() / 1e6 / s,
                n_ids);
    if (r + 1 == repeats) {
      const auto t1 = Clock::now();
      const std::string back = (*tok)->Decode(*ids, false);
      const double ds = std::chrono::duration<double>(Clock::now() - t1).count();
      std::printf("decode: %.1f MB/s, round trip %s\n", back.size() / 1e6 / ds,
                  back == text ? "exact" : "DIFFERS (normalizer?)");
    }
  }
  if (argc > 4) {
    auto ids = (*tok)->Encode(text, true);
    std::FILE* f = std::fopen(argv[4], "w");
    if (f == nullptr || !ids.ok()) return 1;
    for (int32_t id : *ids) std::fprintf(f, "%d\n", id);
    std::fclose(f);
  }
  return 0;
}
