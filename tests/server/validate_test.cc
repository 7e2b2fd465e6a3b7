#include "server/validate.h"

#include <cmath>

#include "gtest/gtest.h"

namespace leank::server {
namespace {

ModelLimits Limits() { return {.vocab_size = 100, .max_model_len = 64, .has_chat_template = true}; }

v1::GenerateRequest Valid() {
  v1::GenerateRequest r;
  r.set_text("hello");
  r.set_max_tokens(8);
  return r;
}

void ExpectField(const v1::GenerateRequest& r, const std::string& field) {
  absl::Status s = ValidateGenerateRequest(r, Limits());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
  EXPECT_EQ(std::string(s.message()).rfind(field + ":", 0), 0u) << s.message();
}

TEST(ValidateGenerate, AcceptsAValidRequest) {
  EXPECT_TRUE(ValidateGenerateRequest(Valid(), Limits()).ok());
}

TEST(ValidateGenerate, NamesEachBadField) {
  v1::GenerateRequest r = Valid();
  r.clear_text();
  ExpectField(r, "input");
  r = Valid();
  r.set_text(std::string("a\xff", 2));
  ExpectField(r, "text");
  r = Valid();
  r.mutable_messages()->add_messages()->set_role("robot");
  ExpectField(r, "messages[0].role");
  r = Valid();
  r.mutable_token_ids()->add_ids(100);
  ExpectField(r, "token_ids[0]");
  r = Valid();
  r.set_temperature(std::nanf(""));
  ExpectField(r, "temperature");
  r = Valid();
  r.set_temperature(INFINITY);
  ExpectField(r, "temperature");
  // The upper bound is in the message (it said "must be a finite number >= 0, got 20000").
  r = Valid();
  r.set_temperature(2e4f);
  ExpectField(r, "temperature");
  EXPECT_NE(ValidateGenerateRequest(r, Limits()).message().find("10000"), std::string::npos);
  r = Valid();
  r.set_temperature(1e4f);
  EXPECT_TRUE(ValidateGenerateRequest(r, Limits()).ok());
  r = Valid();
  r.set_top_p(0);
  ExpectField(r, "top_p");
  r = Valid();
  r.set_top_k(-2);
  ExpectField(r, "top_k");
  r = Valid();
  r.set_min_p(2);
  ExpectField(r, "min_p");
  r = Valid();
  r.set_presence_penalty(-2.5f);
  ExpectField(r, "presence_penalty");
  r = Valid();
  r.set_max_tokens(64);
  ExpectField(r, "max_tokens");
  r = Valid();
  r.set_min_tokens(9);
  ExpectField(r, "min_tokens");
  r = Valid();
  r.add_stop(std::string(257, 'a'));
  ExpectField(r, "stop[0]");
  r = Valid();
  r.add_stop("ok");
  r.add_stop(std::string("\xc3", 1));
  ExpectField(r, "stop[1]");
  r = Valid();
  r.set_logprobs(21);
  ExpectField(r, "logprobs");
}

// vLLM's SamplingParams take top_k = -1 as "off" (it was their default), so vLLM
// clients send it; it was refused with "top_k: must be >= 0".
TEST(ValidateGenerate, TopKMinusOneIsOffAsInVllm) {
  v1::GenerateRequest r = Valid();
  r.set_top_k(-1);
  EXPECT_TRUE(ValidateGenerateRequest(r, Limits()).ok());
  absl::StatusOr<GenerationParams> p = ToGenerationParams(r, 10, Limits());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->sampling.top_k, 0);
  r.set_top_k(-2);
  ExpectField(r, "top_k");
}

TEST(ValidateGenerate, MessagesNeedAChatTemplate) {
  v1::GenerateRequest r = Valid();
  auto* m = r.mutable_messages()->add_messages();
  m->set_role("user");
  m->set_content("hi");
  ModelLimits l = Limits();
  EXPECT_TRUE(ValidateGenerateRequest(r, l).ok());
  l.has_chat_template = false;
  l.no_chat_template_reason = "unknown template";
  absl::Status s = ValidateGenerateRequest(r, l);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("unknown template"), absl::string_view::npos);
}

