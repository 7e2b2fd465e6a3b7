#pragma once
// Pieces shared by leank-cli and leank-bench: the channel, sampling flags -> a
// GenerateRequest, gRPC status code names, and the exit-code convention.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "grpcpp/grpcpp.h"
#include "leank/v1/leank.grpc.pb.h"

namespace leank::client {

// Exit codes of both tools.
inline constexpr int kExitOk = 0;
inline constexpr int kExitUsage = 2;        // bad flags or arguments
inline constexpr int kExitServerError = 3;  // the server answered with a non-OK status

inline constexpr char kDefaultServer[] = "localhost:50051";

// Every sampling/stopping field of GenerateRequest. The optional proto fields are only
// set when their flag was given, so the server's defaults apply otherwise.
struct SamplingFlags {
  int max_tokens = 0;
  int min_tokens = 0;
  float temperature = 1.0f;
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool include_stop_str_in_output = false;
  int logprobs = 0;

  // Set by AddSamplingFlags: whether an optional field was given.
  CLI::Option* max_tokens_opt = nullptr;
  CLI::Option* temperature_opt = nullptr;
  CLI::Option* top_p_opt = nullptr;
  CLI::Option* repetition_penalty_opt = nullptr;
  CLI::Option* seed_opt = nullptr;
  CLI::Option* logprobs_opt = nullptr;
};

// Adds --max-tokens, --min-tokens, --temperature, --top-k, --top-p, --min-p,
// --repetition-penalty, --presence-penalty, --frequency-penalty, --seed, --stop,
// --stop-token-id, --ignore-eos, --include-stop-str, --logprobs to `app`.
// Ranges are left to the server (it names the field at fault); CLI11 only checks types.
void AddSamplingFlags(CLI::App* app, SamplingFlags* flags, const std::string& group = "Sampling");

// Copies the given flags into `req` (leaves the input oneof alone).
void ApplySampling(const SamplingFlags& flags, v1::GenerateRequest* req);

// "UNAVAILABLE", "INVALID_ARGUMENT", ... (the canonical upper-case names).
std::string StatusCodeName(grpc::StatusCode code);
// "stop", "length", "eos", "abort", "error"; `unfinished` for FINISH_REASON_UNSPECIFIED.
const char* FinishReasonName(v1::FinishReason r, const char* unfinished = "");

// Insecure channel to `target` ("host:port"). Messages up to 64 MiB (long prompts
// as token ids).
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target);

// Longest --timeout the tools take (about 31 years); longer is no limit anyway.
inline constexpr double kMaxTimeoutSeconds = 1e9;

// A deadline `seconds` from now; none (time_point::max(), which gRPC reads as infinite)
// for 0, for anything above kMaxTimeoutSeconds and for NaN.
std::chrono::system_clock::time_point DeadlineIn(double seconds);

// A number flag in [lo, hi] ((lo, hi] with lo_open), finite: CLI11's PositiveNumber,
// NonNegativeNumber and Range let "nan" through (a NaN timeout, rate or spread then
// reached a cast or a std::abort), and their range message for "abc" printed DBL_MAX.
CLI::Validator FiniteNumber(double lo, double hi, bool lo_open = false);

// A uint64 flag (a seed) written as digits: CLI11 alone reads "-1" as 2^64 - 1 and
// clamps 2^64 and beyond.
CLI::Validator Uint64Text();

// A --server value: HOST:PORT with a port in 1..65535 (IPv6 in brackets), or a target
// with one of gRPC's schemes (dns:, unix:, unix-abstract:, ipv4:, ipv6:, vsock:), passed
// on as is. gRPC itself dials 443 when the port is missing, wraps a port past 65535 and
// looks "http://host:port" up as a host name. Returns "" when fine, else the message.
std::string CheckServerAddress(const std::string& target);
CLI::Validator ServerAddress();

}  // namespace leank::client
