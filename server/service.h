#pragma once
// leank.v1.LeankService on the sync gRPC API: one thread per Generate stream, which
// validates, tokenizes, submits to the EngineLoop and forwards the request's outputs,
// polling for client cancellation and the deadline between outputs.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

#include "engine/core/engine.h"
#include "leank/v1/leank.grpc.pb.h"
#include "server/engine_loop.h"
#include "server/metrics.h"
#include "server/validate.h"

namespace leank::server {

// Lifecycle flags shared by the service, the HTTP endpoints and main().
struct ServerStatus {
  std::atomic<bool> ready{false};     // model loaded and warmed up
  std::atomic<bool> draining{false};  // SIGTERM seen: refuse new calls
  std::atomic<int> active_streams{0};
};

class LeankServiceImpl final : public v1::LeankService::Service {
 public:
  LeankServiceImpl(ServerStatus* status, Metrics* metrics);

  // Called once the engine is loaded (before `ready`): calls are UNAVAILABLE until then.
  void Attach(EngineLoop* loop, const ModelInfo& info, std::string served_model_name);

  // Generate and Tokenize are served by RunGenerate / RunTokenize (see the constructor).
  grpc::Status Tokenize(grpc::ServerContext* ctx, const v1::TokenizeRequest* req,
                        v1::TokenizeResponse* resp) override;
  grpc::Status Detokenize(grpc::ServerContext* ctx, const v1::DetokenizeRequest* req,
                          v1::DetokenizeResponse* resp) override;
  grpc::Status GetModelInfo(grpc::ServerContext* ctx, const v1::GetModelInfoRequest* req,
                            v1::ModelInfo* resp) override;
  grpc::Status GetServerState(grpc::ServerContext* ctx, const v1::GetServerStateRequest* req,
                              v1::ServerState* resp) override;

 private:
  // Generate and Tokenize take their request as bytes: a server-streaming or unary call
  // is, on the wire, a stream with one request message (what gRPC's "split streaming"
  // relies on). protobuf's parser refuses a string field that is not UTF-8 before the
  // generated handler calls anything, and the client would get INTERNAL with an empty
  // message; ParseRequest keeps the bytes so that validation names the field instead.
  using GenerateStream = grpc::ServerReaderWriter<v1::GenerateResponse, grpc::ByteBuffer>;
  using TokenizeStream = grpc::ServerReaderWriter<v1::TokenizeResponse, grpc::ByteBuffer>;
  grpc::Status RunGenerate(grpc::ServerContext* ctx, GenerateStream* stream);
  grpc::Status RunTokenize(grpc::ServerContext* ctx, TokenizeStream* stream);

  // UNAVAILABLE while loading or draining.
  grpc::Status CheckAccepting() const;
  grpc::Status Reject(const absl::Status& status);
  // Prompt token ids of a Generate/Tokenize input.
  absl::StatusOr<std::vector<int32_t>> PromptOf(const v1::GenerateRequest& req) const;
  absl::StatusOr<std::vector<int32_t>> Render(const v1::ChatMessages& messages) const;
  grpc::Status Stream(grpc::ServerContext* ctx, RequestId id, const std::string& log_id,
                      RequestChannel& channel, GenerateStream* writer, bool want_logprobs,
                      std::chrono::steady_clock::time_point arrival);
  void FillChunk(const RequestOutput& out, const std::string& log_id, bool want_logprobs,
                 v1::GenerateResponse* resp) const;

  ServerStatus* status_;
  Metrics* metrics_;
  std::atomic<EngineLoop*> loop_{nullptr};
  ModelInfo info_;
  ModelLimits limits_;
  std::string served_model_name_;
  std::atomic<int64_t> next_id_{1};
};

}  // namespace leank::server