TEST(ToGenerationParams, FillsDefaultsAndChecksTheContext) {
  v1::GenerateRequest r;
  r.set_text("x");
  absl::StatusOr<GenerationParams> p = ToGenerationParams(r, 10, Limits());
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->max_tokens, 54);  // min(256, 64 - 10)
  EXPECT_EQ(p->sampling.temperature, 1.0f);
  EXPECT_EQ(p->logprobs, -1);
  EXPECT_FALSE(p->sampling.has_seed);

  r.set_max_tokens(50);
  r.set_temperature(0);
  r.set_seed(42);
  r.set_logprobs(0);
  r.add_stop("END");
  p = ToGenerationParams(r, 14, Limits());
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->sampling.greedy());
  EXPECT_TRUE(p->sampling.has_seed);
  EXPECT_EQ(p->sampling.seed, 42u);
  EXPECT_EQ(p->logprobs, 0);
  EXPECT_EQ(p->stop, std::vector<std::string>{"END"});

  p = ToGenerationParams(r, 15, Limits());  // 15 + 50 > 64
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(p.status().message()).rfind("max_tokens:", 0), 0u);
  p = ToGenerationParams(r, 64, Limits());
  EXPECT_EQ(std::string(p.status().message()).rfind("input:", 0), 0u);
}

// With max_tokens unset, min_tokens raises the default (vLLM: max_tokens defaults to
// the context left, so min_tokens 300 just works). It was refused with "min_tokens: must
// be <= max_tokens (256)", naming a max_tokens the client never sent.
TEST(ToGenerationParams, MinTokensAboveTheDefaultRaisesTheDefaultMaxTokens) {
  ModelLimits big = Limits();
  big.max_model_len = 1024;
  v1::GenerateRequest r;
  r.set_text("x");
  r.set_min_tokens(300);
  absl::StatusOr<GenerationParams> p = ToGenerationParams(r, 10, big);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->max_tokens, 300);
  EXPECT_EQ(p->min_tokens, 300);
  r.set_min_tokens(100);  // below the default: the default stays
  p = ToGenerationParams(r, 10, big);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->max_tokens, 256);
  // More than the context leaves: min_tokens is named, with the room there is.
  r.set_min_tokens(1015);
  p = ToGenerationParams(r, 10, big);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(p.status().message()).rfind("min_tokens:", 0), 0u) << p.status();
  EXPECT_NE(std::string(p.status().message()).find("1014"), std::string::npos) << p.status();
  // An explicit max_tokens is still the bound.
  r.set_min_tokens(300);
  r.set_max_tokens(200);
  EXPECT_EQ(ValidateGenerateRequest(r, big).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ToGenerationParams, ChecksTheKvCapacityWhenItIsTheTighterLimit) {
  ModelLimits l = Limits();  // context 64
  l.kv_capacity_tokens = 40;
  v1::GenerateRequest r;
  r.set_text("x");
  absl::StatusOr<GenerationParams> p = ToGenerationParams(r, 10, l);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->max_tokens, 30);  // min(256, 40 - 10): the default fits the pool
  r.set_max_tokens(31);          // 10 + 31 > 40, though < 64
  p = ToGenerationParams(r, 10, l);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(p.status().message()).rfind("max_tokens:", 0), 0u) << p.status();
  EXPECT_NE(std::string(p.status().message()).find("KV cache capacity of 40"), std::string::npos);
  r.set_max_tokens(30);
  EXPECT_TRUE(ToGenerationParams(r, 10, l).ok());
  p = ToGenerationParams(r, 40, l);  // the prompt alone fills the pool
  EXPECT_EQ(std::string(p.status().message()).rfind("input:", 0), 0u) << p.status();
  // A pool larger than the context changes nothing.
  l.kv_capacity_tokens = 1000;
  r.set_max_tokens(54);
  EXPECT_TRUE(ToGenerationParams(r, 10, l).ok());
  r.set_max_tokens(55);
  p = ToGenerationParams(r, 10, l);
  EXPECT_NE(std::string(p.status().message()).find("context length 64"), std::string::npos);
}

