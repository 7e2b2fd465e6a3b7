#pragma once
// Added tokens (special or not) are found in the text before pre-tokenization:
// leftmost-longest matching over a byte trie, as HF's AddedVocabulary does.

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

namespace leank::tokenizer_internal {

struct AddedToken {
  int32_t id;
  std::string content;
  bool special = false;
  bool lstrip = false;      // the match swallows whitespace on its left
  bool rstrip = false;      // ... and on its right
  bool normalized = false;  // matched in the normalized text, else in the raw text
};

// A piece of text after splitting on added tokens: either a token or plain text.
struct Split {
  std::string_view text;
  int32_t token_id;  // -1 for plain text
};

class AddedTokenMatcher {
 public:
  void Add(std::string_view pattern, const AddedToken& token);
  bool empty() const { return nodes_.size() <= 1; }
  // Splits `text` into plain-text pieces and token pieces, left to right.
  void SplitText(std::string_view text, std::vector<Split>* out) const;

 private:
  struct Node {
    int32_t child[256];
    int32_t token = -1;  // index into tokens_ of a token ending here
    Node() { std::fill(std::begin(child), std::end(child), -1); }
  };
  std::vector<Node> nodes_ = std::vector<Node>(1);
  std::vector<AddedToken> tokens_;
};

}  // namespace leank::tokenizer_internal
