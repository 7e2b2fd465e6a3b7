// Chat templates against strings rendered by transformers' Jinja renderer
// from the real template texts (tests/data/tokenizer/templates/).

#include "engine/tokenizer/chat_template.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <ctime>
#include <fstream>
#include <map>
#include <vector>

#include "test_util.h"

namespace leank {
namespace {

using testing::ReadJsonl;
using testing::TokenizerData;

nlohmann::json ReadJsonFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return nlohmann::json::parse(in);
}

std::filesystem::path ConfigOf(const std::string& name) {
  return TokenizerData() / "templates" / (name + ".tokenizer_config.json");
}

TEST(ChatTemplateTest, MatchesTransformersRendering) {
  const auto cases = ReadJsonl(TokenizerData() / "templates" / "chat.jsonl");
  std::map<std::string, int> per_template;
  for (const auto& c : cases) {
    const std::string name = c["template"];
    auto tmpl = ChatTemplate::Load(ConfigOf(name));
    ASSERT_TRUE(tmpl.ok()) << tmpl.status();
    std::vector<ChatMessage> messages;
    for (const auto& m : c["messages"]) messages.push_back({m["role"], m["content"]});
    auto text = tmpl->Render(messages, c["add_generation_prompt"].get<bool>());
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, c["text"].get<std::string>()) << name << " " << c["messages"].dump();
    ++per_template[name];
  }
  for (const char* name : {"smollm2", "qwen2.5", "llama3", "llama3.1"}) {
    EXPECT_GE(per_template[name], 10) << name;
  }
}

// Seeded random conversations (tools/make_chat_template_fixtures.py) rendered by
// transformers: whitespace of every kind, token look-alikes, middle and repeated
// system messages, empty and long contents. Where the template raises, or a role is
// not system/user/assistant (the template may render it; we refuse, see
// engine/tokenizer/README.md), Render must return InvalidArgument.
TEST(ChatTemplateTest, MatchesTransformersOnRandomConversations) {
  const auto cases = ReadJsonl(TokenizerData() / "templates" / "random_chat.jsonl");
  std::map<std::string, ChatTemplate> templates;
  std::map<std::string, int> compared;
  int refused = 0;
  for (const auto& c : cases) {
    const std::string name = c["template"];
    if (!templates.contains(name)) {
      auto t = ChatTemplate::Load(ConfigOf(name));
      ASSERT_TRUE(t.ok()) << t.status();
      templates.emplace(name, *std::move(t));
    }
    std::vector<ChatMessage> messages;
    bool plain = true;
    for (const auto& m : c["messages"]) {  // [role, content]
      messages.push_back({m[0], m[1]});
      const std::string& role = messages.back().role;
      plain = plain && (role == "system" || role == "user" || role == "assistant");
    }
    auto text = templates.at(name).Render(messages, c["gen"].get<bool>());
    // An empty conversation is refused too, though SmolLM2 and Llama-3 render one.
    if (!plain || messages.empty() || c.contains("error")) {
      EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument)
          << name << " " << c.dump() << "\nours: " << text.value_or("");
      ++refused;
      continue;
    }
    EXPECT_TRUE(text.ok()) << text.status() << " " << name << " " << c["messages"].dump();
    EXPECT_EQ(text.value_or(""), c["text"].get<std::string>())
        << name << " " << c["messages"].dump();
    ++compared[name];
  }
  for (const char* name : {"smollm2", "qwen2.5", "llama3", "llama3.1"}) {
    EXPECT_GE(compared[name], 130) << name;
  }
  EXPECT_GE(refused, 20);
}

