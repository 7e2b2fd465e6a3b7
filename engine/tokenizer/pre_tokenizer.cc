#include "pre_tokenizer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace leank::tokenizer_internal {
namespace {

using Json = nlohmann::json;

// GPT-2's pattern, which ByteLevel(use_regex=true) uses.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct Segment {
  size_t begin, end;
  bool is_match;
};

// Splits `piece` at the regex matches with HF's SplitDelimiterBehavior semantics.
void SplitPiece(std::string_view piece, const Regex& regex, Behavior behavior, bool invert,
                std::vector<std::string_view>* out) {
  thread_local std::vector<std::pair<size_t, size_t>> matches;
  matches.clear();
  regex.FindAll(piece, &matches);
  std::vector<Segment> segs;
  size_t pos = 0;
  for (auto [b, e] : matches) {
    if (b > pos) segs.push_back({pos, b, invert});
    segs.push_back({b, e, !invert});
    pos = e;
  }
  if (pos < piece.size()) segs.push_back({pos, piece.size(), invert});

  std::vector<Segment> merged;
  bool previous_match = false;
  switch (behavior) {
    case Behavior::kIsolated:
      merged = std::move(segs);
      break;
    case Behavior::kRemoved:
      for (const Segment& s : segs) {
        if (!s.is_match) merged.push_back(s);
      }
      break;
    case Behavior::kMergedWithPrevious:
      for (const Segment& s : segs) {
        if (s.is_match && !previous_match && !merged.empty()) {
          merged.back().end = s.end;
        } else {
          merged.push_back(s);
        }
        previous_match = s.is_match;
      }
      break;
    case Behavior::kMergedWithNext:
      for (size_t i = segs.size(); i-- > 0;) {
        const Segment& s = segs[i];
        if (s.is_match && !previous_match && !merged.empty()) {
          merged.back().begin = s.begin;
        } else {
          merged.push_back(s);
        }
        previous_match = s.is_match;
      }
      std::reverse(merged.begin(), merged.end());
      break;
    case Behavior::kContiguous:
      for (const Segment& s : segs) {
        if (s.is_match == previous_match && !merged.empty()) {
          merged.back().end = s.end;
        } else {
          merged.push_back(s);
        }
        previous_match = s.is_match;
      }
      break;
  }
  for (const Segment& s : merged) {
    if (s.end > s.begin) out->push_back(piece.substr(s.begin, s.end - s.begin));
  }
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<Regex> regex, Behavior behavior, bool invert)
      : regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}
  void Apply(Pieces* pieces) const override {
    std::vector<std::string_view> out;
    out.reserve(pieces->views.size() * 2);
    for (std::string_view p : pieces->views) SplitPiece(p, *regex_, behavior_, invert_, &out);
    pieces->views = std::move(out);
  }

 private:
  std::unique_ptr<Regex> regex_;
  Behavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  void Apply(Pieces* pieces) const override {
    if (add_prefix_space_) {
      // HF prepends the space to every piece that lacks one, not only the first.
      for (std::string_view& p : pieces->views) {
        if (!p.empty() && p.front() != ' ') {
          pieces->arena.push_back(std::string(" ").append(p));
          p = pieces->arena.back();
        }
      }
    }
    if (regex_ == nullptr) return;
    std::vector<std::string_view> out;
    out.reserve(pieces->views.size() * 2);
    for (std::string_view p : pieces->views) {
      SplitPiece(p, *regex_, Behavior::kIsolated, false, &out);
    }
    pieces->views = std::move(out);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;  // null when use_regex is false
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void Apply(Pieces* pieces) const override {
    for (const auto& step : steps_) step->Apply(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

absl::StatusOr<Behavior> ParseBehavior(const Json& spec) {
  const std::string b = spec.value("behavior", "Isolated");
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  return absl::InvalidArgumentError(
      absl::StrCat("pre_tokenizer Split: unknown behavior '", b, "'"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<PreTokenizer>> MakePreTokenizer(const Json& spec) {
  if (spec.is_null())
    return std::make_unique<SequencePreTokenizer>(std::vector<std::unique_ptr<PreTokenizer>>{});
  const std::string type = spec.value("type", "");
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const Json& sub : spec.at("pretokenizers")) {
      auto step = MakePreTokenizer(sub);
      if (!step.ok()) return step.status();
      steps.push_back(*std::move(step));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  if (type == "Split") {
    auto behavior = ParseBehavior(spec);
    if (!behavior.ok()) return behavior.status();
    const Json& pattern = spec.at("pattern");
    std::unique_ptr<Regex> regex;
    if (pattern.contains("Regex")) {
      auto r = Regex::Compile(pattern.at("Regex").get<std::string>());
      if (!r.ok()) return r.status();
      regex = *std::move(r);
    } else if (pattern.contains("String")) {
      regex = Regex::CompileLiteral(pattern.at("String").get<std::string>());
    } else {
      return absl::InvalidArgumentError("pre_tokenizer Split: pattern is neither Regex nor String");
    }
    return std::make_unique<SplitPreTokenizer>(std::move(regex), *behavior,
                                               spec.value("invert", false));
  }
  if (type == "ByteLevel") {
    std::unique_ptr<Regex> regex;
    if (spec.value("use_regex", true)) {
      auto r = Regex::Compile(kGpt2Pattern);
      if (!r.ok()) return r.status();
      regex = *std::move(r);
    }
    return std::make_unique<ByteLevelPreTokenizer>(spec.value("add_prefix_space", false),
                                                   std::move(regex));
  }
  if (type == "Digits") {
    // HF isolates each char::is_numeric char (categories Nd, Nl, No), or runs of them.
    const std::string numeric = Regex::NumericClass();
    auto r = Regex::Compile(spec.value("individual_digits", false) ? numeric : numeric + "+");
    if (!r.ok()) return r.status();
    return std::make_unique<SplitPreTokenizer>(*std::move(r), Behavior::kIsolated, false);
  }
  return absl::UnimplementedError(
      absl::StrCat("tokenizer.json: pre_tokenizer type '", type,
                   "' is not supported (supported: Sequence, Split, ByteLevel, Digits)"));
}

}  // namespace leank::tokenizer_internal
