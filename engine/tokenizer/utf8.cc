// UTF-8 validation, lossy decoding and the streaming helpers.

#include "tokenizer.h"
#include "utf8_internal.h"

namespace leank {
namespace tokenizer_internal {
namespace {

// For a lead byte: total sequence length (0 if it cannot start one) and the
// allowed range of the second byte (which excludes overlongs and surrogates).
struct LeadInfo {
  int len;
  unsigned char lo, hi;
};

LeadInfo Lead(unsigned char b) {
  if (b < 0x80) return {1, 0, 0};
  if (b < 0xC2) return {0, 0, 0};
  if (b < 0xE0) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b < 0xF0) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b < 0xF4) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

// Number of bytes from s[i] that form a valid (possibly incomplete) prefix of
// a UTF-8 sequence; `complete` says whether it is a whole character.
size_t ValidPrefix(std::string_view s, size_t i, bool* complete) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  const LeadInfo lead = Lead(b0);
  *complete = false;
  if (lead.len == 0) return 0;
  if (lead.len == 1) {
    *complete = true;
    return 1;
  }
  size_t n = 1;
  for (int k = 1; k < lead.len; ++k) {
    if (i + k >= s.size()) return n;
    const auto b = static_cast<unsigned char>(s[i + k]);
    const unsigned char lo = k == 1 ? lead.lo : 0x80;
    const unsigned char hi = k == 1 ? lead.hi : 0xBF;
    if (b < lo || b > hi) return n;
    ++n;
  }
  *complete = true;
  return n;
}

}  // namespace

size_t DecodeUtf8(std::string_view s, size_t i, char32_t* cp) {
  bool complete = false;
  const size_t n = ValidPrefix(s, i, &complete);
  if (!complete) return 0;
  const auto b0 = static_cast<unsigned char>(s[i]);
  char32_t c = n == 1 ? b0 : n == 2 ? (b0 & 0x1F) : n == 3 ? (b0 & 0x0F) : (b0 & 0x07);
  for (size_t k = 1; k < n; ++k) c = (c << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  *cp = c;
  return n;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string Utf8Lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    bool complete = false;
    const size_t n = ValidPrefix(s, i, &complete);
    if (complete) {
      out.append(s.data() + i, n);
      i += n;
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD for the maximal invalid subpart
      i += n == 0 ? 1 : n;
    }
  }
  return out;
}

size_t FirstInvalidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    bool complete = false;
    const size_t n = ValidPrefix(s, i, &complete);
    if (!complete) return i;
    i += n;
  }
  return std::string_view::npos;
}

}  // namespace tokenizer_internal

bool IsValidUtf8(std::string_view s) {
  return tokenizer_internal::FirstInvalidUtf8(s) == std::string_view::npos;
}

size_t CompleteUtf8Prefix(std::string_view s) {
  // Only the last 3 bytes can hold the start of a character still missing bytes.
  const size_t n = s.size();
  for (size_t j = n; j-- > 0 && n - j <= 3;) {
    const auto b = static_cast<unsigned char>(s[j]);
    if (b >= 0x80 && b <= 0xBF) continue;  // continuation byte: look further back
    bool complete = false;
    const size_t valid = tokenizer_internal::ValidPrefix(s, j, &complete);
    // An incomplete sequence that runs to the end of s may still be completed.
    if (!complete && valid > 0 && j + valid == n) return j;
    break;
  }
  return n;
}

std::string IncrementalDecoder::Push(int32_t id) {
  if (skip_special_ && tokenizer_.IsSpecial(id)) return {};
  const int32_t one[1] = {id};
  pending_ += tokenizer_.DecodeBytes(one, skip_special_);
  const size_t n = CompleteUtf8Prefix(pending_);
  std::string out = tokenizer_internal::Utf8Lossy(std::string_view(pending_).substr(0, n));
  pending_.erase(0, n);
  return out;
}

std::string IncrementalDecoder::Flush() {
  std::string out = tokenizer_internal::Utf8Lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace leank