TEST(ChatTemplateTest, FamiliesAndDefaultSystemPrompts) {
  auto smol = ChatTemplate::Load(ConfigOf("smollm2"));
  ASSERT_TRUE(smol.ok()) << smol.status();
  EXPECT_EQ(smol->family(), ChatTemplate::Family::kChatML);
  EXPECT_EQ(smol->default_system(),
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  auto qwen = ChatTemplate::Load(ConfigOf("qwen2.5"));
  ASSERT_TRUE(qwen.ok()) << qwen.status();
  EXPECT_EQ(qwen->default_system(),
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  auto llama = ChatTemplate::Load(ConfigOf("llama3.1"));
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ(llama->family(), ChatTemplate::Family::kLlama3);
  EXPECT_EQ(llama->default_system(), "");
  EXPECT_EQ(llama->date_string(), "26 Jul 2024");
  llama->set_date_string("01 Jan 2030");
  const ChatMessage user[] = {{"user", "hi"}};
  auto text = llama->Render(user);
  ASSERT_TRUE(text.ok());
  EXPECT_NE(text->find("Today Date: 01 Jan 2030\n"), std::string::npos) << *text;
}

TEST(ChatTemplateTest, ChatMlWithoutDefaultSystem) {
  auto t = ChatTemplate::FromTokenizerConfigJson(
      R"({"chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"})");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->default_system(), "");
  const ChatMessage msgs[] = {{"user", "a"}};
  EXPECT_EQ(*t->Render(msgs, true), "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, Errors) {
  auto unknown = ChatTemplate::FromTokenizerConfigJson(
      R"({"chat_template": "{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}"})");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("unknown chat template"), std::string::npos);
  EXPECT_FALSE(ChatTemplate::FromTokenizerConfigJson(R"({"bos_token": "<s>"})").ok());
  EXPECT_FALSE(ChatTemplate::FromTokenizerConfigJson("not json").ok());
  EXPECT_EQ(ChatTemplate::Load("/nonexistent/tokenizer_config.json").status().code(),
            absl::StatusCode::kNotFound);

  auto t = ChatTemplate::Load(ConfigOf("smollm2"));
  ASSERT_TRUE(t.ok());
  const ChatMessage tool[] = {{"user", "x"}, {"tool", "y"}};
  auto r = t->Render(tool);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("'tool'"), std::string::npos) << r.status();
  EXPECT_EQ(t->Render(std::span<const ChatMessage>()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Values of the wrong JSON type in tokenizer_config.json are a status, not a
// nlohmann::json exception (which aborted leank-generate and leank-server at start-up,
// even without --chat: the engine loads the template when it starts).
TEST(ChatTemplateTest, MalformedTokenizerConfigIsAStatus) {
  for (const char* config : {
           R"({"chat_template": ["x"]})",
           R"({"chat_template": [{"name": "default", "template": 7}]})",
           R"({"chat_template": [{"name": 1, "template": "<|im_start|>"}]})",
           R"({"chat_template": [{"name": "tool_use", "template": "<|im_start|>"}]})",
           R"({"chat_template": 42})",
           R"({"chat_template": {"default": "<|im_start|>"}})",
       }) {
    absl::StatusOr<ChatTemplate> t = absl::UnknownError("not run");
    EXPECT_NO_THROW(t = ChatTemplate::FromTokenizerConfigJson(config)) << config;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << config;
    EXPECT_NE(t.status().message().find("chat_template"), std::string::npos) << t.status();
  }
  // A bos_token that is neither a string nor an AddedToken object counts as absent
  // (Llama-3 then uses <|begin_of_text|>).
  for (const char* bos : {R"(5)", R"({"content": 5})", R"(["<s>"])"}) {
    const std::string config =
        std::string(R"({"bos_token": )") + bos + R"(, "chat_template": "<|start_header_id|>"})";
    absl::StatusOr<ChatTemplate> t = absl::UnknownError("not run");
    EXPECT_NO_THROW(t = ChatTemplate::FromTokenizerConfigJson(config)) << config;
    ASSERT_TRUE(t.ok()) << t.status();
    const ChatMessage msgs[] = {{"user", "hi"}};
    EXPECT_EQ(t->Render(msgs, false).value_or(""),
              "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>");
  }
  // The list form keeps working: the "default" entry, whatever its position.
  auto listed = ChatTemplate::FromTokenizerConfigJson(
      R"({"chat_template": [{"name": "rag", "template": "x"},
                            {"name": "default", "template": "<|im_start|>"}]})");
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->family(), ChatTemplate::Family::kChatML);
}

}  // namespace
}  // namespace leank

