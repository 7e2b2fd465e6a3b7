#include "added_tokens.h"

#include <algorithm>

#include "unicode.h"
#include "utf8_internal.h"

namespace leank::tokenizer_internal {
namespace {

// Start of the run of whitespace that ends at `end` (not before `floor`).
size_t SkipWhitespaceLeft(std::string_view text, size_t end, size_t floor) {
  size_t pos = end;
  while (pos > floor) {
    size_t b = pos - 1;
    while (b > floor && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
    char32_t c = 0;
    if (DecodeUtf8(text, b, &c) == 0 || !IsUnicodeWhitespace(c)) break;
    pos = b;
  }
  return pos;
}

size_t SkipWhitespaceRight(std::string_view text, size_t begin) {
  size_t pos = begin;
  while (pos < text.size()) {
    char32_t c = 0;
    const size_t n = DecodeUtf8(text, pos, &c);
    if (n == 0 || !IsUnicodeWhitespace(c)) break;
    pos += n;
  }
  return pos;
}

}  // namespace

void AddedTokenMatcher::Add(std::string_view pattern, const AddedToken& token) {
  if (pattern.empty()) return;
  int32_t node = 0;
  for (unsigned char b : pattern) {
    if (nodes_[node].child[b] < 0) {
      nodes_[node].child[b] = static_cast<int32_t>(nodes_.size());
      nodes_.emplace_back();
    }
    node = nodes_[node].child[b];
  }
  nodes_[node].token = static_cast<int32_t>(tokens_.size());
  tokens_.push_back(token);
}

void AddedTokenMatcher::SplitText(std::string_view text, std::vector<Split>* out) const {
  if (empty()) {
    if (!text.empty()) out->push_back({text, -1});
    return;
  }
  size_t plain_begin = 0;  // start of the plain text not yet emitted
  size_t pos = 0;
  while (pos < text.size()) {
    // Longest token starting at pos.
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      node = nodes_[node].child[static_cast<unsigned char>(text[i])];
      if (node < 0) break;
      if (nodes_[node].token >= 0) {
        best = nodes_[node].token;
        best_end = i + 1;
      }
    }
    if (best < 0) {
      ++pos;
      continue;
    }
    const AddedToken& tok = tokens_[best];
    const size_t begin = tok.lstrip ? SkipWhitespaceLeft(text, pos, plain_begin) : pos;
    const size_t end = tok.rstrip ? SkipWhitespaceRight(text, best_end) : best_end;
    if (begin > plain_begin) out->push_back({text.substr(plain_begin, begin - plain_begin), -1});
    out->push_back({text.substr(begin, end - begin), tok.id});
    // As HF's AddedVocabulary::find_matches: the matches are those of the raw text (the
    // search goes on from the match's end, not from the end of what rstrip swallowed),
    // so an added token inside a stripped whitespace run (e.g. "\n") is still a token,
    // and plain text resumes after the last match's (stripped) end.
    plain_begin = end;
    pos = best_end;
  }
  if (plain_begin < text.size()) out->push_back({text.substr(plain_begin), -1});
}

}  // namespace leank::tokenizer_internal
