#include "engine/core/stop_checker.h"

#include <algorithm>

namespace leank {

StopChecker::StopChecker(const Tokenizer& tokenizer, std::vector<std::string> stop,
                         bool include_stop)
    : stop_(std::move(stop)), include_stop_(include_stop), decoder_(tokenizer) {}

StopChecker::Result StopChecker::Push(int32_t token, bool check_stops) {
  Result r;
  if (done_) return r;
  const size_t old_size = text_.size();
  text_ += decoder_.Push(token);
  if (check_stops && !stop_.empty()) {
    // Only a match completed by this token's text counts: it ends past old_size, so it
    // starts at most s.size() - 1 bytes before it, and not in released text. One that
    // ended earlier was either found then or came before min_tokens (ignored); starting
    // the search at the first such position would also hide a later, valid match.
    // Of the matches, the one that ends first wins (on a tie, the one that starts first):
    // the text stops where it would have had the token's text come byte by byte, so the
    // result does not depend on how the text is split into tokens. (The earliest start
    // did: "xabcd" in one token with stops {"abcd", "bc"} gave "x", in five tokens "xa".)
    size_t best = std::string::npos, best_end = std::string::npos;
    for (const auto& s : stop_) {
      const size_t from = std::max(released_, old_size >= s.size() ? old_size - s.size() + 1 : 0);
      const size_t pos = text_.find(s, from);
      if (pos == std::string::npos) continue;
      const size_t end = pos + s.size();
      if (end < best_end || (end == best_end && pos < best)) {
        best = pos;
        best_end = end;
      }
    }
    if (best != std::string::npos) {
      const size_t end = include_stop_ ? best_end : best;
      r.text = text_.substr(released_, end > released_ ? end - released_ : 0);
      released_ = std::max(released_, end);
      r.stopped = true;
      done_ = true;
      return r;
    }
  }
  // Hold back a tail that could still begin a stop string.
  size_t hold = 0;
  if (!stop_.empty()) {
    for (const auto& s : stop_) {
      for (size_t n = std::min(s.size() - 1, text_.size() - released_); n > hold; --n) {
        if (text_.compare(text_.size() - n, n, s, 0, n) == 0) {
          hold = n;
          break;
        }
      }
    }
  }
  size_t end = text_.size() - hold;
  // Never split a UTF-8 character.
  while (end > released_ && end < text_.size() &&
         (static_cast<unsigned char>(text_[end]) & 0xC0) == 0x80) {
    --end;
  }
  if (end > released_) {
    r.text = text_.substr(released_, end - released_);
    released_ = end;
  }
  return r;
}

std::string StopChecker::Flush() {
  if (done_) return "";
  done_ = true;
  text_ += decoder_.Flush();
  std::string rest = text_.substr(released_);
  released_ = text_.size();
  return rest;
}

}  // namespace leank
