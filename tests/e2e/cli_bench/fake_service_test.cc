// leank-cli (RunCli, in-process) and the leank-bench runner against an in-process fake
// LeankService on a loopback port: what each sends, how streams and errors come back.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tools/bench/runner.h"
#include "tools/cli/cli.h"
#include "tools/cli/client_common.h"

namespace leank {
namespace {

using grpc::ServerContext;
using grpc::Status;
using grpc::StatusCode;

// Streams max_tokens tokens (default 5) in chunks of 1, 2, 1, 2... tokens; token i is
// 100 + i with text "t<i> ". Special prompts: text "exhausted" -> RESOURCE_EXHAUSTED
// at once; "die" -> two chunks then INTERNAL; "engine-error" -> FINISH_REASON_ERROR.
class FakeService final : public v1::LeankService::Service {
 public:
  Status Generate(ServerContext* ctx, const v1::GenerateRequest* req,
                  grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      requests_.push_back(*req);
    }
    const int now = ++in_flight_;
    for (int seen = max_in_flight_.load(); now > seen;) {
      if (max_in_flight_.compare_exchange_weak(seen, now)) break;
    }
    struct Leave {
      std::atomic<int>* n;
      ~Leave() { --*n; }
    } leave{&in_flight_};
    if (req->has_top_p() && req->top_p() > 1) {
      return Status(StatusCode::INVALID_ARGUMENT, "top_p: must be in (0, 1], got 2");
    }
    if (req->text() == "exhausted") return Status(StatusCode::RESOURCE_EXHAUSTED, "queue full");
    int prompt_tokens = 0;
    if (req->has_token_ids()) prompt_tokens = req->token_ids().ids_size();
    if (req->has_text()) prompt_tokens = static_cast<int>(req->text().size());
    if (req->has_messages()) prompt_tokens = 10 * req->messages().messages_size();
    const int max_tokens = req->has_max_tokens() ? req->max_tokens() : 5;
    int sent = 0;
    for (int chunk = 0; sent < max_tokens; ++chunk) {
      v1::GenerateResponse r;
      const int n = std::min(max_tokens - sent, chunk % 2 == 0 ? 1 : 2);
      for (int k = 0; k < n; ++k, ++sent) {
        r.add_token_ids(100 + sent);
        r.set_text(r.text() + "t" + std::to_string(sent) + " ");
      }
      if (req->text() == "die" && chunk == 2) return Status(StatusCode::INTERNAL, "boom");
      if (sent == max_tokens) {
        if (req->text() == "engine-error") {
          r.set_finish_reason(v1::FINISH_REASON_ERROR);
          r.set_error("nan in logits");
        } else {
          r.set_finish_reason(v1::FINISH_REASON_LENGTH);
        }
        r.mutable_usage()->set_prompt_tokens(prompt_tokens);
        r.mutable_usage()->set_completion_tokens(sent);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(step_ms_));
      if (!writer->Write(r)) return Status(StatusCode::CANCELLED, "gone");
    }
    return Status::OK;
  }

  Status Tokenize(ServerContext*, const v1::TokenizeRequest* req,
                  v1::TokenizeResponse* resp) override {
    for (unsigned char c : req->text()) {
      resp->add_token_ids(c);
      resp->add_tokens(std::string(1, static_cast<char>(c)));
    }
    return Status::OK;
  }

  Status GetModelInfo(ServerContext*, const v1::GetModelInfoRequest*,
                      v1::ModelInfo* resp) override {
    resp->set_model("fake-in-process");
    resp->set_max_model_len(4096);
    resp->set_vocab_size(256);
    resp->set_masked(true);
    resp->set_k_sparsity(0.7);
    return Status::OK;
  }

  Status GetServerState(ServerContext*, const v1::GetServerStateRequest*,
                        v1::ServerState* resp) override {
    resp->set_ready(true);
    resp->set_steps(42);
    return Status::OK;
  }

