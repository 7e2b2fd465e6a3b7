// NFC: canonical decomposition, canonical ordering, canonical composition
// (Unicode Standard Annex #15), with Hangul syllables handled algorithmically.

#include "unicode.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "utf8_internal.h"

namespace leank::tokenizer_internal {
namespace {

struct CccEntry {
  char32_t cp;
  uint8_t ccc;
};
struct DecompEntry {
  char32_t cp, first, second;  // second == 0 for a singleton decomposition
};
struct ComposeEntry {
  char32_t first, second, composite;
};

#include "unicode_tables.inc"

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr int kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount;
constexpr int kSCount = kLCount * kNCount;

uint8_t Ccc(char32_t c) {
  if (c < 0x300) return 0;
  auto it = std::lower_bound(std::begin(kCcc), std::end(kCcc), c,
                             [](const CccEntry& e, char32_t v) { return e.cp < v; });
  return it != std::end(kCcc) && it->cp == c ? it->ccc : 0;
}

const DecompEntry* FindDecomp(char32_t c) {
  if (c < 0xC0) return nullptr;
  auto it = std::lower_bound(std::begin(kDecomp), std::end(kDecomp), c,
                             [](const DecompEntry& e, char32_t v) { return e.cp < v; });
  return it != std::end(kDecomp) && it->cp == c ? &*it : nullptr;
}

void Decompose(char32_t c, std::vector<char32_t>* out) {
  if (c >= kSBase && c < kSBase + kSCount) {
    const int s = static_cast<int>(c - kSBase);
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out->push_back(kTBase + s % kTCount);
    return;
  }
  const DecompEntry* d = FindDecomp(c);
  if (d == nullptr) {
    out->push_back(c);
    return;
  }
  Decompose(d->first, out);
  if (d->second != 0) Decompose(d->second, out);
}

// Returns the primary composite of (a, b), or 0 when there is none.
char32_t Compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  const ComposeEntry key{a, b, 0};
  auto it = std::lower_bound(std::begin(kCompose), std::end(kCompose), key,
                             [](const ComposeEntry& x, const ComposeEntry& y) {
                               return x.first != y.first ? x.first < y.first : x.second < y.second;
                             });
  return it != std::end(kCompose) && it->first == a && it->second == b ? it->composite : 0;
}

// Code points whose NFC quick-check value is not Yes: they never appear in
// NFC (singletons, exclusions) or may combine with what precedes them.
class QuickCheck {
 public:
  QuickCheck() : not_yes_(0x110000) {
    for (const ComposeEntry& e : kCompose) not_yes_[e.second] = true;
    std::vector<bool> composite(0x110000);
    for (const ComposeEntry& e : kCompose) composite[e.composite] = true;
    for (const DecompEntry& e : kDecomp) {
      if (!composite[e.cp]) not_yes_[e.cp] = true;
    }
    for (char32_t c = kVBase; c < kVBase + kVCount; ++c) not_yes_[c] = true;
    for (char32_t c = kTBase + 1; c < kTBase + kTCount; ++c) not_yes_[c] = true;
  }
  bool NotYes(char32_t c) const { return not_yes_[c]; }

 private:
  std::vector<bool> not_yes_;
};

// True when `text` is certainly NFC already (the common case), so the full
// algorithm can be skipped.
bool IsNfcQuick(std::string_view text) {
  static const QuickCheck* qc = new QuickCheck();
  int last_ccc = 0;
  for (size_t i = 0; i < text.size();) {
    if (static_cast<unsigned char>(text[i]) < 0x80) {
      last_ccc = 0;
      ++i;
      continue;
    }
    char32_t c = 0;
    const size_t n = DecodeUtf8(text, i, &c);
    if (n == 0) return false;
    const int ccc = Ccc(c);
    if ((ccc != 0 && last_ccc > ccc) || qc->NotYes(c)) return false;
    last_ccc = ccc;
    i += n;
  }
  return true;
}

}  // namespace

std::string NormalizeNfc(std::string_view text) {
  if (IsNfcQuick(text)) return std::string(text);
  std::vector<char32_t> cps;
  cps.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    char32_t c = 0;
    const size_t n = DecodeUtf8(text, i, &c);
    if (n == 0) {  // callers validate first; keep going rather than loop forever
      ++i;
      continue;
    }
    Decompose(c, &cps);
    i += n;
  }
  // Canonical ordering: stable sort of each run of non-starters by class.
  for (size_t i = 0; i < cps.size();) {
    if (Ccc(cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && Ccc(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + i, cps.begin() + j,
                     [](char32_t a, char32_t b) { return Ccc(a) < Ccc(b); });
    i = j;
  }
  // Canonical composition.
  std::vector<char32_t> out;
  out.reserve(cps.size());
  int starter = -1;  // index in `out` of the last starter
  int last_ccc = -1;
  for (char32_t c : cps) {
    const int ccc = Ccc(c);
    if (starter >= 0) {
      const bool blocked = last_ccc != -1 && (last_ccc == 0 || last_ccc >= ccc);
      if (!blocked) {
        const char32_t composite = Compose(out[starter], c);
        if (composite != 0) {
          out[starter] = composite;
          continue;
        }
      }
    }
    if (ccc == 0) {
      starter = static_cast<int>(out.size());
      last_ccc = -1;
    } else {
      last_ccc = ccc;
    }
    out.push_back(c);
  }
  std::string result;
  result.reserve(text.size());
  for (char32_t c : out) AppendUtf8(c, &result);
  return result;
}

bool IsUnicodeWhitespace(char32_t c) {
  return (c >= 0x9 && c <= 0xD) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

}  // namespace leank::tokenizer_internal
