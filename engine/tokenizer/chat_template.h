#pragma once
// Chat templates of the supported model families, recognised from the
// chat_template string in tokenizer_config.json. Only known families are
// rendered; an unknown template is an error, never a guess.

#include <filesystem>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace leank {

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant"
  std::string content;
};

class ChatTemplate {
 public:
  enum class Family {
    kChatML,  // <|im_start|>role\n...<|im_end|>\n (SmolLM2, Qwen2)
    kLlama3,  // <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
  };

  // Reads tokenizer_config.json ("chat_template", and bos_token for Llama-3).
  static absl::StatusOr<ChatTemplate> Load(const std::filesystem::path& tokenizer_config);
  static absl::StatusOr<ChatTemplate> FromTokenizerConfigJson(std::string_view json_text);

  // Renders the conversation; InvalidArgument for an empty list or unknown role.
  // With add_generation_prompt the assistant header is appended.
  absl::StatusOr<std::string> Render(std::span<const ChatMessage> messages,
                                     bool add_generation_prompt = true) const;
  Family family() const { return family_; }
  // The default system prompt the family's template inserts when none is given ("" if none).
  const std::string& default_system() const { return default_system_; }

 private:
  Family family_ = Family::kChatML;
  std::string bos_token_;
  std::string default_system_;
};

}  // namespace leank
