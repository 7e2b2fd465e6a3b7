#include "regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace leank::tokenizer_internal {
namespace {

pcre2_code* Code(void* p) { return static_cast<pcre2_code*>(p); }

// Oniguruma's (and so HF's) \s is the Unicode White_Space property; PCRE2's
// UCP \s also matches U+180E. Writing the set out keeps the two identical.
constexpr char kWhiteSpace[] =
    R"(\t-\r\x20\x85\xA0\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// Letters and numbers HF's regexes know but PCRE2's Unicode 14 tables leave
// unassigned (kExtraLetters, kExtraNumbers), and those Rust's char::is_numeric
// knows (kExtraNumeric, for the Digits pre-tokenizer).
#include "regex_props.inc"

// Rewrites \s and \S with the explicit White_Space set, and \p{L}, \p{N}
// (\P{L}, \P{N}) with PCRE2's property plus the code points above.
absl::StatusOr<std::string> TranslatePattern(std::string_view pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 4 < pattern.size() && (pattern[i + 1] == 'p' || pattern[i + 1] == 'P') &&
        pattern[i + 2] == '{' && (pattern[i + 3] == 'L' || pattern[i + 3] == 'N') &&
        pattern[i + 4] == '}') {
      const bool negated = pattern[i + 1] == 'P';
      const char prop = pattern[i + 3];
      const std::string set = absl::StrCat("\\p{", std::string(1, prop), "}",
                                           prop == 'L' ? kExtraLetters : kExtraNumbers);
      i += 4;
      if (in_class && negated) {
        return absl::UnimplementedError(absl::StrCat("pre-tokenizer regex '", std::string(pattern),
                                                     "': \\P{...} inside [...] is not supported"));
      }
      out += in_class ? set : absl::StrCat(negated ? "[^" : "[", set, "]");
      continue;
    }
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 's') {
        out += in_class ? std::string(kWhiteSpace) : absl::StrCat("[", kWhiteSpace, "]");
      } else if (e == 'S') {
        if (in_class) {
          return absl::UnimplementedError(absl::StrCat("pre-tokenizer regex '",
                                                       std::string(pattern),
                                                       "': \\S inside [...] is not supported"));
        }
        out += absl::StrCat("[^", kWhiteSpace, "]");
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

// Per-thread match state: one ovector pair is enough (we only need the whole
// match), and a JIT stack large enough for long runs of whitespace or letters.
struct MatchState {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_jit_stack* jit_stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  MatchState() {
    if (data == nullptr || context == nullptr) {
      std::fprintf(stderr, "leank tokenizer: out of memory creating PCRE2 match data\n");
      std::abort();
    }
    if (jit_stack != nullptr) pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~MatchState() {
    pcre2_match_data_free(data);
    pcre2_match_context_free(context);
    if (jit_stack != nullptr) pcre2_jit_stack_free(jit_stack);
  }
};

MatchState& State() {
  thread_local MatchState state;
  return state;
}

}  // namespace

std::string Regex::NumericClass() { return absl::StrCat("[\\p{N}", kExtraNumeric, "]"); }

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(std::string_view pattern) {
  auto translated = TranslatePattern(pattern);
  if (!translated.ok()) return translated.status();
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated->data()), translated->size(),
                    PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat("pre-tokenizer regex '", std::string(pattern),
                                                   "' does not compile at offset ", offset, ": ",
                                                   reinterpret_cast<const char*>(message)));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter on failure
  return std::unique_ptr<Regex>(new Regex(code));
}

std::unique_ptr<Regex> Regex::CompileLiteral(std::string_view literal) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(literal.data()), literal.size(),
                                   PCRE2_UTF | PCRE2_LITERAL, &error, &offset, nullptr);
  if (code == nullptr) {
    std::fprintf(stderr, "leank tokenizer: literal pattern failed to compile\n");
    std::abort();
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return std::unique_ptr<Regex>(new Regex(code));
}

Regex::~Regex() { pcre2_code_free(Code(code_)); }

void Regex::FindAll(std::string_view text, std::vector<std::pair<size_t, size_t>>* matches) const {
  MatchState& st = State();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  while (start < text.size()) {
    const int rc = pcre2_match(Code(code_), subject, text.size(), start, PCRE2_NO_UTF_CHECK,
                               st.data, st.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      // Only resource limits can get here (the text is valid UTF-8): a broken
      // invariant of the tokenizer, not a user error.
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      std::fprintf(stderr, "leank tokenizer: pcre2_match failed: %s\n",
                   reinterpret_cast<const char*>(message));
      std::abort();
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
    const size_t b = ov[0], e = ov[1];
    if (e == b) {  // empty match: skip one character, as Rust's find_iter does
      start = b + 1;
      while (start < text.size() && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) {
        ++start;
      }
      continue;
    }
    matches->emplace_back(b, e);
    start = e;
  }
}

}  // namespace leank::tokenizer_internal
