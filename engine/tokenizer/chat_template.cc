// Chat templates are recognised, not interpreted: the template text decides the
// family and its constants (default system prompt, knowledge/date lines), and
// Render reproduces what the family's Jinja template produces for plain
// system/user/assistant messages (no tools).

#include "chat_template.h"

#include <ctime>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "nlohmann/json.hpp"
#include "unicode.h"
#include "utf8_internal.h"

namespace leank {
namespace {

using Json = nlohmann::json;

// Jinja's `trim` is Python's str.strip(): Unicode whitespace plus U+001C..U+001F.
bool PythonIsSpace(char32_t c) {
  return tokenizer_internal::IsUnicodeWhitespace(c) || (c >= 0x1C && c <= 0x1F);
}

std::string PythonStrip(std::string_view s) {
  size_t begin = 0;
  while (begin < s.size()) {
    char32_t c = 0;
    const size_t n = tokenizer_internal::DecodeUtf8(s, begin, &c);
    if (n == 0 || !PythonIsSpace(c)) break;
    begin += n;
  }
  size_t end = s.size();
  while (end > begin) {
    size_t b = end - 1;
    while (b > begin && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
    char32_t c = 0;
    if (tokenizer_internal::DecodeUtf8(s, b, &c) == 0 || !PythonIsSpace(c)) break;
    end = b;
  }
  return std::string(s.substr(begin, end - begin));
}

// Undoes the escapes a Jinja string literal may use in these templates.
std::string UnescapeJinja(std::string_view s) {
  return absl::StrReplaceAll(absl::string_view(s.data(), s.size()),
                             {{"\\n", "\n"}, {"\\t", "\t"}, {"\\'", "'"}, {"\\\"", "\""}});
}

// A constant written after `marker` up to `terminator` inside one string
// literal: nullopt when absent or when the text there is an expression
// (it contains a quote, i.e. the literal ended).
std::optional<std::string> LiteralAfter(std::string_view tmpl, std::string_view marker,
                                        std::string_view terminator) {
  for (size_t pos = tmpl.find(marker); pos != std::string_view::npos;
       pos = tmpl.find(marker, pos + 1)) {
    const size_t begin = pos + marker.size();
    const size_t end = tmpl.find(terminator, begin);
    if (end == std::string_view::npos) continue;
    const std::string_view body = tmpl.substr(begin, end - begin);
    if (body.find_first_of("'\"") != std::string_view::npos) continue;
    return UnescapeJinja(body);
  }
  return std::nullopt;
}

// The newline right after `<|im_start|>system` or a knowledge-date line may be
// a real newline or an escaped one.
std::optional<std::string> LiteralAfterEither(std::string_view tmpl, std::string_view prefix,
                                              std::string_view terminator) {
  for (const char* nl : {"\\n", "\n"}) {
    if (auto v = LiteralAfter(tmpl, std::string(prefix) + nl, terminator)) return v;
  }
  return std::nullopt;
}

// Values of the wrong JSON type are treated as absent or refused; never a json exception.
std::string BosFrom(const Json& config) {
  const auto bos = config.find("bos_token");
  if (bos == config.end()) return "";
  if (bos->is_string()) return bos->get<std::string>();
  if (bos->is_object()) {  // an AddedToken dict: {"content": "<s>", ...}
    const auto content = bos->find("content");
    if (content != bos->end() && content->is_string()) return content->get<std::string>();
  }
  return "";
}

absl::StatusOr<std::string> TemplateFrom(const Json& config) {
  const auto t = config.find("chat_template");
  if (t != config.end() && t->is_string()) return t->get<std::string>();
  if (t != config.end() && t->is_array()) {  // [{"name": ..., "template": ...}]: the "default" one
    for (size_t i = 0; i < t->size(); ++i) {
      const Json& e = (*t)[i];
      const auto name = e.is_object() ? e.find("name") : e.end();
      const auto text = e.is_object() ? e.find("template") : e.end();
      if (!e.is_object() || name == e.end() || !name->is_string() || text == e.end() ||
          !text->is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat("tokenizer_config.json: chat_template[", i,
                         "] is not an object with string 'name' and 'template'"));
      }
      if (name->get<std::string>() == "default") return text->get<std::string>();
    }
    return absl::InvalidArgumentError(
        "tokenizer_config.json: chat_template is a list of named templates without a "
        "'default' entry");
  }
  if (t != config.end() && !t->is_null()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer_config.json: chat_template must be a string or a list of "
                     "{name, template}, got ",
                     t->type_name()));
  }
  return absl::InvalidArgumentError(
      "tokenizer_config.json: no chat_template (string, or a list with a 'default' entry)");
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::FromTokenizerConfigJson(
    std::string_view json_text, std::optional<std::string> jinja) {
  const Json config = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError("tokenizer_config.json: not a JSON object");
  }
  auto tmpl_or = jinja ? absl::StatusOr<std::string>(*std::move(jinja)) : TemplateFrom(config);
  if (!tmpl_or.ok()) return tmpl_or.status();
  const std::string& tmpl = *tmpl_or;
  ChatTemplate ct;
  ct.bos_token_ = BosFrom(config);
  if (tmpl.find("<|im_start|>") != std::string::npos) {
    // Variants whose output differs from plain ChatML are refused, not approximated.
    for (const char* feature : {"<think>", "reasoning_content", "|trim", "| trim"}) {
      if (tmpl.find(feature) != std::string::npos) {
        return absl::UnimplementedError(
            absl::StrCat("chat template: ChatML variant using '", feature, "' is not supported"));
      }
    }
    ct.family_ = Family::kChatML;
    ct.default_system_ = LiteralAfterEither(tmpl, "<|im_start|>system", "<|im_end|>").value_or("");
    return ct;
  }
  if (tmpl.find("<|start_header_id|>") != std::string::npos) {
    ct.family_ = Family::kLlama3;
    if (ct.bos_token_.empty()) ct.bos_token_ = "<|begin_of_text|>";
    if (tmpl.find("Cutting Knowledge Date:") != std::string::npos) {
      auto knowledge = LiteralAfter(tmpl, "Cutting Knowledge Date: ", "\\n");
      if (!knowledge) knowledge = LiteralAfter(tmpl, "Cutting Knowledge Date: ", "\n");
      auto date = LiteralAfter(tmpl, "set date_string = \"", "\"");
      if (!knowledge || !date) {
        return absl::UnimplementedError(
            "chat template: Llama-3.1-style template without a literal knowledge date and "
            "default date_string is not supported");
      }
      ct.knowledge_date_ = *knowledge;
      ct.date_string_ = *date;
      // transformers defines strftime_now, so such templates print today's date,
      // read when each conversation is rendered (not when the template loads: a
      // server running past midnight must not keep yesterday's date).
      ct.date_from_clock_ = tmpl.find("strftime_now") != std::string::npos;
      ct.system_header_always_ = true;
    }
    return ct;
  }
  return absl::InvalidArgumentError(
      "unknown chat template: neither ChatML (<|im_start|>) nor Llama-3 (<|start_header_id|>)");
}

