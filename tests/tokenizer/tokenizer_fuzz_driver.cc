// Test-only driver for the differential fuzz against HF `tokenizers`
// (tools/fuzz_tokenizer.py): reads JSONL {"text": ...} from stdin, writes one
// JSONL line per case with our encode (with and without special tokens) and
// decode (skip_special false/true) results, or the error status.
//
//   tokenizer_fuzz_driver TOKENIZER_JSON < cases.jsonl > ours.jsonl

#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " TOKENIZER_JSON < cases.jsonl\n";
    return 2;
  }
  auto tok = leank::Tokenizer::Load(argv[1]);
  if (!tok.ok()) {
    std::cerr << tok.status() << "\n";
    return 1;
  }
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    const auto c = nlohmann::json::parse(line);
    const std::string text = c["text"];
    nlohmann::json out;
    for (bool special : {false, true}) {
      const std::string key = special ? "ids_special" : "ids";
      auto ids = (*tok)->Encode(text, special);
      if (!ids.ok()) {
        out[key + "_error"] = std::string(ids.status().message());
        continue;
      }
      out[key] = *ids;
      out[key + "_decoded"] = (*tok)->Decode(*ids, false);
      out[key + "_decoded_skip"] = (*tok)->Decode(*ids, true);
    }
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
  return 0;
}
