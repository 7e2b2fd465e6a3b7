#include "tools/cli/cli.h"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"
#include "google/protobuf/util/json_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tools/cli/client_common.h"

namespace leank::client {
namespace {

struct Options {
  std::string server = kDefaultServer;
  double timeout_s = 300;
  bool json = false;
};

struct Io {
  std::istream& in;
  std::ostream& out;
  std::ostream& err;
  bool interactive;
};

int ServerError(const grpc::Status& s, std::ostream& err) {
  err << "error: " << StatusCodeName(s.error_code()) << ": " << s.error_message() << "\n";
  return kExitServerError;
}

// `all_fields`: zeros, false and empty strings too (info, tokenize, detokenize), so a
// script finds every field; stream chunks leave them out (no finish_reason on each).
std::string ToJsonLine(const google::protobuf::Message& m, bool all_fields = false) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  opts.always_print_primitive_fields = all_fields;
  std::string s;
  (void)google::protobuf::util::MessageToJsonString(m, &s, opts);
  return s;
}

// One Generate stream, written to io.out as it arrives. `text` receives the whole output.
// Returns an exit code.
int StreamGenerate(v1::LeankService::Stub& stub, const v1::GenerateRequest& req, const Options& o,
                   bool stats, Io& io, std::string* text) {
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(o.timeout_s));
  const auto start = std::chrono::steady_clock::now();
  std::optional<std::chrono::steady_clock::time_point> first;
  auto reader = stub.Generate(&ctx, req);
  v1::GenerateResponse chunk;
  v1::GenerateResponse last;
  int tokens = 0;
  std::string printed;  // the last non-empty text chunk
  while (reader->Read(&chunk)) {
    if (!first && chunk.token_ids_size() > 0) first = std::chrono::steady_clock::now();
    tokens += chunk.token_ids_size();
    if (o.json) {
      io.out << ToJsonLine(chunk) << "\n";
    } else {
      io.out << chunk.text();
    }
    io.out.flush();
    if (!chunk.text().empty()) printed = chunk.text();
    if (text != nullptr) *text += chunk.text();
    if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) last = chunk;
  }
  const grpc::Status status = reader->Finish();
  // End the streamed text with a newline; an error with nothing printed prints nothing.
  if (!o.json &&
      ((!printed.empty() && printed.back() != '\n') || (printed.empty() && status.ok()))) {
    io.out << "\n";
  }
  io.out.flush();
  if (!status.ok()) return ServerError(status, io.err);
  if (last.finish_reason() == v1::FINISH_REASON_ERROR) {
    io.err << "error: INTERNAL: " << last.error() << "\n";
    return kExitServerError;
  }
  if (stats) {
    const double e2e =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double ttft = first ? std::chrono::duration<double>(*first - start).count() : 0.0;
    const double decode = e2e - ttft;
    io.err << "[finish=" << FinishReasonName(last.finish_reason(), "unfinished")
           << " prompt_tokens=" << last.usage().prompt_tokens()
           << " completion_tokens=" << last.usage().completion_tokens()
           << " ttft=" << static_cast<int>(ttft * 1000) << "ms e2e=" << static_cast<int>(e2e * 1000)
           << "ms";
    if (tokens > 1 && decode > 0) io.err << " decode=" << (tokens - 1) / decode << "tok/s";
    io.err << "]\n";
  }
  return kExitOk;
}

// The API's strings are UTF-8 and protobuf refuses to send anything else (an INTERNAL
// error with an empty message): a usage error naming the input instead.
bool NotUtf8(const std::string& s, const std::string& what, std::ostream& err) {
  if (IsValidUtf8(s)) return false;
  err << "error: " << what << ": not valid UTF-8\n";
  return true;
}

bool StopsNotUtf8(const SamplingFlags& f, std::ostream& err) {
  for (const std::string& s : f.stop) {
    if (NotUtf8(s, "--stop", err)) return true;
  }
  return false;
}

