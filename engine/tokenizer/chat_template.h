#pragma once
// Chat templates of the supported model families, recognised from the
// chat_template string in tokenizer_config.json, or from chat_template.jinja beside
// it (newer transformers write the template there; it takes priority, as in
// transformers). Only known families are
// rendered; an unknown template is an error, never a guess.
//
// Supported (plain system/user/assistant messages; no tools):
//   ChatML (SmolLM2, Qwen2/2.5): optional default system prompt taken from the
//     template's literal "<|im_start|>system\n...<|im_end|>" when the first
//     message is not a system message.
//   Llama-3 (8B-Instruct): bos + headers, contents trimmed.
//   Llama-3.1/3.2/3.3: also the always-present system header with
//     "Cutting Knowledge Date: ..." and "Today Date: ...".

#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

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

  // Reads tokenizer_config.json ("chat_template", and bos_token for Llama-3); a
  // chat_template.jinja in the same folder replaces its "chat_template".
  static absl::StatusOr<ChatTemplate> Load(const std::filesystem::path& tokenizer_config);
  // `jinja`: the template text of a chat_template.jinja, used instead of the config's.
  static absl::StatusOr<ChatTemplate> FromTokenizerConfigJson(
      std::string_view json_text, std::optional<std::string> jinja = std::nullopt);

  // Renders the conversation; InvalidArgument for an empty list or unknown role.
  // With add_generation_prompt the assistant header is appended.
  absl::StatusOr<std::string> Render(std::span<const ChatMessage> messages,
                                     bool add_generation_prompt = true) const;
  Family family() const { return family_; }
  // The default system prompt the family's template inserts when none is given ("" if none).
  const std::string& default_system() const { return default_system_; }
  // Llama-3.1-style templates (a "Cutting Knowledge Date:" system header): the
  // "Today Date:" value, by default the template's date_string literal, or, when
  // the template calls strftime_now, today's local date ("%d %b %Y") at the time of
  // each call (as transformers evaluates strftime_now on every render), until
  // set_date_string pins it.
  std::string date_string() const;
  void set_date_string(std::string date) {
    date_string_ = std::move(date);
    date_from_clock_ = false;
  }

 private:
  Family family_ = Family::kChatML;
  std::string bos_token_;
  std::string default_system_;
  bool system_header_always_ = false;  // Llama-3.1: the system header is always written
  std::string knowledge_date_;
  std::string date_string_;
  bool date_from_clock_ = false;  // strftime_now: today's date at each Render
};

}  // namespace leank