std::string ChatTemplate::date_string() const {
  if (!date_from_clock_) return date_string_;
  char buf[32];
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  std::strftime(buf, sizeof(buf), "%d %b %Y", &tm);
  return buf;
}

absl::StatusOr<ChatTemplate> ChatTemplate::Load(const std::filesystem::path& tokenizer_config) {
  auto read = [](const std::filesystem::path& path) -> std::optional<std::string> {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::stringstream buf;
    buf << in.rdbuf();
    return buf.str();
  };
  const std::optional<std::string> config = read(tokenizer_config);
  if (!config) {
    return absl::NotFoundError(absl::StrCat("cannot open ", tokenizer_config.string()));
  }
  // transformers reads chat_template.jinja first when it exists (and writes the
  // template only there), so a template in the config beside it is not the model's.
  const std::filesystem::path jinja_path = tokenizer_config.parent_path() / "chat_template.jinja";
  std::optional<std::string> jinja;
  std::error_code ec;
  if (std::filesystem::exists(jinja_path, ec)) {
    jinja = read(jinja_path);
    if (!jinja) return absl::NotFoundError(absl::StrCat("cannot open ", jinja_path.string()));
  }
  const bool from_jinja = jinja.has_value();
  auto ct = FromTokenizerConfigJson(*config, std::move(jinja));
  if (!ct.ok()) {
    return absl::Status(ct.status().code(), absl::StrCat(tokenizer_config.string(),
                                                         from_jinja ? " + chat_template.jinja" : "",
                                                         ": ", ct.status().message()));
  }
  return ct;
}

absl::StatusOr<std::string> ChatTemplate::Render(std::span<const ChatMessage> messages,
                                                 bool add_generation_prompt) const {
  if (messages.empty()) return absl::InvalidArgumentError("chat: no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat("chat: messages[", i, "].role '", role,
                                                     "' is not system, user or assistant"));
    }
  }
  std::string out;
  if (family_ == Family::kChatML) {
    if (messages[0].role != "system" && !default_system_.empty()) {
      absl::StrAppend(&out, "<|im_start|>system\n", default_system_, "<|im_end|>\n");
    }
    for (const ChatMessage& m : messages) {
      absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
    }
    if (add_generation_prompt) out += "<|im_start|>assistant\n";
    return out;
  }
  // Llama-3: contents are trimmed by the template (`| trim`).
  out = bos_token_;
  size_t first = 0;
  if (system_header_always_) {
    std::string system;
    if (messages[0].role == "system") {
      system = PythonStrip(messages[0].content);
      first = 1;
    }
    absl::StrAppend(&out, "<|start_header_id|>system<|end_header_id|>\n\n",
                    "Cutting Knowledge Date: ", knowledge_date_, "\n",
                    "Today Date: ", date_string(), "\n\n", system, "<|eot_id|>");
  }
  for (size_t i = first; i < messages.size(); ++i) {
    absl::StrAppend(&out, "<|start_header_id|>", messages[i].role, "<|end_header_id|>\n\n",
                    PythonStrip(messages[i].content), "<|eot_id|>");
  }
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

}  // namespace leank