std::string ReadAll(std::istream& in) {
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// --- generate -------------------------------------------------------------------------

struct GenerateArgs {
  std::string prompt;
  std::string prompt_file;
  std::string system;
  bool chat = false;
  bool no_special_tokens = false;
  std::vector<int32_t> token_ids;
  bool stats = false;
  SamplingFlags sampling;
};

int RunGenerate(const GenerateArgs& a, const Options& o, Io& io) {
  v1::GenerateRequest req;
  std::string prompt = a.prompt;
  if (!a.prompt_file.empty()) {
    if (a.prompt_file == "-") {
      prompt = ReadAll(io.in);
    } else {
      std::ifstream f(a.prompt_file);
      if (!f || std::filesystem::is_directory(a.prompt_file)) {
        io.err << "error: --prompt-file: cannot read " << a.prompt_file << "\n";
        return kExitUsage;
      }
      prompt = ReadAll(f);
    }
  }
  if (!a.prompt_file.empty() && prompt.empty()) {
    io.err << "error: --prompt-file: " << (a.prompt_file == "-" ? "stdin" : a.prompt_file)
           << " is empty\n";
    return kExitUsage;
  }
  const int inputs = (!a.prompt.empty() || !a.prompt_file.empty()) + !a.token_ids.empty();
  if (inputs != 1) {
    io.err << "error: give exactly one of PROMPT, --prompt-file or --token-ids\n";
    return kExitUsage;
  }
  if (NotUtf8(prompt, a.prompt_file.empty() ? "PROMPT" : "--prompt-file", io.err) ||
      NotUtf8(a.system, "--system", io.err) || StopsNotUtf8(a.sampling, io.err)) {
    return kExitUsage;
  }
  if (!a.token_ids.empty()) {
    for (int32_t id : a.token_ids) req.mutable_token_ids()->add_ids(id);
  } else if (a.chat || !a.system.empty()) {
    auto* msgs = req.mutable_messages();
    if (!a.system.empty()) {
      auto* m = msgs->add_messages();
      m->set_role("system");
      m->set_content(a.system);
    }
    auto* m = msgs->add_messages();
    m->set_role("user");
    m->set_content(prompt);
  } else {
    req.set_text(prompt);
    if (a.no_special_tokens) req.set_add_special_tokens(false);
  }
  ApplySampling(a.sampling, &req);
  auto stub = v1::LeankService::NewStub(MakeChannel(o.server));
  std::string text;
  return StreamGenerate(*stub, req, o, a.stats, io, &text);
}

// --- chat -----------------------------------------------------------------------------

struct ChatArgs {
  std::string system;
  bool stats = false;
  SamplingFlags sampling;
};

int RunChat(const ChatArgs& a, Options o, Io& io) {
  o.json = false;  // a conversation is for people
  if (NotUtf8(a.system, "--system", io.err) || StopsNotUtf8(a.sampling, io.err)) return kExitUsage;
  auto stub = v1::LeankService::NewStub(MakeChannel(o.server));
  v1::ChatMessages history;
  auto reset = [&] {
    history.clear_messages();
    if (!a.system.empty()) {
      auto* m = history.add_messages();
      m->set_role("system");
      m->set_content(a.system);
    }
  };
  reset();
  if (io.interactive) {
    io.out << "leank chat with " << o.server << " (/reset clears the conversation, /exit or "
           << "Ctrl-D quits)\n";
  }
  // Notes for the person at the terminal; with a pipe they go to stderr, so stdout
  // carries only the replies.
  std::ostream& note = io.interactive ? io.out : io.err;
  int code = kExitOk;
  std::string line;
  for (;;) {
    if (io.interactive) io.out << "\nyou> " << std::flush;
    if (!std::getline(io.in, line)) break;
    if (line.empty()) continue;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      reset();
      note << "(conversation cleared)\n";
      continue;
    }
    if (line == "/help") {
      note << "/reset clears the conversation, /exit quits\n";
      continue;
    }
    if (NotUtf8(line, "the line", io.err)) {
      if (!io.interactive) return kExitUsage;
      continue;
    }
    auto* user = history.add_messages();
    user->set_role("user");
    user->set_content(line);
    v1::GenerateRequest req;
    *req.mutable_messages() = history;
    ApplySampling(a.sampling, &req);
    if (io.interactive) io.out << "assistant> " << std::flush;
    std::string reply;
    code = StreamGenerate(*stub, req, o, a.stats, io, &reply);
    if (code != kExitOk) {
      history.mutable_messages()->RemoveLast();  // the turn did not happen
      if (!io.interactive) return code;          // scripts need the failure
      continue;
    }
    if (!reply.empty() && reply.back() == '\n') reply.pop_back();
    auto* assistant = history.add_messages();
    assistant->set_role("assistant");
    assistant->set_content(reply);
  }
  if (io.interactive) io.out << "\n";
  return code;
}

// --- tokenize / detokenize ------------------------------------------------------------

struct TokenizeArgs {
  std::string text;
  bool chat = false;
  bool no_special_tokens = false;
  bool show_tokens = false;
  bool count = false;
};