  std::vector<v1::GenerateRequest> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  int max_in_flight() const { return max_in_flight_.load(); }
  void set_step_ms(int ms) { step_ms_ = ms; }

 private:
  std::mutex mu_;
  std::vector<v1::GenerateRequest> requests_;
  std::atomic<int> in_flight_{0};
  std::atomic<int> max_in_flight_{0};
  std::atomic<int> step_ms_{1};
};

class FakeServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(&service_);
    server_ = b.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
    target_ = "127.0.0.1:" + std::to_string(port_);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }

  struct CliResult {
    int code;
    std::string out, err;
  };
  CliResult Cli(std::vector<std::string> args, const std::string& input = "") {
    args.insert(args.begin(), "leank-cli");
    args.push_back("--server=" + target_);
    args.push_back("--timeout=20");
    std::vector<const char*> argv;
    for (const std::string& a : args) argv.push_back(a.c_str());
    std::istringstream in(input);
    std::ostringstream out, err;
    const int code = client::RunCli(static_cast<int>(argv.size()), argv.data(), in, out, err,
                                    /*interactive=*/false);
    return {code, out.str(), err.str()};
  }

  FakeService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::string target_;
};

TEST_F(FakeServiceTest, GenerateStreamsTextAndMapsEverySamplingFlag) {
  CliResult r = Cli({"generate",
                     "hello",
                     "--max-tokens=4",
                     "--min-tokens=1",
                     "--temperature=0.5",
                     "--top-k=7",
                     "--top-p=0.9",
                     "--min-p=0.05",
                     "--repetition-penalty=1.1",
                     "--presence-penalty=0.2",
                     "--frequency-penalty=-0.3",
                     "--seed=99",
                     "--stop=END",
                     "--stop",
                     "HALT",
                     "--stop-token-id=2",
                     "--ignore-eos",
                     "--include-stop-str",
                     "--logprobs=3",
                     "--no-special-tokens"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "t0 t1 t2 t3 \n");
  ASSERT_EQ(service_.requests().size(), 1u);
  const v1::GenerateRequest q = service_.requests()[0];
  EXPECT_EQ(q.text(), "hello");
  EXPECT_FALSE(q.add_special_tokens());
  EXPECT_EQ(q.max_tokens(), 4);
  EXPECT_EQ(q.min_tokens(), 1);
  EXPECT_FLOAT_EQ(q.temperature(), 0.5f);
  EXPECT_EQ(q.top_k(), 7);
  EXPECT_FLOAT_EQ(q.top_p(), 0.9f);
  EXPECT_FLOAT_EQ(q.min_p(), 0.05f);
  EXPECT_FLOAT_EQ(q.repetition_penalty(), 1.1f);
  EXPECT_FLOAT_EQ(q.presence_penalty(), 0.2f);
  EXPECT_FLOAT_EQ(q.frequency_penalty(), -0.3f);
  EXPECT_EQ(q.seed(), 99u);
  ASSERT_EQ(q.stop_size(), 2);
  EXPECT_EQ(q.stop(1), "HALT");
  ASSERT_EQ(q.stop_token_ids_size(), 1);
  EXPECT_TRUE(q.ignore_eos());
  EXPECT_TRUE(q.include_stop_str_in_output());
  EXPECT_EQ(q.logprobs(), 3);

  // Unset optional fields stay unset: the server's defaults apply.
  r = Cli({"generate", "hi"});
  ASSERT_EQ(r.code, 0) << r.err;
  const v1::GenerateRequest d = service_.requests()[1];
  EXPECT_FALSE(d.has_max_tokens());
  EXPECT_FALSE(d.has_temperature());
  EXPECT_FALSE(d.has_top_p());
  EXPECT_FALSE(d.has_seed());
  EXPECT_FALSE(d.has_logprobs());
  EXPECT_FALSE(d.has_add_special_tokens());
}

TEST_F(FakeServiceTest, GenerateJsonLinesAndInputs) {
  CliResult r = Cli({"--json", "generate", "x", "--max-tokens=3"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::istringstream lines(r.out);
  std::string line;
  int tokens = 0, n = 0;
  nlohmann::json last;
  while (std::getline(lines, line)) {
    last = nlohmann::json::parse(line);
    tokens += static_cast<int>(last["token_ids"].size());
    ++n;
  }
  EXPECT_EQ(n, 2);  // chunks of 1 and 2 tokens
  EXPECT_EQ(tokens, 3);
  EXPECT_EQ(last["finish_reason"], "FINISH_REASON_LENGTH");
  EXPECT_EQ(last["usage"]["completion_tokens"], 3);

  r = Cli({"generate", "--token-ids=5,6,7", "--max-tokens=1"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(service_.requests().back().token_ids().ids_size(), 3);
  r = Cli({"generate", "q", "--system", "be terse", "--max-tokens=1"});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_EQ(service_.requests().back().messages().messages_size(), 2);
  EXPECT_EQ(service_.requests().back().messages().messages(0).role(), "system");
  r = Cli({"generate", "--prompt-file=-", "--max-tokens=1"}, "from stdin");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(service_.requests().back().text(), "from stdin");
  r = Cli({"generate", "a", "--token-ids=1"});
  EXPECT_EQ(r.code, 2);
  r = Cli({"generate"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("exactly one of"), std::string::npos);
}

TEST_F(FakeServiceTest, ServerErrorsExitThreeWithCodeAndMessage) {
  CliResult r = Cli({"generate", "hi", "--top-p=2"});
  EXPECT_EQ(r.code, 3);
  EXPECT_EQ(r.err, "error: INVALID_ARGUMENT: top_p: must be in (0, 1], got 2\n");
  EXPECT_EQ(r.out, "");  // nothing streamed, nothing printed
  r = Cli({"generate", "die", "--max-tokens=10"});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("INTERNAL: boom"), std::string::npos);
  EXPECT_NE(r.out.find("t0"), std::string::npos);  // what came before the failure is shown
  r = Cli({"generate", "engine-error"});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("nan in logits"), std::string::npos);
}

TEST_F(FakeServiceTest, ChatKeepsTheConversationAndResets) {
  CliResult r = Cli({"chat", "--system=sys", "--max-tokens=2"},
                    "first question\nsecond question\n/reset\nthird\n/exit\nnever sent\n");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::vector<v1::GenerateRequest> q = service_.requests();
  ASSERT_EQ(q.size(), 3u);
  ASSERT_EQ(q[0].messages().messages_size(), 2);  // system, user
  ASSERT_EQ(q[1].messages().messages_size(), 4);  // system, user, assistant, user
  EXPECT_EQ(q[1].messages().messages(2).role(), "assistant");
  EXPECT_EQ(q[1].messages().messages(2).content(), "t0 t1 ");
  EXPECT_EQ(q[1].messages().messages(3).content(), "second question");
  ASSERT_EQ(q[2].messages().messages_size(), 2);  // after /reset: system, user
  EXPECT_EQ(q[2].messages().messages(1).content(), "third");
  EXPECT_EQ(q[2].max_tokens(), 2);
  // A failed turn in a script ends the chat with exit 3.
  r = Cli({"chat", "--top-p=2"}, "hello\n");
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("INVALID_ARGUMENT"), std::string::npos);
  // A line that is not UTF-8 is refused before it is sent (exit 2 in a script).
  const size_t sent = service_.requests().size();
  r = Cli({"chat"}, "caf\xe9\n");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("not valid UTF-8"), std::string::npos) << r.err;
  EXPECT_EQ(service_.requests().size(), sent);
}

// With stdin from a pipe, stdout carries only the replies, one per line (docs/cli.md):
// "/reset" and "/help" wrote "(conversation cleared)" and the help line into it.
TEST_F(FakeServiceTest, PipedChatStdoutHasOnlyTheReplies) {
  CliResult r = Cli({"chat", "--max-tokens=2"}, "q1\n/reset\n/help\nq2\n");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "t0 t1 \nt0 t1 \n");
  EXPECT_NE(r.err.find("(conversation cleared)"), std::string::npos) << r.err;
}

TEST_F(FakeServiceTest, TokenizeInfoHealth) {
  CliResult r = Cli({"tokenize", "AB"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "65 66\n");
  r = Cli({"tokenize", "AB", "--count"});
  EXPECT_EQ(r.out, "2\n");
  r = Cli({"tokenize", "A", "--tokens"});
  EXPECT_EQ(r.out, "65\tA\n");
  r = Cli({"--json", "tokenize", "A"});
  EXPECT_EQ(nlohmann::json::parse(r.out)["token_ids"][0], 65);
  r = Cli({"info"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("fake-in-process"), std::string::npos);
  EXPECT_NE(r.out.find("K sparsity 0.7"), std::string::npos);
  r = Cli({"info", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["model_info"]["max_model_len"], 4096);
  EXPECT_EQ(j["server_state"]["steps"], "42");  // int64 is a string in proto JSON
  r = Cli({"health"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "SERVING\n");
  r = Cli({"health", "--service=no.such.Service"});
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("NOT_FOUND"), std::string::npos);
}

// leank-cli ARGS... with empty stdin and no server: (exit code, stderr + stdout).
std::pair<int, std::string> RunCliArgs(std::vector<std::string> args) {
  args.insert(args.begin(), "leank-cli");
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  std::istringstream in;
  std::ostringstream out, err;
  const int code = client::RunCli(static_cast<int>(argv.size()), argv.data(), in, out, err, false);
  return {code, err.str() + out.str()};
}

TEST(CliUsage, BadFlagsExitTwoWithAMessage) {
  for (const auto& args :
       std::vector<std::vector<std::string>>{{},
                                             {"frobnicate"},
                                             {"generate", "x", "--temperature=warm"},
                                             {"generate", "x", "--no-such-flag"},
                                             {"tokenize"},
                                             {"--timeout=-1", "health"},
                                             {"detokenize", "1,x"}}) {
    auto [code, msg] = RunCliArgs(args);
    EXPECT_EQ(code, 2) << ::testing::PrintToString(args);
    EXPECT_FALSE(msg.empty());
  }
  // Refused before any call (no server here): invalid UTF-8 used to reach protobuf's
  // serializer (INTERNAL with an empty message), "-1" / 2^64 seeds wrapped or clamped,
  // and an empty id list was read as token 0.
  for (const auto& [args, want] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"generate", "ab\xff"}, "PROMPT: not valid UTF-8"},
           {{"generate", "x", "--stop=\xff"}, "--stop: not valid UTF-8"},
           {{"generate", "x", "--system=\xc3"}, "--system: not valid UTF-8"},
           {{"tokenize", "\xff"}, "TEXT: not valid UTF-8"},
           {{"chat", "--stop=\xff"}, "--stop: not valid UTF-8"},
           {{"generate", "x", "--seed=-1"}, "--seed"},
           {{"generate", "x", "--seed=18446744073709551616"}, "--seed"},
           {{"detokenize", ""}, "empty item"},
           // NaN passed CLI11's NonNegativeNumber and reached a duration cast, like 1e300
           // (undefined); "abc" was answered with a range ending in DBL_MAX.
           {{"--timeout=nan", "health"}, "--timeout: must be a number in [0, 1000000000]"},
           {{"--timeout=1e300", "health"}, "--timeout"},
           {{"--timeout=abc", "health"}, "got abc"},
           {{"--server", "", "health"}, "--server"},
           // An empty prompt file went to the server (exit 3, "text: empty"); flags that
           // shape a text prompt were ignored beside token ids or a chat.
           {{"generate", "--prompt-file", "-"}, "--prompt-file: stdin is empty"},
           {{"generate", "--token-ids=1,2", "--chat"}, "excludes"},
           {{"generate", "--token-ids=1,2", "--system=be brief"}, "excludes"},
           {{"generate", "--token-ids=1,2", "--no-special-tokens"}, "excludes"},
           {{"generate", "x", "--chat", "--no-special-tokens"}, "excludes"}}) {
    auto [code, msg] = RunCliArgs(args);
    EXPECT_EQ(code, 2) << ::testing::PrintToString(args) << msg;
    EXPECT_NE(msg.find(want), std::string::npos) << msg;
  }
  auto [code, msg] = RunCliArgs({"generate", "--help"});
  EXPECT_EQ(code, 0);
  EXPECT_NE(msg.find("--repetition-penalty"), std::string::npos);
}

// --stop and --stop-token-id take one value each (repeat the flag for more): they took
// every word after them, so `generate --stop . "The sky is"` sent the prompt as a second
// stop string and failed with "give exactly one of PROMPT, ...".
TEST_F(FakeServiceTest, StopFlagsTakeOneValueAndLeaveThePrompt) {
  CliResult r = Cli({"generate", "--stop", ".", "The sky is", "--max-tokens=1"});
  ASSERT_EQ(r.code, 0) << r.err;
  v1::GenerateRequest q = service_.requests().back();
  EXPECT_EQ(q.text(), "The sky is");
  ASSERT_EQ(q.stop_size(), 1);
  EXPECT_EQ(q.stop(0), ".");
  r = Cli({"generate", "--stop-token-id", "2", "hello", "--stop-token-id", "3", "--stop", "a",
           "--stop", "b", "--max-tokens=1"});
  ASSERT_EQ(r.code, 0) << r.err;
  q = service_.requests().back();
  EXPECT_EQ(q.text(), "hello");
  ASSERT_EQ(q.stop_token_ids_size(), 2);
  EXPECT_EQ(q.stop_token_ids(0), 2);
  EXPECT_EQ(q.stop_token_ids(1), 3);
  ASSERT_EQ(q.stop_size(), 2);
  EXPECT_EQ(q.stop(1), "b");
}

// `info --json` prints every field, zeros and false included: a script reading
// .server_state.running or .model_info.masked got null on an idle or dense server.
TEST_F(FakeServiceTest, InfoJsonHasEveryFieldEvenWhenZero) {
  CliResult r = Cli({"--json", "info"});
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  for (const char* f : {"running", "waiting", "kv_usage", "num_preemptions", "pending",
                        "active_streams", "draining"}) {
    EXPECT_TRUE(j["server_state"].contains(f)) << f << ": " << r.out;
  }
  for (const char* f : {"architecture", "dtype", "sink", "recent", "block_size",
                        "kv_capacity_tokens", "has_chat_template"}) {
    EXPECT_TRUE(j["model_info"].contains(f)) << f << ": " << r.out;
  }
  EXPECT_EQ(j["server_state"]["running"], 0);
  EXPECT_EQ(j["server_state"]["draining"], false);
}

// --server is HOST:PORT (or a gRPC target with a scheme): a missing port went to gRPC's
// default 443, a port past 65535 wrapped (127.0.0.1:99999 dialled port 34463) and an
// http:// URL failed as a DNS lookup, each an exit 3 that looked like a server problem.
TEST(CliUsage, ServerAddressIsHostColonPort) {
  for (const char* bad :
       {"localhost", "127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:", ":50051", "host:50051x",
        "http://127.0.0.1:50051", "https://h:443", "::1:50051", "[::1]", "a b:1"}) {
    auto [code, msg] = RunCliArgs({"--server", bad, "--timeout=1", "health"});
    EXPECT_EQ(code, 2) << bad << ": " << msg;
    EXPECT_EQ(msg.rfind("--server:", 0), 0u) << bad << ": " << msg;
  }
  // Well-formed targets pass the check and fail to connect (exit 3, nobody listens).
  for (const char* ok : {"127.0.0.1:1", "localhost:1", "[::1]:1", "ipv4:127.0.0.1:1",
                         "dns:///localhost:1", "unix:/nonexistent/leank.sock"}) {
    auto [code, msg] = RunCliArgs({"--server", ok, "--timeout=5", "health"});
    EXPECT_EQ(code, 3) << ok << ": " << msg;
  }
}

TEST(CliUsage, DeadlinesNeverOverflow) {
  const auto none = std::chrono::system_clock::time_point::max();  // gRPC: infinite
  EXPECT_EQ(client::DeadlineIn(0), none);  // "0: no limit", as documented (was one day)
  EXPECT_EQ(client::DeadlineIn(std::nan("")), none);
  EXPECT_EQ(client::DeadlineIn(1e300), none);
  EXPECT_EQ(client::DeadlineIn(INFINITY), none);
  const auto before = std::chrono::system_clock::now();
  const auto in5 = client::DeadlineIn(5);
  const auto after = std::chrono::system_clock::now();
  EXPECT_GE(in5, before + std::chrono::seconds(5));
  EXPECT_LE(in5, after + std::chrono::seconds(5));
  const auto far = client::DeadlineIn(client::kMaxTimeoutSeconds);
  EXPECT_LT(far, none);
  EXPECT_GT(far, std::chrono::system_clock::now() + std::chrono::hours(24 * 365 * 30));
}

TEST_F(FakeServiceTest, RunnerCountsTokensLikeTheServerAcrossMultiTokenChunks) {
  auto stub = std::shared_ptr<v1::LeankService::StubInterface>(
      v1::LeankService::NewStub(client::MakeChannel(target_)));
  std::vector<bench::BenchPrompt> prompts(3);
  for (int i = 0; i < 3; ++i) {
    prompts[i].token_ids.assign(10 + i, 7);
    prompts[i].input_tokens = 10 + i;
    prompts[i].output_tokens = 4 + i;
  }
  bench::RunOptions o;
  o.concurrency = 3;
  o.num_requests = 12;
  bench::SteadyClock clock;
  bench::Progress progress;
  bench::RunResult res = bench::RunLoad(stub, prompts, {}, o, &clock, &progress, nullptr);
  ASSERT_EQ(res.records.size(), 12u);
  EXPECT_EQ(progress.done.load(), 12);
  EXPECT_LE(service_.max_in_flight(), 3);
  std::set<int64_t> indices;
  for (const bench::RequestRecord& r : res.records) {
    EXPECT_TRUE(r.ok) << r.error_code << " " << r.error_message;
    indices.insert(r.index);
    const bench::BenchPrompt& p = prompts[r.index % 3];
    EXPECT_EQ(r.output_tokens, p.output_tokens);
    EXPECT_EQ(r.server_completion_tokens, r.output_tokens);
    EXPECT_EQ(r.server_prompt_tokens, p.input_tokens);
    EXPECT_EQ(r.input_tokens_requested, p.input_tokens);
    EXPECT_EQ(r.finish_reason, "length");
    ASSERT_FALSE(r.chunk_s.empty());
    for (size_t i = 1; i < r.chunk_s.size(); ++i) EXPECT_GE(r.chunk_s[i], r.chunk_s[i - 1]);
    EXPECT_GE(r.end_s, r.chunk_s.back());
  }
  EXPECT_EQ(indices.size(), 12u);
  const bench::Report rep = bench::BuildReport(res.records, {}, res.duration_s);
  EXPECT_EQ(rep.usage_mismatches, 0);
  EXPECT_EQ(rep.prompt_mismatches, 0);
  EXPECT_EQ(rep.output_tokens, 4 * (4 + 5 + 6));
}

TEST_F(FakeServiceTest, RunnerCountsErrorsByCode) {
  auto stub = std::shared_ptr<v1::LeankService::StubInterface>(
      v1::LeankService::NewStub(client::MakeChannel(target_)));
  std::vector<bench::BenchPrompt> prompts(4);
  prompts[0].text = "exhausted";
  prompts[1].text = "die";
  prompts[2].text = "engine-error";
  prompts[3].text = "fine";
  for (auto& p : prompts) p.output_tokens = 6;
  bench::RunOptions o;
  o.request_rate = 200;  // open loop
  o.max_concurrency = 2;
  o.num_requests = 8;
  bench::SteadyClock clock;
  bench::Progress progress;
  bench::RunResult res = bench::RunLoad(stub, prompts, {}, o, &clock, &progress, nullptr);
  const bench::Report rep = bench::BuildReport(res.records, {}, res.duration_s);
  EXPECT_LE(service_.max_in_flight(), 2);
  EXPECT_EQ(rep.completed, 2);
  EXPECT_EQ(rep.failed, 6);
  EXPECT_EQ(rep.errors.at("RESOURCE_EXHAUSTED"), 2);
  EXPECT_EQ(rep.errors.at("INTERNAL"), 2);
  EXPECT_EQ(rep.errors.at("FINISH_REASON_ERROR"), 2);
  EXPECT_EQ(progress.errors.load(), 6);
}

TEST_F(FakeServiceTest, StopCancelsRequestsInFlight) {
  service_.set_step_ms(50);  // 100 tokens in ~3.4 s
  auto stub = std::shared_ptr<v1::LeankService::StubInterface>(
      v1::LeankService::NewStub(client::MakeChannel(target_)));
  std::vector<bench::BenchPrompt> prompts(1);
  prompts[0].token_ids = {1, 2, 3};
  prompts[0].output_tokens = 100;
  bench::RunOptions o;
  o.concurrency = 2;
  o.num_requests = 10;
  o.timeout_s = 120;
  bench::SteadyClock clock;
  bench::Progress progress;
  std::atomic<bool> stop{false};
  bool both_in_flight = false;
  std::thread stopper([&] {
    // Stop once the service is streaming both first requests (each then needs 3.4 s of
    // the service's sleeps to finish). The bound only ends a hang; the test asserts
    // that the state was reached.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!(both_in_flight = service_.requests().size() >= 2) &&
           std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    stop = true;
  });
  bench::RunResult res = bench::RunLoad(stub, prompts, {}, o, &clock, &progress, &stop);
  stopper.join();
  ASSERT_TRUE(both_in_flight) << "the service never saw two requests";
  ASSERT_EQ(res.records.size(), 2u);  // the two first requests; nothing sent after stop
  EXPECT_EQ(service_.requests().size(), 2u);
  for (const bench::RequestRecord& r : res.records) {
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.error_code, "CANCELLED");
    EXPECT_LT(r.output_tokens, 100);  // cut short, not waited for
  }
}

TEST(Runner, UnreachableServerGivesErrorsNotAHang) {
  // A port nobody listens on (bound, then closed).
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  const int port = ntohs(addr.sin_port);
  auto stub = std::shared_ptr<v1::LeankService::StubInterface>(
      v1::LeankService::NewStub(client::MakeChannel("127.0.0.1:" + std::to_string(port))));
  std::vector<bench::BenchPrompt> prompts(1);
  prompts[0].token_ids = {1, 2, 3};
  prompts[0].output_tokens = 2;
  bench::RunOptions o;
  o.concurrency = 2;
  o.num_requests = 10;
  o.timeout_s = 5;
  o.max_errors = 4;
  bench::SteadyClock clock;
  bench::Progress progress;
  bench::RunResult res = bench::RunLoad(stub, prompts, {}, o, &clock, &progress, nullptr);
  ASSERT_GE(res.records.size(), 4u);  // stops soon after 4 errors (2 may be in flight)
  ASSERT_LE(res.records.size(), 6u);
  for (const bench::RequestRecord& r : res.records) {
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.error_code, "UNAVAILABLE");
  }
}

}  // namespace
}  // namespace leank