namespace leank {
namespace {

// Today's local date as the templates print it ("%d %b %Y").
std::string LocalDate() {
  char buf[32];
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  std::strftime(buf, sizeof(buf), "%d %b %Y", &tm);
  return std::string(buf);
}

// Llama-3.2-style templates call strftime_now: transformers renders today's date.
TEST(ChatTemplateTest, StrftimeNowTemplatesUseTodaysDate) {
  nlohmann::json config;
  config["bos_token"] = "<|begin_of_text|>";
  config["chat_template"] =
      "{{- bos_token }}{%- if not date_string is defined %}{%- if strftime_now is defined %}"
      "{%- set date_string = strftime_now(\"%d %b %Y\") %}{%- else %}"
      "{%- set date_string = \"26 Jul 2024\" %}{%- endif %}{%- endif %}"
      "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}"
      "{{- \"Cutting Knowledge Date: December 2023\\n\" }}"
      "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}";
  auto t = ChatTemplate::FromTokenizerConfigJson(config.dump());
  ASSERT_TRUE(t.ok()) << t.status();
  // The date is read at each render: the day just before or just after it (they differ
  // only across midnight), not the template's fallback.
  const ChatMessage msgs[] = {{"system", "  Be brief. "}, {"user", "Hi"}};
  const std::string before = LocalDate();
  const absl::StatusOr<std::string> text = t->Render(msgs, false);
  const std::string after = LocalDate();
  ASSERT_TRUE(text.ok()) << text.status();
  auto expected = [](const std::string& day) {
    return "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
           "Cutting Knowledge Date: December 2023\nToday Date: " +
           day + "\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>";
  };
  EXPECT_TRUE(*text == expected(before) || *text == expected(after))
      << *text << "\ntoday is '" << before << "' / '" << after << "'";
}

// transformers evaluates strftime_now on every render; the date used to be read
// once, when the template loaded, so a server running past midnight kept printing
// the day it started. Two POSIX time zones 26 hours apart (no tzdata needed) make
// "load" and "render" fall on different dates.
TEST(ChatTemplateTest, StrftimeNowDateIsReadAtEachRender) {
  const nlohmann::json llama = ReadJsonFile(ConfigOf("llama3.1"));
  nlohmann::json config = llama;
  std::string tmpl = llama["chat_template"];
  const std::string fixed = "{%- set date_string = \"26 Jul 2024\" %}";
  const size_t at = tmpl.find(fixed);
  ASSERT_NE(at, std::string::npos);
  tmpl.replace(at, fixed.size(),
               "{%- if strftime_now is defined %}"
               "{%- set date_string = strftime_now(\"%d %b %Y\") %}{%- else %}" +
                   fixed + "{%- endif %}");
  config["chat_template"] = tmpl;
  const char* old_tz = std::getenv("TZ");
  const std::string saved = old_tz ? old_tz : "";
  auto set_tz = [](const char* tz) {
    if (tz) {
      setenv("TZ", tz, 1);
    } else {
      unsetenv("TZ");
    }
    tzset();
  };
  set_tz("WEST+12");  // UTC-12
  auto t = ChatTemplate::FromTokenizerConfigJson(config.dump());
  ASSERT_TRUE(t.ok()) << t.status();
  const std::string at_load = LocalDate();
  set_tz("EAST-14");  // UTC+14
  const std::string before = LocalDate();
  const ChatMessage msgs[] = {{"user", "Hi"}};
  const std::string text = t->Render(msgs, false).value_or("");
  const std::string after = LocalDate();
  set_tz(old_tz ? saved.c_str() : nullptr);
  EXPECT_NE(at_load, before);
  const bool today = text.find("Today Date: " + before + "\n") != std::string::npos ||
                     text.find("Today Date: " + after + "\n") != std::string::npos;
  EXPECT_TRUE(today) << text << "\ntoday is " << before;
  // set_date_string pins it (as passing date_string to apply_chat_template does).
  t->set_date_string("01 Jan 2030");
  EXPECT_NE(t->Render(msgs, false).value_or("").find("Today Date: 01 Jan 2030\n"),
            std::string::npos);
}

// transformers (>= 4.50) writes the template to chat_template.jinja beside
// tokenizer_config.json and reads that file first; a model saved so has no
// "chat_template" key at all, and "no chat_template" was the answer.
TEST(ChatTemplateTest, ChatTemplateJinjaBesideTheConfigWins) {
  const nlohmann::json qwen = ReadJsonFile(ConfigOf("qwen2.5"));
  const nlohmann::json llama = ReadJsonFile(ConfigOf("llama3.1"));
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / "chat_template_jinja";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name, std::ios::binary) << text;
  };
  nlohmann::json config = qwen;
  config.erase("chat_template");
  write("tokenizer_config.json", config.dump());
  EXPECT_FALSE(ChatTemplate::Load(dir / "tokenizer_config.json").ok());
  write("chat_template.jinja", qwen["chat_template"].get<std::string>());
  auto from_file = ChatTemplate::Load(dir / "tokenizer_config.json");
  auto from_config = ChatTemplate::Load(ConfigOf("qwen2.5"));
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  ASSERT_TRUE(from_config.ok()) << from_config.status();
  EXPECT_EQ(from_file->family(), ChatTemplate::Family::kChatML);
  EXPECT_EQ(from_file->default_system(), from_config->default_system());
  EXPECT_NE(from_file->default_system(), "");
  const ChatMessage msgs[] = {{"user", "Hi"}};
  EXPECT_EQ(*from_file->Render(msgs), *from_config->Render(msgs));

  // Both present: the file's template is the model's (ChatML config, Llama-3.1 file).
  write("tokenizer_config.json", qwen.dump());
  write("chat_template.jinja", llama["chat_template"].get<std::string>());
  auto both = ChatTemplate::Load(dir / "tokenizer_config.json");
  ASSERT_TRUE(both.ok()) << both.status();
  EXPECT_EQ(both->family(), ChatTemplate::Family::kLlama3);

  write("chat_template.jinja", "{% for m in messages %}[INST] {{ m.content }}{% endfor %}");
  auto unknown = ChatTemplate::Load(dir / "tokenizer_config.json");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("chat_template.jinja: unknown chat template"),
            std::string::npos)
      << unknown.status();
}

}  // namespace
}  // namespace leank
