#pragma once
// Every field of every request is checked here, and only here. Errors are
// InvalidArgument whose message starts with the field's name as written in the
// proto ("top_p: ..."), so a client can tell what to fix. Engine::Validate repeats
// the model-dependent checks when the request is enqueued (belt and braces).

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/core/request.h"
#include "google/protobuf/message.h"
#include "leank/v1/leank.pb.h"

namespace leank::server {

// What validation needs to know about the model.
struct ModelLimits {
  int vocab_size = 0;
  int max_model_len = 0;
  // Tokens one sequence could hold in an empty KV pool (0: not limited beyond the
  // context). A request whose prompt + max_tokens exceeds it could never be scheduled.
  int64_t kv_capacity_tokens = 0;
  bool has_chat_template = false;
  std::string no_chat_template_reason;  // when !has_chat_template
};

inline constexpr int kMaxStopStrings = 16;
inline constexpr int kMaxStopStringBytes = 256;
inline constexpr int kMaxStopTokenIds = 64;
inline constexpr int kMaxLogprobs = 20;
inline constexpr int kMaxRequestIdBytes = 128;
inline constexpr int kDefaultMaxTokens = 256;

// A request message from its wire bytes. protobuf's own parser refuses a proto3 string
// that is not UTF-8 (gRPC then answers INTERNAL with an empty message, before any
// handler runs); this one keeps such bytes, so that the checks below name the field.
// INVALID_ARGUMENT "input: ..." when the bytes are not a `msg` at all.
absl::Status ParseRequest(const std::string& bytes, google::protobuf::Message* msg);

// Checks of the request alone (and the vocabulary); no tokenization.
absl::Status ValidateGenerateRequest(const v1::GenerateRequest& req, const ModelLimits& limits);

// After tokenization: prompt length against the context and the KV capacity, then the
// engine's params. The default max_tokens is min(256, room left by the tighter limit).
absl::StatusOr<GenerationParams> ToGenerationParams(const v1::GenerateRequest& req,
                                                    int prompt_tokens, const ModelLimits& limits);

absl::Status ValidateTokenizeRequest(const v1::TokenizeRequest& req, const ModelLimits& limits);
absl::Status ValidateDetokenizeRequest(const v1::DetokenizeRequest& req, const ModelLimits& limits);

// Shared by Generate and Tokenize: roles known, contents valid UTF-8, non-empty.
absl::Status ValidateMessages(const v1::ChatMessages& messages, const ModelLimits& limits,
                              const char* field);
absl::Status ValidateTokenIds(const google::protobuf::RepeatedField<int32_t>& ids,
                              const ModelLimits& limits, const char* field, bool allow_empty);

}  // namespace leank::server
