#include "server/validate.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/tokenizer.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/dynamic_message.h"

namespace leank::server {
namespace {

namespace pb = google::protobuf;

void StringsAsBytes(pb::DescriptorProto* m) {
  for (pb::FieldDescriptorProto& f : *m->mutable_field()) {
    if (f.type() == pb::FieldDescriptorProto::TYPE_STRING) {
      f.set_type(pb::FieldDescriptorProto::TYPE_BYTES);
    }
  }
  for (pb::DescriptorProto& nested : *m->mutable_nested_type()) StringsAsBytes(&nested);
}

// Copies `file` (and what it imports) into `pool` with every string field made bytes.
bool AddLenientFile(const pb::FileDescriptor* file, pb::DescriptorPool* pool) {
  if (pool->FindFileByName(file->name()) != nullptr) return true;
  for (int i = 0; i < file->dependency_count(); ++i) {
    if (!AddLenientFile(file->dependency(i), pool)) return false;
  }
  pb::FileDescriptorProto proto;
  file->CopyTo(&proto);
  for (pb::DescriptorProto& m : *proto.mutable_message_type()) StringsAsBytes(&m);
  return pool->BuildFile(proto) != nullptr;
}

// `type` with the same field numbers, every string read as bytes (so not checked for
// UTF-8 when parsed); nullptr if it cannot be built.
const pb::Message* LenientPrototype(const pb::Descriptor* type) {
  static std::mutex mu;
  static pb::DescriptorPool* pool = new pb::DescriptorPool;
  static pb::DynamicMessageFactory* factory = new pb::DynamicMessageFactory(pool);
  std::lock_guard<std::mutex> lock(mu);
  if (pool->FindMessageTypeByName(type->full_name()) == nullptr &&
      !AddLenientFile(type->file(), pool)) {
    return nullptr;
  }
  const pb::Descriptor* lenient = pool->FindMessageTypeByName(type->full_name());
  return lenient == nullptr ? nullptr : factory->GetPrototype(lenient);
}

// Copies the fields set in `from` into `to`, matched by number (the two types differ
// only in string vs bytes). Reflection's setters take any bytes.
void CopyByNumber(const pb::Message& from, pb::Message* to) {
  const pb::Reflection* fr = from.GetReflection();
  const pb::Reflection* tr = to->GetReflection();
  std::vector<const pb::FieldDescriptor*> fields;
  fr->ListFields(from, &fields);
  for (const pb::FieldDescriptor* f : fields) {
    const pb::FieldDescriptor* t = to->GetDescriptor()->FindFieldByNumber(f->number());
    if (t == nullptr || t->cpp_type() != f->cpp_type()) continue;
    const bool rep = f->is_repeated();
    const int n = rep ? fr->FieldSize(from, f) : 1;
    for (int i = 0; i < n; ++i) {
      switch (f->cpp_type()) {
#define LEANK_COPY_FIELD(CPPTYPE, Name)                        \
  case pb::FieldDescriptor::CPPTYPE:                           \
    if (rep) {                                                 \
      tr->Add##Name(to, t, fr->GetRepeated##Name(from, f, i)); \
    } else {                                                   \
      tr->Set##Name(to, t, fr->Get##Name(from, f));            \
    }                                                          \
    break;
        LEANK_COPY_FIELD(CPPTYPE_INT32, Int32)
        LEANK_COPY_FIELD(CPPTYPE_INT64, Int64)
        LEANK_COPY_FIELD(CPPTYPE_UINT32, UInt32)
        LEANK_COPY_FIELD(CPPTYPE_UINT64, UInt64)
        LEANK_COPY_FIELD(CPPTYPE_FLOAT, Float)
        LEANK_COPY_FIELD(CPPTYPE_DOUBLE, Double)
        LEANK_COPY_FIELD(CPPTYPE_BOOL, Bool)
        LEANK_COPY_FIELD(CPPTYPE_ENUM, EnumValue)
        LEANK_COPY_FIELD(CPPTYPE_STRING, String)
#undef LEANK_COPY_FIELD
        case pb::FieldDescriptor::CPPTYPE_MESSAGE:
          if (rep) {
            CopyByNumber(fr->GetRepeatedMessage(from, f, i), tr->AddMessage(to, t));
          } else {
            CopyByNumber(fr->GetMessage(from, f), tr->MutableMessage(to, t));
          }
          break;
      }
    }
  }
}

absl::Status Bad(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

// Above this the distribution is uniform to float precision anyway.
constexpr float kMaxTemperature = 1e4f;

bool InRange(float v, float lo, float hi) { return std::isfinite(v) && v >= lo && v <= hi; }

absl::Status ValidateText(const std::string& text, const char* field) {
  if (text.empty()) return Bad(field, "empty");
  if (!IsValidUtf8(text)) return Bad(field, "not valid UTF-8");
  return absl::OkStatus();
}

absl::Status ValidateSampling(const v1::GenerateRequest& r) {
  if (r.has_temperature() && !InRange(r.temperature(), 0.0f, kMaxTemperature)) {
    return Bad("temperature",
               absl::StrCat("must be in [0, ", kMaxTemperature, "], got ", r.temperature()));
  }
  // -1 is vLLM's "off" (its default before 0 was): vLLM clients send it.
  if (r.top_k() < -1) {
    return Bad("top_k", absl::StrCat("must be >= 0 (0 or -1 = off), got ", r.top_k()));
  }
  if (r.has_top_p() && !(std::isfinite(r.top_p()) && r.top_p() > 0.0f && r.top_p() <= 1.0f)) {
    return Bad("top_p", absl::StrCat("must be in (0, 1], got ", r.top_p()));
  }
  if (!InRange(r.min_p(), 0.0f, 1.0f)) {
    return Bad("min_p", absl::StrCat("must be in [0, 1], got ", r.min_p()));
  }
  if (r.has_repetition_penalty() &&
      !(std::isfinite(r.repetition_penalty()) && r.repetition_penalty() > 0.0f &&
        r.repetition_penalty() <= 10.0f)) {
    return Bad("repetition_penalty",
               absl::StrCat("must be in (0, 10], got ", r.repetition_penalty()));
  }
  if (!InRange(r.presence_penalty(), -2.0f, 2.0f)) {
    return Bad("presence_penalty", absl::StrCat("must be in [-2, 2], got ", r.presence_penalty()));
  }
  if (!InRange(r.frequency_penalty(), -2.0f, 2.0f)) {
    return Bad("frequency_penalty",
               absl::StrCat("must be in [-2, 2], got ", r.frequency_penalty()));
  }
  return absl::OkStatus();
}

absl::Status ValidateStops(const v1::GenerateRequest& r, const ModelLimits& limits) {
  if (r.stop_size() > kMaxStopStrings) {
    return Bad("stop", absl::StrCat("at most ", kMaxStopStrings, " strings, got ", r.stop_size()));
  }
  for (int i = 0; i < r.stop_size(); ++i) {
    const std::string field = absl::StrCat("stop[", i, "]");
    const std::string& s = r.stop(i);
    if (s.empty()) return Bad(field, "empty");
    if (s.size() > static_cast<size_t>(kMaxStopStringBytes)) {
      return Bad(field, absl::StrCat("longer than ", kMaxStopStringBytes, " bytes"));
    }
    if (!IsValidUtf8(s)) return Bad(field, "not valid UTF-8");
  }
  if (r.stop_token_ids_size() > kMaxStopTokenIds) {
    return Bad("stop_token_ids",
               absl::StrCat("at most ", kMaxStopTokenIds, " ids, got ", r.stop_token_ids_size()));
  }
  return ValidateTokenIds(r.stop_token_ids(), limits, "stop_token_ids", /*allow_empty=*/true);
}

}  // namespace

absl::Status ParseRequest(const std::string& bytes, pb::Message* msg) {
  if (msg->ParseFromString(bytes)) return absl::OkStatus();
  const absl::Status not_a_request = absl::InvalidArgumentError(
      absl::StrCat("input: the request is not a valid ", msg->GetDescriptor()->full_name()));
  const pb::Message* prototype = LenientPrototype(msg->GetDescriptor());
  if (prototype == nullptr) return not_a_request;
  std::unique_ptr<pb::Message> lenient(prototype->New());
  if (!lenient->ParseFromString(bytes)) return not_a_request;
  msg->Clear();
  CopyByNumber(*lenient, msg);
  return absl::OkStatus();
}

absl::Status ValidateTokenIds(const google::protobuf::RepeatedField<int32_t>& ids,
                              const ModelLimits& limits, const char* field, bool allow_empty) {
  if (ids.empty() && !allow_empty) return Bad(field, "empty");
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= limits.vocab_size) {
      return Bad(absl::StrCat(field, "[", i, "]"),
                 absl::StrCat(ids[i], " is outside the vocabulary [0, ", limits.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateMessages(const v1::ChatMessages& messages, const ModelLimits& limits,
                              const char* field) {
  if (messages.messages().empty()) return Bad(field, "empty");
  for (int i = 0; i < messages.messages_size(); ++i) {
    const v1::ChatMessage& m = messages.messages(i);
    const std::string prefix = absl::StrCat(field, "[", i, "]");
    if (!IsValidUtf8(m.role())) return Bad(absl::StrCat(prefix, ".role"), "not valid UTF-8");
    if (m.role() != "system" && m.role() != "user" && m.role() != "assistant") {
      return Bad(absl::StrCat(prefix, ".role"),
                 absl::StrCat("unknown role '", m.role(), "' (system, user or assistant)"));
    }
    if (!IsValidUtf8(m.content())) return Bad(absl::StrCat(prefix, ".content"), "not valid UTF-8");
  }
  if (!limits.has_chat_template) {
    return Bad(field, absl::StrCat("the model has no usable chat template (",
                                   limits.no_chat_template_reason, "); send text or token_ids"));
  }
  return absl::OkStatus();
}

absl::Status ValidateGenerateRequest(const v1::GenerateRequest& r, const ModelLimits& limits) {
  if (r.request_id().size() > static_cast<size_t>(kMaxRequestIdBytes)) {
    return Bad("request_id", absl::StrCat("longer than ", kMaxRequestIdBytes, " bytes"));
  }
  if (!IsValidUtf8(r.request_id())) return Bad("request_id", "not valid UTF-8");
  // The id is written into every log line of the request: control characters (a newline
  // forging another line) are refused, as in an HTTP header's X-Request-Id.
  for (size_t i = 0; i < r.request_id().size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(r.request_id()[i]);
    if (c < 0x20 || c == 0x7f) {
      return Bad("request_id", absl::StrCat("control character 0x", absl::Hex(c, absl::kZeroPad2),
                                            " at byte ", i));
    }
  }
  switch (r.input_case()) {
    case v1::GenerateRequest::kText:
      if (absl::Status s = ValidateText(r.text(), "text"); !s.ok()) return s;
      break;
    case v1::GenerateRequest::kMessages:
      if (absl::Status s = ValidateMessages(r.messages(), limits, "messages"); !s.ok()) return s;
      break;
    case v1::GenerateRequest::kTokenIds:
      if (absl::Status s = ValidateTokenIds(r.token_ids().ids(), limits, "token_ids",
                                            /*allow_empty=*/false);
          !s.ok()) {
        return s;
      }
      break;
    case v1::GenerateRequest::INPUT_NOT_SET:
      return Bad("input", "one of text, messages or token_ids is required");
  }
  if (r.has_max_tokens() && r.max_tokens() <= 0) {
    return Bad("max_tokens", absl::StrCat("must be > 0, got ", r.max_tokens()));
  }
  if (r.has_max_tokens() && r.max_tokens() >= limits.max_model_len) {
    return Bad("max_tokens", absl::StrCat("must be < the context length ", limits.max_model_len,
                                          ", got ", r.max_tokens()));
  }
  if (r.min_tokens() < 0)
    return Bad("min_tokens", absl::StrCat("must be >= 0, got ", r.min_tokens()));
  if (r.has_max_tokens() && r.min_tokens() > r.max_tokens()) {
    return Bad("min_tokens",
               absl::StrCat("must be <= max_tokens (", r.max_tokens(), "), got ", r.min_tokens()));
  }
  if (absl::Status s = ValidateSampling(r); !s.ok()) return s;
  if (absl::Status s = ValidateStops(r, limits); !s.ok()) return s;
  if (r.has_logprobs() && (r.logprobs() < 0 || r.logprobs() > kMaxLogprobs)) {
    return Bad("logprobs", absl::StrCat("must be in [0, ", kMaxLogprobs, "], got ", r.logprobs()));
  }
  return absl::OkStatus();
}

absl::StatusOr<GenerationParams> ToGenerationParams(const v1::GenerateRequest& r, int prompt_tokens,
                                                    const ModelLimits& limits) {
  if (prompt_tokens <= 0) return Bad("input", "the prompt has no tokens");
  if (prompt_tokens >= limits.max_model_len) {
    return Bad("input", absl::StrCat("the prompt has ", prompt_tokens,
                                     " tokens, the context length is ", limits.max_model_len));
  }
  // The KV pool may hold fewer tokens than the context (a small --kv-cache-memory).
  const bool kv_bound =
      limits.kv_capacity_tokens > 0 && limits.kv_capacity_tokens < int64_t{limits.max_model_len};
  if (kv_bound && prompt_tokens >= limits.kv_capacity_tokens) {
    return Bad("input", absl::StrCat("the prompt has ", prompt_tokens,
                                     " tokens, the KV cache holds at most ",
                                     limits.kv_capacity_tokens, " tokens per sequence"));
  }
  const int room = kv_bound ? static_cast<int>(limits.kv_capacity_tokens) - prompt_tokens
                            : limits.max_model_len - prompt_tokens;
  GenerationParams p;
  if (r.has_max_tokens()) {
    if (r.max_tokens() > room) {
      return Bad(
          "max_tokens",
          absl::StrCat(
              "prompt (", prompt_tokens, " tokens) + max_tokens (", r.max_tokens(), ") exceeds ",
              kv_bound
                  ? absl::StrCat("the KV cache capacity of ", limits.kv_capacity_tokens, " tokens")
                  : absl::StrCat("the context length ", limits.max_model_len)));
    }
    p.max_tokens = r.max_tokens();
  } else {
    // Unset: 256, or min_tokens when that asks for more (a vLLM client gets the context
    // left by default, so it may send min_tokens alone), within the room there is.
    p.max_tokens = std::min(std::max(kDefaultMaxTokens, r.min_tokens()), room);
  }
  if (r.min_tokens() > p.max_tokens) {
    if (r.has_max_tokens()) {
      return Bad("min_tokens",
                 absl::StrCat("must be <= max_tokens (", p.max_tokens, "), got ", r.min_tokens()));
    }
    return Bad("min_tokens",
               absl::StrCat("prompt (", prompt_tokens, " tokens) + min_tokens (", r.min_tokens(),
                            ") exceeds ",
                            kv_bound ? absl::StrCat("the KV cache capacity of ",
                                                    limits.kv_capacity_tokens, " tokens")
                                     : absl::StrCat("the context length ", limits.max_model_len),
                            ": at most ", room, " tokens can be generated"));
  }
  p.min_tokens = r.min_tokens();
  SamplingParams& s = p.sampling;
  if (r.has_temperature()) s.temperature = r.temperature();
  s.top_k = std::max(r.top_k(), 0);  // -1: off, as 0
  if (r.has_top_p()) s.top_p = r.top_p();
  s.min_p = r.min_p();
  if (r.has_repetition_penalty()) s.repetition_penalty = r.repetition_penalty();
  s.presence_penalty = r.presence_penalty();
  s.frequency_penalty = r.frequency_penalty();
  if (r.has_seed()) {
    s.seed = r.seed();
    s.has_seed = true;
  }
  p.stop.assign(r.stop().begin(), r.stop().end());
  p.stop_token_ids.assign(r.stop_token_ids().begin(), r.stop_token_ids().end());
  p.ignore_eos = r.ignore_eos();
  p.include_stop_str_in_output = r.include_stop_str_in_output();
  p.logprobs = r.has_logprobs() ? r.logprobs() : -1;
  return p;
}

absl::Status ValidateTokenizeRequest(const v1::TokenizeRequest& r, const ModelLimits& limits) {
  switch (r.input_case()) {
    case v1::TokenizeRequest::kText:
      return ValidateText(r.text(), "text");
    case v1::TokenizeRequest::kMessages:
      return ValidateMessages(r.messages(), limits, "messages");
    case v1::TokenizeRequest::INPUT_NOT_SET:
      break;
  }
  return Bad("input", "one of text or messages is required");
}

absl::Status ValidateDetokenizeRequest(const v1::DetokenizeRequest& r, const ModelLimits& limits) {
  return ValidateTokenIds(r.token_ids(), limits, "token_ids", /*allow_empty=*/true);
}

}  // namespace leank::server
