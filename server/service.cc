#include "server/service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "grpcpp/support/method_handler.h"
#include "server/status.h"
#include "spdlog/spdlog.h"

namespace leank::server {
namespace {

// How often a stream with nothing to send looks at its client (cancel, deadline).
constexpr std::chrono::milliseconds kPollInterval(20);

v1::FinishReason ToProto(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kEos:
      return v1::FINISH_REASON_EOS;
    case FinishReason::kAbort:
      return v1::FINISH_REASON_ABORT;
    case FinishReason::kError:
      return v1::FINISH_REASON_ERROR;
    case FinishReason::kNone:
      break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

struct StreamCounter {
  explicit StreamCounter(ServerStatus* s, Metrics* m) : s_(s), m_(m) {
    m_->SetStreams(++s_->active_streams);
  }
  ~StreamCounter() { m_->SetStreams(--s_->active_streams); }
  ServerStatus* s_;
  Metrics* m_;
};

// Index of an rpc of LeankService, as the generated Service numbers its methods.
int MethodIndex(const char* name) {
  return google::protobuf::DescriptorPool::generated_pool()
      ->FindServiceByName(v1::LeankService::service_full_name())
      ->FindMethodByName(name)
      ->index();
}

// The request of a one-request call, as bytes through ParseRequest.
template <class Stream>
absl::Status ReadRequest(Stream* stream, google::protobuf::Message* req) {
  grpc::ByteBuffer buf;
  if (!stream->Read(&buf)) return absl::InvalidArgumentError("input: no request message");
  std::vector<grpc::Slice> slices;
  if (!buf.Dump(&slices).ok()) return absl::InvalidArgumentError("input: unreadable request");
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return ParseRequest(bytes, req);
}

}  // namespace

LeankServiceImpl::LeankServiceImpl(ServerStatus* status, Metrics* metrics)
    : status_(status), metrics_(metrics) {
  MarkMethodStreamed(MethodIndex("Generate"),
                     new grpc::internal::BidiStreamingHandler<LeankServiceImpl, grpc::ByteBuffer,
                                                              v1::GenerateResponse>(
                         [](LeankServiceImpl* self, grpc::ServerContext* ctx,
                            GenerateStream* stream) { return self->RunGenerate(ctx, stream); },
                         this));
  MarkMethodStreamed(MethodIndex("Tokenize"),
                     new grpc::internal::BidiStreamingHandler<LeankServiceImpl, grpc::ByteBuffer,
                                                              v1::TokenizeResponse>(
                         [](LeankServiceImpl* self, grpc::ServerContext* ctx,
                            TokenizeStream* stream) { return self->RunTokenize(ctx, stream); },
                         this));
}

void LeankServiceImpl::Attach(EngineLoop* loop, const ModelInfo& info,
                              std::string served_model_name) {
  info_ = info;
  limits_.vocab_size = info.vocab_size;
  limits_.max_model_len = info.max_model_len;
  limits_.kv_capacity_tokens = info.kv_capacity_tokens;
  limits_.has_chat_template = loop->engine().chat_template() != nullptr;
  if (!limits_.has_chat_template) {
    limits_.no_chat_template_reason = std::string(loop->engine().chat_template_status().message());
  }
  served_model_name_ = served_model_name.empty() ? info.model : std::move(served_model_name);
  loop_.store(loop);  // publishes the fields above
}

grpc::Status LeankServiceImpl::CheckAccepting() const {
  if (status_->draining.load()) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "server is shutting down");
  }
  if (!status_->ready.load() || loop_.load() == nullptr) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "model is loading");
  }
  return grpc::Status::OK;
}

grpc::Status LeankServiceImpl::Reject(const absl::Status& status) {
  metrics_->AddRejected(StatusCodeLabel(status.code()));
  return ToGrpcStatus(status);
}

absl::StatusOr<std::vector<int32_t>> LeankServiceImpl::Render(
    const v1::ChatMessages& messages) const {
  const ChatTemplate* tmpl = loop_.load()->engine().chat_template();
  std::vector<ChatMessage> msgs;
  msgs.reserve(messages.messages_size());
  for (const v1::ChatMessage& m : messages.messages()) msgs.push_back({m.role(), m.content()});
  absl::StatusOr<std::string> text = tmpl->Render(msgs, /*add_generation_prompt=*/true);
  if (!text.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("messages: ", text.status().message()));
  }
  // The rendered template already holds the special tokens (BOS included).
  return loop_.load()->engine().tokenizer().Encode(*text, /*add_special_tokens=*/false);
}

absl::StatusOr<std::vector<int32_t>> LeankServiceImpl::PromptOf(
    const v1::GenerateRequest& req) const {
  switch (req.input_case()) {
    case v1::GenerateRequest::kText: {
      const bool special = req.has_add_special_tokens() ? req.add_special_tokens() : true;
      absl::StatusOr<std::vector<int32_t>> ids =
          loop_.load()->engine().tokenizer().Encode(req.text(), special);
      if (!ids.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("text: ", ids.status().message()));
      }
      return ids;
    }
    case v1::GenerateRequest::kMessages:
      return Render(req.messages());
    case v1::GenerateRequest::kTokenIds:
      return std::vector<int32_t>(req.token_ids().ids().begin(), req.token_ids().ids().end());
    case v1::GenerateRequest::INPUT_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("input: one of text, messages or token_ids is required");
}