TEST(ParseRequest, KeepsBytesThatAreNotUtf8SoThatValidationNamesTheField) {
  v1::GenerateRequest sent = Valid();
  sent.set_request_id("r-1");
  sent.set_temperature(0.5f);
  sent.add_stop("ok");
  sent.add_stop("\xff");
  sent.add_stop_token_ids(7);
  sent.set_logprobs(0);
  std::string bytes;
  ASSERT_TRUE(sent.SerializeToString(&bytes));  // protobuf only logs the bad string
  v1::GenerateRequest strict;
  EXPECT_FALSE(strict.ParseFromString(bytes));  // what gRPC's own handler does
  v1::GenerateRequest got;
  ASSERT_TRUE(ParseRequest(bytes, &got).ok());
  EXPECT_EQ(got.SerializeAsString(), bytes);  // every field, presence included
  EXPECT_TRUE(got.has_temperature() && got.has_logprobs() && got.has_max_tokens());
  EXPECT_FALSE(got.has_top_p());
  ExpectField(got, "stop[1]");

  v1::GenerateRequest chat;
  auto* m = chat.mutable_messages()->add_messages();
  m->set_role("user");
  m->set_content("fine");
  m = chat.mutable_messages()->add_messages();
  m->set_role("assistant");
  m->set_content("\xc3(");
  ASSERT_TRUE(ParseRequest(chat.SerializeAsString(), &got).ok());
  EXPECT_EQ(got.messages().messages_size(), 2);
  ExpectField(got, "messages[1].content");

  // An empty oneof member is still the input that was sent.
  v1::GenerateRequest empty;
  empty.mutable_messages();
  empty.set_request_id("\xfe");
  ASSERT_TRUE(ParseRequest(empty.SerializeAsString(), &got).ok());
  EXPECT_EQ(got.input_case(), v1::GenerateRequest::kMessages);
  ExpectField(got, "request_id");

  // A newline in the id would forge a log line; tabs and DEL likewise refused.
  for (const char* id : {"a\nb", "a\tb", "a\x7f"}) {
    v1::GenerateRequest ctl;
    ctl.set_text("hi");
    ctl.set_request_id(id);
    const absl::Status s = ValidateGenerateRequest(ctl, Limits());
    EXPECT_EQ(std::string(s.message()).rfind("request_id: control character 0x", 0), 0u) << s;
  }
  v1::GenerateRequest fine;
  fine.set_text("hi");
  fine.set_request_id("caf\xc3\xa9-42 [x]");
  EXPECT_TRUE(ValidateGenerateRequest(fine, Limits()).ok());

  v1::TokenizeRequest tok;
  tok.set_text("a\x80");
  v1::TokenizeRequest tok_got;
  ASSERT_TRUE(ParseRequest(tok.SerializeAsString(), &tok_got).ok());
  EXPECT_EQ(std::string(ValidateTokenizeRequest(tok_got, Limits()).message()).rfind("text:", 0),
            0u);

  // Not a message at all: a length past the end, a bad wire type.
  for (const std::string& junk : {std::string("\x12\x7f"
                                              "abc"),
                                  std::string("\x17", 1)}) {
    absl::Status st = ParseRequest(junk, &got);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(std::string(st.message()).rfind("input:", 0), 0u) << st;
  }
  EXPECT_TRUE(ParseRequest("", &got).ok());  // all defaults: validation says "input:"
  ExpectField(got, "input");
}

TEST(ValidateDetokenize, ChecksTheVocabulary) {
  v1::DetokenizeRequest r;
  r.add_token_ids(5);
  EXPECT_TRUE(ValidateDetokenizeRequest(r, Limits()).ok());
  r.add_token_ids(100);
  EXPECT_EQ(std::string(ValidateDetokenizeRequest(r, Limits()).message()).rfind("token_ids[1]:", 0),
            0u);
}

}  // namespace
}  // namespace leank::server