int RunTokenize(const TokenizeArgs& a, const Options& o, Io& io) {
  v1::TokenizeRequest req;
  std::string text = a.text == "-" ? ReadAll(io.in) : a.text;
  if (NotUtf8(text, "TEXT", io.err)) return kExitUsage;
  if (a.chat) {
    auto* m = req.mutable_messages()->add_messages();
    m->set_role("user");
    m->set_content(text);
  } else {
    req.set_text(text);
    if (a.no_special_tokens) req.set_add_special_tokens(false);
  }
  auto stub = v1::LeankService::NewStub(MakeChannel(o.server));
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(o.timeout_s));
  v1::TokenizeResponse resp;
  if (grpc::Status s = stub->Tokenize(&ctx, req, &resp); !s.ok()) return ServerError(s, io.err);
  if (o.json) {
    io.out << ToJsonLine(resp, /*all_fields=*/true) << "\n";
  } else if (a.count) {
    io.out << resp.token_ids_size() << "\n";
  } else if (a.show_tokens) {
    for (int i = 0; i < resp.token_ids_size(); ++i) {
      io.out << resp.token_ids(i) << "\t" << resp.tokens(i) << "\n";
    }
  } else {
    for (int i = 0; i < resp.token_ids_size(); ++i) {
      io.out << (i ? " " : "") << resp.token_ids(i);
    }
    io.out << "\n";
  }
  return kExitOk;
}

int RunDetokenize(const std::vector<int32_t>& ids, bool skip_special, const Options& o, Io& io) {
  v1::DetokenizeRequest req;
  for (int32_t id : ids) req.add_token_ids(id);
  req.set_skip_special_tokens(skip_special);
  auto stub = v1::LeankService::NewStub(MakeChannel(o.server));
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(o.timeout_s));
  v1::DetokenizeResponse resp;
  if (grpc::Status s = stub->Detokenize(&ctx, req, &resp); !s.ok()) {
    return ServerError(s, io.err);
  }
  if (o.json) {
    io.out << ToJsonLine(resp, /*all_fields=*/true) << "\n";
  } else {
    io.out << resp.text() << "\n";
  }
  return kExitOk;
}

// --- info / health --------------------------------------------------------------------

int RunInfo(const Options& o, Io& io) {
  auto stub = v1::LeankService::NewStub(MakeChannel(o.server));
  v1::ModelInfo info;
  v1::ServerState state;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(DeadlineIn(o.timeout_s));
    if (grpc::Status s = stub->GetModelInfo(&ctx, {}, &info); !s.ok()) {
      return ServerError(s, io.err);
    }
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(DeadlineIn(o.timeout_s));
    if (grpc::Status s = stub->GetServerState(&ctx, {}, &state); !s.ok()) {
      return ServerError(s, io.err);
    }
  }
  if (o.json) {
    io.out << "{\"model_info\":" << ToJsonLine(info, /*all_fields=*/true)
           << ",\"server_state\":" << ToJsonLine(state, /*all_fields=*/true) << "}\n";
    return kExitOk;
  }
  io.out << "model:              " << info.model() << "\n"
         << "architecture:       " << info.architecture() << "\n"
         << "backend:            " << info.backend() << " (" << info.dtype() << ")\n"
         << "max_model_len:      " << info.max_model_len() << "\n"
         << "vocab_size:         " << info.vocab_size() << "\n"
         << "chat template:      " << (info.has_chat_template() ? "yes" : "no") << "\n"
         << "LeanK mask:         ";
  if (info.masked()) {
    io.out << "yes, K sparsity " << info.k_sparsity() << ", sink " << info.sink() << ", recent "
           << info.recent() << "\n";
  } else {
    io.out << "no (dense)\n";
  }
  io.out << "block_size:         " << info.block_size() << "\n"
         << "kv_capacity_tokens: " << info.kv_capacity_tokens() << "\n"
         << "server_version:     " << info.server_version() << "\n"
         << "state:              " << (state.ready() ? "ready" : "not ready")
         << (state.draining() ? ", draining" : "") << "; running " << state.running()
         << ", waiting " << state.waiting() << ", pending " << state.pending() << ", streams "
         << state.active_streams() << ", kv_usage " << state.kv_usage() << ", preemptions "
         << state.num_preemptions() << ", steps " << state.steps() << "\n";
  return kExitOk;
}

int RunHealth(const std::string& service, const Options& o, Io& io) {
  auto stub = grpc::health::v1::Health::NewStub(MakeChannel(o.server));
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(o.timeout_s));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  if (grpc::Status s = stub->Check(&ctx, req, &resp); !s.ok()) return ServerError(s, io.err);
  const std::string name = grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status());
  if (o.json) {
    io.out << nlohmann::json{{"service", service}, {"status", name}}.dump() << "\n";
  } else {
    io.out << name << "\n";
  }
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? kExitOk : 1;
}

