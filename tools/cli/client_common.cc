#include "tools/cli/client_common.h"

#include <charconv>
#include <chrono>
#include <cmath>
#include <string_view>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"

namespace leank::client {

void AddSamplingFlags(CLI::App* app, SamplingFlags* f, const std::string& group) {
  f->max_tokens_opt = app->add_option("--max-tokens", f->max_tokens,
                                      "Tokens to generate at most (server default: 256, or "
                                      "min_tokens if larger, within the context)")
                          ->group(group);
  app->add_option("--min-tokens", f->min_tokens, "EOS and stops are ignored before this many")
      ->group(group);
  f->temperature_opt =
      app->add_option("--temperature", f->temperature, "0 = greedy (server default: 1)")
          ->group(group);
  app->add_option("--top-k", f->top_k, "0 = off")->group(group);
  f->top_p_opt = app->add_option("--top-p", f->top_p, "(0, 1]")->group(group);
  app->add_option("--min-p", f->min_p, "[0, 1]")->group(group);
  f->repetition_penalty_opt =
      app->add_option("--repetition-penalty", f->repetition_penalty, "(0, 10]")->group(group);
  app->add_option("--presence-penalty", f->presence_penalty, "[-2, 2]")->group(group);
  app->add_option("--frequency-penalty", f->frequency_penalty, "[-2, 2]")->group(group);
  f->seed_opt =
      app->add_option("--seed", f->seed, "Per-request RNG seed")->group(group)->check(Uint64Text());
  // One value per flag, every occurrence kept: a vector option otherwise takes every
  // word after it, so `generate --stop . "The sky is"` sent the prompt as a stop string.
  app->add_option("--stop", f->stop, "Stop string (repeat the flag for more)")
      ->group(group)
      ->allow_extra_args(false)
      ->take_all();
  app->add_option("--stop-token-id", f->stop_token_ids, "Stop token id (repeat the flag for more)")
      ->group(group)
      ->allow_extra_args(false)
      ->take_all();
  app->add_flag("--ignore-eos", f->ignore_eos, "Keep generating past end-of-sequence")
      ->group(group);
  app->add_flag("--include-stop-str", f->include_stop_str_in_output,
                "Keep the matched stop string in the output")
      ->group(group);
  f->logprobs_opt =
      app->add_option("--logprobs", f->logprobs, "Chosen token's logprob plus the top N (0..20)")
          ->group(group);
}

void ApplySampling(const SamplingFlags& f, v1::GenerateRequest* req) {
  auto given = [](const CLI::Option* o) { return o != nullptr && o->count() > 0; };
  if (given(f.max_tokens_opt)) req->set_max_tokens(f.max_tokens);
  req->set_min_tokens(f.min_tokens);
  if (given(f.temperature_opt)) req->set_temperature(f.temperature);
  req->set_top_k(f.top_k);
  if (given(f.top_p_opt)) req->set_top_p(f.top_p);
  req->set_min_p(f.min_p);
  if (given(f.repetition_penalty_opt)) req->set_repetition_penalty(f.repetition_penalty);
  req->set_presence_penalty(f.presence_penalty);
  req->set_frequency_penalty(f.frequency_penalty);
  if (given(f.seed_opt)) req->set_seed(f.seed);
  for (const std::string& s : f.stop) req->add_stop(s);
  for (int32_t id : f.stop_token_ids) req->add_stop_token_ids(id);
  req->set_ignore_eos(f.ignore_eos);
  req->set_include_stop_str_in_output(f.include_stop_str_in_output);
  if (given(f.logprobs_opt)) req->set_logprobs(f.logprobs);
}

std::string StatusCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      break;
  }
  return "CODE_" + std::to_string(static_cast<int>(code));
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

std::chrono::system_clock::time_point DeadlineIn(double seconds) {
  if (!(seconds > 0) || seconds > kMaxTimeoutSeconds) {
    return std::chrono::system_clock::time_point::max();
  }
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(
             std::chrono::duration<double>(seconds));
}

CLI::Validator FiniteNumber(double lo, double hi, bool lo_open) {
  const std::string range = absl::StrFormat("%s%.10g, %.10g]", lo_open ? "(" : "[", lo, hi);
  return CLI::Validator(
      [lo, hi, lo_open, range](std::string& s) {
        double v = 0;
        const bool number = absl::SimpleAtod(s, &v) && std::isfinite(v);
        if (number && (lo_open ? v > lo : v >= lo) && v <= hi) return std::string();
        return "must be a number in " + range + ", got " + s;
      },
      "NUMBER in " + range);
}

CLI::Validator Uint64Text() {
  return CLI::Validator(
      [](std::string& s) {
        uint64_t v = 0;
        const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        return ec == std::errc() && end == s.data() + s.size() && !s.empty()
                   ? std::string()
                   : "must be an integer in [0, 18446744073709551615], got " + s;
      },
      "UINT64");
}

namespace {

// gRPC's own target schemes (a target with one is passed on as is).
constexpr const char* kGrpcSchemes[] = {
    "dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:"};

bool IsPort(std::string_view p) {
  int v = 0;
  const auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
  return !p.empty() && ec == std::errc() && end == p.data() + p.size() && v >= 1 && v <= 65535;
}

}  // namespace

std::string CheckServerAddress(const std::string& s) {
  const std::string want =
      "must be HOST:PORT (e.g. localhost:50051, [::1]:50051) or a gRPC target "
      "such as unix:/path/to.sock, got '" +
      s + "'";
  for (const char* scheme : kGrpcSchemes) {
    const std::string_view sc(scheme);
    if (s.size() > sc.size() && s.compare(0, sc.size(), sc) == 0) return "";
  }
  if (s.find("://") != std::string::npos) {
    return want + " (no http:// or other URL scheme: the server speaks gRPC)";
  }
  if (s.empty() || s.find_first_of(" \t\r\n/") != std::string::npos) return want;
  const size_t colon = s.rfind(':');
  if (colon == std::string::npos) return want + " (the port is missing)";
  std::string_view host(s.data(), colon);
  if (!IsPort(std::string_view(s).substr(colon + 1))) {
    return want + " (the port must be 1..65535)";
  }
  if (!host.empty() && host.front() == '[') {
    // [IPv6]:port
    if (host.size() < 3 || host.back() != ']') return want;
    host = host.substr(1, host.size() - 2);
    if (host.find_first_of("[]") != std::string_view::npos) return want;
  } else if (host.find_first_of(":[]") != std::string_view::npos) {
    return want + " (an IPv6 address goes in brackets: [::1]:50051)";
  }
  if (host.empty()) return want + " (the host is missing)";
  return "";
}

CLI::Validator ServerAddress() {
  return CLI::Validator([](std::string& s) { return CheckServerAddress(s); }, "HOST:PORT");
}

const char* FinishReasonName(v1::FinishReason r, const char* unfinished) {
  switch (r) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_EOS:
      return "eos";
    case v1::FINISH_REASON_ABORT:
      return "abort";
    case v1::FINISH_REASON_ERROR:
      return "error";
    default:
      return unfinished;
  }
}

}  // namespace leank::client