grpc::Status LeankServiceImpl::RunGenerate(grpc::ServerContext* ctx, GenerateStream* writer) {
  if (grpc::Status s = CheckAccepting(); !s.ok()) {
    metrics_->AddRejected("unavailable");
    return s;
  }
  const RequestId id = next_id_.fetch_add(1);
  v1::GenerateRequest request;
  const v1::GenerateRequest* req = &request;
  if (absl::Status s = ReadRequest(writer, &request); !s.ok()) {
    spdlog::info("[req-{}] invalid: {}", id, std::string(s.message()));
    return Reject(s);
  }
  // A stream (which a drain waits for) and its clock start once the request is in, as
  // with the generated handler: a client that never sends one holds up nothing.
  StreamCounter counter(status_, metrics_);
  const auto arrival = std::chrono::steady_clock::now();
  if (absl::Status s = ValidateGenerateRequest(*req, limits_); !s.ok()) {
    // Not the client's id: it may be the invalid field (megabytes, control characters).
    spdlog::info("[req-{}] invalid: {}", id, std::string(s.message()));
    return Reject(s);
  }
  const std::string log_id =
      req->request_id().empty() ? absl::StrCat("req-", id) : req->request_id();
  absl::StatusOr<std::vector<int32_t>> prompt = PromptOf(*req);
  if (!prompt.ok()) {
    spdlog::info("[{}] invalid: {}", log_id, std::string(prompt.status().message()));
    return Reject(prompt.status());
  }
  absl::StatusOr<GenerationParams> params =
      ToGenerationParams(*req, static_cast<int>(prompt->size()), limits_);
  if (!params.ok()) {
    spdlog::info("[{}] invalid: {}", log_id, std::string(params.status().message()));
    return Reject(params.status());
  }
  spdlog::info("[{}] received: {} prompt tokens, max_tokens={} temperature={}", log_id,
               prompt->size(), params->max_tokens, params->sampling.temperature);
  EngineLoop* loop = loop_.load();
  absl::StatusOr<std::shared_ptr<RequestChannel>> channel =
      loop->Submit(id, log_id, *std::move(prompt), *std::move(params), arrival);
  if (!channel.ok()) {
    spdlog::warn("[{}] refused: {}", log_id, std::string(channel.status().message()));
    return Reject(channel.status());
  }
  return Stream(ctx, id, log_id, **channel, writer, req->has_logprobs(), arrival);
}

grpc::Status LeankServiceImpl::Stream(grpc::ServerContext* ctx, RequestId id,
                                      const std::string& log_id, RequestChannel& channel,
                                      GenerateStream* writer, bool want_logprobs,
                                      std::chrono::steady_clock::time_point arrival) {
  EngineLoop* loop = loop_.load();
  for (;;) {
    RequestChannel::Batch batch = channel.Wait(kPollInterval);
    if (!batch.rejected.ok()) return ToGrpcStatus(batch.rejected);
    for (const RequestOutput& out : batch.outputs) {
      v1::GenerateResponse resp;
      FillChunk(out, log_id, want_logprobs, &resp);
      if (out.finished) {
        resp.mutable_timings()->set_e2e_s(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - arrival).count());
      }
      if (!writer->Write(resp)) {
        spdlog::info("[{}] client went away mid-stream; aborting", log_id);
        if (!out.finished) loop->Abort(id);
        return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
      }
      if (!out.finished) continue;
      switch (out.finish_reason) {
        case FinishReason::kError:
          // The engine's code when it has one (e.g. RESOURCE_EXHAUSTED: does not fit
          // the KV cache), INTERNAL otherwise.
          if (!out.error.ok()) return ToGrpcStatus(out.error);
          return grpc::Status(grpc::StatusCode::INTERNAL, "engine error");
        case FinishReason::kAbort:
          return grpc::Status(grpc::StatusCode::ABORTED, "request aborted by the server");
        default:
          return grpc::Status::OK;
      }
    }
    if (batch.closed) {
      // Closed with no finishing output in hand cannot happen (Push closes on the
      // finished output, which is returned in the same batch).
      return grpc::Status(grpc::StatusCode::INTERNAL, "stream closed without a final output");
    }
    const bool deadline_passed = std::chrono::system_clock::now() >= ctx->deadline();
    if (deadline_passed || ctx->IsCancelled()) {
      loop->Abort(id);
      if (deadline_passed) {
        spdlog::info("[{}] deadline exceeded; aborting", log_id);
        return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded");
      }
      spdlog::info("[{}] cancelled by the client; aborting", log_id);
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
    }
  }
}