// CLI11 reads an empty list item ("", "1,,2") as id 0.
CLI::Validator NonEmptyItem() {
  return CLI::Validator(
      [](std::string& s) { return s.empty() ? std::string("empty item in the id list") : ""; }, "");
}

}  // namespace

int RunCli(int argc, const char* const* argv, std::istream& in, std::ostream& out,
           std::ostream& err, bool interactive) {
  CLI::App app{"leank-cli: talk to a leank-serve gRPC server", "leank-cli"};
  app.require_subcommand(1);
  app.fallthrough();  // global flags may follow the subcommand
  Options o;
  // The last of repeated --server/--timeout wins, so wrappers can add defaults up front.
  app.add_option("--server", o.server, "host:port of the server")
      ->capture_default_str()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast)
      ->check(ServerAddress());
  app.add_option("--timeout", o.timeout_s, "Seconds a call may take (0: no limit)")
      ->capture_default_str()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast)
      ->check(FiniteNumber(0, kMaxTimeoutSeconds));
  app.add_flag("--json", o.json, "Machine-readable output (JSON lines)");

  GenerateArgs gen;
  CLI::App* g = app.add_subcommand("generate", "Generate from a prompt, streaming the text");
  g->add_option("prompt", gen.prompt, "Prompt text");
  g->add_option("--prompt-file", gen.prompt_file, "Read the prompt from a file ('-': stdin)");
  CLI::Option* ids = g->add_option("--token-ids", gen.token_ids, "Pre-tokenized prompt (ids)")
                         ->delimiter(',')
                         ->check(NonEmptyItem());
  // Each of these shapes a text prompt; with token ids (or a chat, for the last) it would
  // be silently ignored.
  CLI::Option* chat_flag =
      g->add_flag("--chat", gen.chat, "Send the prompt as a user message (server's chat template)");
  CLI::Option* system_opt =
      g->add_option("--system", gen.system, "System message (implies --chat)");
  CLI::Option* no_special =
      g->add_flag("--no-special-tokens", gen.no_special_tokens, "Text input: no BOS etc.");
  ids->excludes(chat_flag)->excludes(system_opt)->excludes(no_special);
  no_special->excludes(chat_flag)->excludes(system_opt);
  g->add_flag("--stats", gen.stats, "Print finish reason, token counts and timings on stderr");
  AddSamplingFlags(g, &gen.sampling);

  ChatArgs chat;
  CLI::App* c = app.add_subcommand("chat", "Interactive chat (one line per turn)");
  c->add_option("--system", chat.system, "System message");
  c->add_flag("--stats", chat.stats, "Print token counts and timings after each reply");
  AddSamplingFlags(c, &chat.sampling);

  TokenizeArgs tok;
  CLI::App* t = app.add_subcommand("tokenize", "Token ids of a text");
  t->add_option("text", tok.text, "Text ('-': stdin)")->required();
  t->add_flag("--chat", tok.chat, "Render the text as a user message with the chat template");
  t->add_flag("--no-special-tokens", tok.no_special_tokens, "No BOS etc.");
  t->add_flag("--tokens", tok.show_tokens, "One 'id<TAB>token' line per token");
  t->add_flag("--count", tok.count, "Print only the number of tokens");

  std::vector<int32_t> detok_ids;
  bool skip_special = false;
  CLI::App* d = app.add_subcommand("detokenize", "Text of token ids");
  d->add_option("ids", detok_ids, "Token ids")->required()->delimiter(',')->check(NonEmptyItem());
  d->add_flag("--skip-special-tokens", skip_special, "Drop special tokens");

  CLI::App* i = app.add_subcommand("info", "Model info and server state");
  std::string health_service;
  CLI::App* h = app.add_subcommand("health", "grpc.health.v1 check (exit 0 SERVING, 1 not)");
  h->add_option("--service", health_service, "Service name ('' = whole server)");

  std::vector<std::string> args;
  for (int k = argc - 1; k > 0; --k) args.emplace_back(argv[k]);  // CLI11 wants reversed
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    // --help / --help-all print to `out` (the asked-for subcommand's help) and exit 0;
    // every other parse error prints its message and "Run with --help" on `err`.
    const int code = app.exit(e, out, err);
    return code == 0 ? kExitOk : kExitUsage;
  }
  Io io{in, out, err, interactive};
  if (*g) return RunGenerate(gen, o, io);
  if (*c) return RunChat(chat, o, io);
  if (*t) return RunTokenize(tok, o, io);
  if (*d) return RunDetokenize(detok_ids, skip_special, o, io);
  if (*i) return RunInfo(o, io);
  if (*h) return RunHealth(health_service, o, io);
  err << "error: no subcommand\n";
  return kExitUsage;
}

}  // namespace leank::client
