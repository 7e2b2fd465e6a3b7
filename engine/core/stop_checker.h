#pragma once
// Incremental detokenization with stop strings: text is released to the client
// only once it can no longer turn out to be the start of a stop string, and
// only as complete UTF-8.

#include <optional>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"

namespace leank {

class StopChecker {
 public:
  StopChecker(const Tokenizer& tokenizer, std::vector<std::string> stop, bool include_stop);

  struct Result {
    std::string text;      // newly released text
    bool stopped = false;  // a stop string matched (text is cut there)
  };
  // Adds a generated token. `check_stops` is false before min_tokens.
  Result Push(int32_t token, bool check_stops);
  // Releases what is held back (at the end of generation).
  std::string Flush();

 private:
  std::vector<std::string> stop_;
  bool include_stop_;
  IncrementalDecoder decoder_;
  std::string text_;     // complete UTF-8 decoded so far
  size_t released_ = 0;  // bytes of text_ already released
  bool done_ = false;
};

}  // namespace leank