void LeankServiceImpl::FillChunk(const RequestOutput& out, const std::string& log_id,
                                 bool want_logprobs, v1::GenerateResponse* resp) const {
  resp->set_request_id(log_id);
  const Tokenizer& tok = loop_.load()->engine().tokenizer();
  for (const TokenOutput& t : out.tokens) resp->add_token_ids(t.token);
  resp->set_text(out.text);
  if (want_logprobs) {
    for (const TokenOutput& t : out.tokens) {
      v1::TokenLogprobs* lp = resp->add_logprobs();
      lp->set_token_id(t.token);
      lp->set_logprob(t.logprob);
      for (const TokenLogprob& alt : t.top) {
        v1::TopLogprob* top = lp->add_top();
        top->set_token_id(alt.token);
        top->set_token(tok.IdToToken(alt.token));
        top->set_logprob(alt.logprob);
      }
    }
  }
  if (!out.finished) return;
  resp->set_finish_reason(ToProto(out.finish_reason));
  resp->mutable_usage()->set_prompt_tokens(out.prompt_tokens);
  resp->mutable_usage()->set_completion_tokens(out.completion_tokens);
  resp->mutable_usage()->set_cached_tokens(out.cached_tokens);
  resp->mutable_timings()->set_queue_time_s(out.queue_time_s);
  resp->mutable_timings()->set_time_to_first_token_s(out.ttft_s);
  if (!out.error.ok()) resp->set_error(std::string(out.error.message()));
}

grpc::Status LeankServiceImpl::RunTokenize(grpc::ServerContext* ctx, TokenizeStream* stream) {
  if (grpc::Status s = CheckAccepting(); !s.ok()) return s;
  v1::TokenizeRequest req;
  if (absl::Status s = ReadRequest(stream, &req); !s.ok()) return Reject(s);
  v1::TokenizeResponse resp;
  grpc::Status s = Tokenize(ctx, &req, &resp);
  if (s.ok() && !stream->Write(resp)) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
  }
  return s;
}

grpc::Status LeankServiceImpl::Tokenize(grpc::ServerContext*, const v1::TokenizeRequest* req,
                                        v1::TokenizeResponse* resp) {
  if (grpc::Status s = CheckAccepting(); !s.ok()) return s;
  if (absl::Status s = ValidateTokenizeRequest(*req, limits_); !s.ok()) return Reject(s);
  const Tokenizer& tok = loop_.load()->engine().tokenizer();
  absl::StatusOr<std::vector<int32_t>> ids;
  if (req->input_case() == v1::TokenizeRequest::kMessages) {
    ids = Render(req->messages());
  } else {
    ids = tok.Encode(req->text(), req->has_add_special_tokens() ? req->add_special_tokens() : true);
  }
  if (!ids.ok()) return Reject(ids.status());
  for (int32_t id : *ids) {
    resp->add_token_ids(id);
    resp->add_tokens(tok.IdToToken(id));
  }
  return grpc::Status::OK;
}

grpc::Status LeankServiceImpl::Detokenize(grpc::ServerContext*, const v1::DetokenizeRequest* req,
                                          v1::DetokenizeResponse* resp) {
  if (grpc::Status s = CheckAccepting(); !s.ok()) return s;
  if (absl::Status s = ValidateDetokenizeRequest(*req, limits_); !s.ok()) return Reject(s);
  std::vector<int32_t> ids(req->token_ids().begin(), req->token_ids().end());
  resp->set_text(loop_.load()->engine().tokenizer().Decode(ids, req->skip_special_tokens()));
  return grpc::Status::OK;
}

grpc::Status LeankServiceImpl::GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*,
                                            v1::ModelInfo* resp) {
  if (loop_.load() == nullptr) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "model is loading");
  }
  resp->set_model(served_model_name_);
  resp->set_architecture(info_.architecture);
  resp->set_max_model_len(info_.max_model_len);
  resp->set_dtype(info_.dtype);
  resp->set_backend(info_.backend);
  resp->set_masked(info_.masked);
  resp->set_k_sparsity(info_.k_sparsity);
  resp->set_sink(info_.sink);
  resp->set_recent(info_.recent);
  resp->set_block_size(info_.block_size);
  resp->set_kv_capacity_tokens(info_.kv_capacity_tokens);
  resp->set_vocab_size(info_.vocab_size);
  resp->set_has_chat_template(limits_.has_chat_template);
  resp->set_server_version(LEANK_SERVER_VERSION);
  return grpc::Status::OK;
}

grpc::Status LeankServiceImpl::GetServerState(grpc::ServerContext*,
                                              const v1::GetServerStateRequest*,
                                              v1::ServerState* resp) {
  resp->set_ready(status_->ready.load());
  resp->set_draining(status_->draining.load());
  resp->set_active_streams(status_->active_streams.load());
  EngineLoop* loop = loop_.load();
  if (loop == nullptr) return grpc::Status::OK;
  const LoopState st = loop->state();
  resp->set_running(st.engine.running);
  resp->set_waiting(st.engine.waiting);
  resp->set_kv_usage(st.engine.kv_usage);
  resp->set_num_preemptions(st.engine.num_preemptions);
  resp->set_free_full_blocks(st.engine.free_full_blocks);
  resp->set_free_pruned_blocks(st.engine.free_pruned_blocks);
  resp->set_pending(st.pending);
  resp->set_steps(st.steps);
  return grpc::Status::OK;
}

}  // namespace leank::server
