// End-to-end: real server processes on loopback ports, driven over gRPC and HTTP.
// Each test runs twice: on leank-fake-server (the whole server over a FakeEngine,
// seconds) and on leank-server with SmolLM2 on the CPU backend (skipped when the
// converted model is not under .cache/models; LEANK_E2E_MODEL overrides the path).

#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <thread>

#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "grpcpp/impl/client_unary_call.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/e2e_util.h"

namespace leank::e2e {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using HealthStatus = grpc::health::v1::HealthCheckResponse;

struct Flavor {
  std::string name;
  std::string binary;
  std::vector<std::string> args;
  int short_tokens;                  // generations compared token for token
  int long_tokens;                   // a stream that lasts a few seconds
  std::vector<std::string> tiny_kv;  // flags of a KV pool small enough to force preemption
  seconds start_timeout;
};

std::string SmolLm2Dir() {
  if (const char* p = std::getenv("LEANK_E2E_MODEL")) return p;
  return std::string(LEANK_SOURCE_DIR) + "/.cache/models/smollm2-135m-instruct";
}

Flavor MakeFlavor(const std::string& name) {
  if (name == "fake") {
    // KV: 10 blocks of 16 tokens (the fake counts 1 KiB per token).
    return {"fake",
            LEANK_FAKE_SERVER_BIN,
            {"--model=fake"},
            24,
            1500,
            {"--kv-cache-memory=163840", "--admission=optimistic"},
            seconds(30)};
  }
  if (name == "smollm2_leank") {
    // LeanK layout: a random 50% K mask, sink 16 + recent 16, so generations of 40+
    // tokens compact blocks into the pruned pool. 8 MB at a 128-token target: 127 tokens.
    return {"smollm2_leank",
            LEANK_SERVER_BIN,
            {"--model=" + SmolLm2Dir(), "--backend=cpu", "--num-threads=2", "--max-model-len=512",
             "--masks=" + std::string(LEANK_TEST_DATA_DIR) +
                 "/cache/smollm2-random50.leank.safetensors",
             "--sink=16", "--recent=16", "--max-batched-tokens=32"},
            40,
            96,
            {"--kv-cache-memory=8000000", "--target-context=128", "--admission=optimistic"},
            seconds(300)};
  }
  // SmolLM2-135M, fp32 KV: 30 layers x 3 kv heads x 64 x 2 x 4 B = 46080 B per token.
  // 6 blocks of 16 tokens: two or three of the test's requests at a time.
  return {"smollm2",
          LEANK_SERVER_BIN,
          {"--model=" + SmolLm2Dir(), "--backend=cpu", "--num-threads=2", "--max-model-len=512"},
          8,
          96,
          {"--kv-cache-memory=" + std::to_string(6 * 16 * 46080), "--admission=optimistic"},
          seconds(300)};
}

std::string LogPath(const std::string& tag) {
  return (std::filesystem::temp_directory_path() /
          ("leank-e2e-" + tag + "-" + std::to_string(getpid()) + ".log"))
      .string();
}

v1::GenerateRequest Greedy(const std::string& text, int max_tokens) {
  v1::GenerateRequest req;
  req.set_text(text);
  req.set_max_tokens(max_tokens);
  req.set_temperature(0);
  req.set_ignore_eos(true);
  return req;
}

std::string Prompt(int i) {
  static const char* kTopics[] = {"the sea",  "a small robot", "winter", "bread",
                                  "the moon", "a library",     "trains", "music"};
  return "Write one sentence about " + std::string(kTopics[i % 8]) + " number " +
         std::to_string(i) + ".";
}

// The bound of a wait for a server state that only a hang reaches, on a loaded CI
// machine too (ctest -j2 on 2 cores, SmolLM2 on the CPU): tests assert the state, never
// how fast it came.
constexpr milliseconds kHang(60000);

// Polls `pred` every 20 ms for at most `timeout`.
bool Eventually(const std::function<bool()>& pred, milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (pred()) return true;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return pred();
}

v1::ServerState State(ServerProcess& server) {
  auto stub = server.Stub();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(5));
  v1::ServerState st;
  EXPECT_TRUE(stub->GetServerState(&ctx, v1::GetServerStateRequest(), &st).ok());
  return st;
}

bool Idle(ServerProcess& server) {
  const v1::ServerState st = State(server);
  return st.running() == 0 && st.waiting() == 0 && st.pending() == 0 && st.kv_usage() == 0.0;
}

class ServerE2E : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    flavor_ = MakeFlavor(GetParam());
    if (flavor_.name != "fake" && !std::filesystem::exists(SmolLm2Dir() + "/model.safetensors")) {
      GTEST_SKIP() << "no converted SmolLM2 at " << SmolLm2Dir();
    }
  }

  // The shared server of a flavor, started on first use.
  ServerProcess& Shared() {
    auto& slot = shared_[flavor_.name];
    if (!slot || !slot->Alive()) {
      slot = StartServer("shared", {});
    }
    return *slot;
  }

  std::unique_ptr<ServerProcess> StartServer(const std::string& tag,
                                             std::vector<std::string> extra) {
    std::vector<std::string> args = flavor_.args;
    args.insert(args.end(), extra.begin(), extra.end());
    bool up = false;
    auto server = ServerProcess::StartServing(
        flavor_.binary, args, LogPath(flavor_.name + "-" + tag), flavor_.start_timeout, &up);
    EXPECT_TRUE(up) << "server did not become SERVING; log:\n" << server->Log();
    return up ? std::move(server) : nullptr;
  }

  static void TearDownTestSuite() { shared_.clear(); }

  Flavor flavor_;
  static std::map<std::string, std::unique_ptr<ServerProcess>> shared_;
};

std::map<std::string, std::unique_ptr<ServerProcess>> ServerE2E::shared_;

TEST_P(ServerE2E, ConcurrentStreamsMatchSequentialRuns) {
  ServerProcess& server = Shared();
  auto stub = server.Stub();
  constexpr int kClients = 32;
  std::vector<StreamResult> sequential(kClients), concurrent(kClients);
  for (int i = 0; i < kClients; ++i) {
    sequential[i] = Generate(*stub, Greedy(Prompt(i), flavor_.short_tokens));
    ASSERT_TRUE(sequential[i].status.ok()) << sequential[i].status.error_message();
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      auto own = server.Stub();
      concurrent[i] = Generate(*own, Greedy(Prompt(i), flavor_.short_tokens));
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    ASSERT_TRUE(concurrent[i].status.ok()) << i << ": " << concurrent[i].status.error_message();
    EXPECT_EQ(concurrent[i].token_ids, sequential[i].token_ids) << "client " << i;
    EXPECT_EQ(concurrent[i].text, sequential[i].text) << "client " << i;
    EXPECT_EQ(static_cast<int>(concurrent[i].token_ids.size()), flavor_.short_tokens);
    EXPECT_EQ(concurrent[i].finish_reason, v1::FINISH_REASON_LENGTH);
    const v1::GenerateResponse& last = concurrent[i].chunks.back();
    EXPECT_EQ(last.usage().completion_tokens(), flavor_.short_tokens);
    EXPECT_GT(last.usage().prompt_tokens(), 0);
    EXPECT_GT(last.timings().time_to_first_token_s(), 0);
  }
  EXPECT_TRUE(Eventually([&] { return Idle(server); }, kHang));
}

TEST_P(ServerE2E, ClientDisconnectFreesBlocks) {
  ServerProcess& server = Shared();
  ASSERT_TRUE(Eventually([&] { return Idle(server); }, kHang));
  const std::string before = HttpGet(server.http_port(), "/metrics");
  const double aborts_before =
      MetricValue(before, "leank:request_success_total", "finished_reason=\"abort\"").value_or(-1);
  ASSERT_GE(aborts_before, 0);

  auto stub = server.Stub();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(120));
  auto reader = stub->Generate(&ctx, Greedy(Prompt(1), flavor_.long_tokens));
  v1::GenerateResponse chunk;
  int chunks = 0;
  while (chunks < 3 && reader->Read(&chunk)) ++chunks;
  ASSERT_EQ(chunks, 3);
  const v1::ServerState busy = State(server);
  EXPECT_EQ(busy.running(), 1);
  EXPECT_GT(busy.kv_usage(), 0.0);
  ctx.TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);

  EXPECT_TRUE(Eventually([&] { return Idle(server); }, kHang)) << State(server).DebugString();
  const std::string after = HttpGet(server.http_port(), "/metrics");
  EXPECT_EQ(MetricValue(after, "leank:num_requests_running"), 0.0);
  EXPECT_EQ(MetricValue(after, "leank:kv_cache_usage_perc"), 0.0);
  EXPECT_EQ(MetricValue(after, "leank:request_success_total", "finished_reason=\"abort\""),
            aborts_before + 1);
}

TEST_P(ServerE2E, DeadlineExceededAbortsAndFreesBlocks) {
  ServerProcess& server = Shared();
  auto stub = server.Stub();
  StreamResult r = Generate(*stub, Greedy(Prompt(2), flavor_.long_tokens), milliseconds(400));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(Eventually([&] { return Idle(server); }, kHang)) << State(server).DebugString();
  // The server still serves.
  StreamResult ok = Generate(*stub, Greedy(Prompt(3), 4));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
}

// /metrics counts what clients received: nothing on a fresh server (the warm-up
// generation is not a client's), then the usage of every stream and one latency
// observation per request (per token after the first for the inter-token latency).
TEST_P(ServerE2E, MetricsCountWhatClientsReceived) {
  auto server = StartServer("metrics", {});
  ASSERT_NE(server, nullptr);
  const std::string fresh = HttpGet(server->http_port(), "/metrics");
  EXPECT_EQ(MetricValue(fresh, "leank:prompt_tokens_total"), 0.0) << fresh;
  EXPECT_EQ(MetricValue(fresh, "leank:generation_tokens_total"), 0.0);
  EXPECT_EQ(MetricValue(fresh, "leank:request_success_total", "finished_reason=\"length\""), 0.0);
  EXPECT_EQ(MetricValue(fresh, "leank:time_to_first_token_seconds_count"), 0.0);
  EXPECT_EQ(MetricValue(fresh, "leank:e2e_request_latency_seconds_count"), 0.0);

  auto stub = server->Stub();
  constexpr int kRequests = 3;
  int64_t prompt = 0, completion = 0, received = 0;
  for (int i = 0; i < kRequests; ++i) {
    StreamResult r = Generate(*stub, Greedy(Prompt(i), 3 + i));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    prompt += r.chunks.back().usage().prompt_tokens();
    completion += r.chunks.back().usage().completion_tokens();
    received += static_cast<int64_t>(r.token_ids.size());
  }
  EXPECT_EQ(completion, received);
  const std::string m = HttpGet(server->http_port(), "/metrics");
  EXPECT_EQ(MetricValue(m, "leank:prompt_tokens_total"), static_cast<double>(prompt)) << m;
  EXPECT_EQ(MetricValue(m, "leank:generation_tokens_total"), static_cast<double>(completion));
  EXPECT_EQ(MetricValue(m, "leank:request_success_total", "finished_reason=\"length\""),
            static_cast<double>(kRequests));
  EXPECT_EQ(MetricValue(m, "leank:time_to_first_token_seconds_count"), kRequests);
  EXPECT_EQ(MetricValue(m, "leank:request_queue_time_seconds_count"), kRequests);
  EXPECT_EQ(MetricValue(m, "leank:e2e_request_latency_seconds_count"), kRequests);
  EXPECT_EQ(MetricValue(m, "leank:time_per_output_token_seconds_count"), kRequests);
  EXPECT_EQ(MetricValue(m, "leank:inter_token_latency_seconds_count"),
            static_cast<double>(completion - kRequests));
}

// A second server on a port in use exits with a message instead of sharing the port
// (gRPC's default SO_REUSEPORT would let both listen and split the connections).
TEST_P(ServerE2E, SecondServerOnThePortInUseFailsClearly) {
  ServerProcess& server = Shared();
  // `timeout`: were the port shared, the second server would run until killed.
  std::string cmd = "timeout 60 " + flavor_.binary;
  for (const std::string& a : flavor_.args) cmd += " '" + a + "'";
  cmd +=
      " --host=127.0.0.1 --port=" + std::to_string(server.grpc_port()) + " --metrics-port=0 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof(buf), pipe)) out.append(buf, n);
  const int status = pclose(pipe);
  ASSERT_TRUE(WIFEXITED(status)) << out;
  EXPECT_NE(WEXITSTATUS(status), 0) << out;
  EXPECT_NE(out.find("cannot listen on 127.0.0.1:" + std::to_string(server.grpc_port())),
            std::string::npos)
      << out;
  // The first server keeps serving.
  EXPECT_EQ(server.Health(), grpc::health::v1::HealthCheckResponse::SERVING);
  auto stub = server.Stub();
  grpc::ClientContext ctx;
  v1::ModelInfo info;
  EXPECT_TRUE(stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
}

TEST_P(ServerE2E, PreemptionUnderTinyKvBudgetKeepsOutputs) {
  ServerProcess& reference = Shared();
  auto tiny = StartServer("tiny-kv", flavor_.tiny_kv);
  ASSERT_NE(tiny, nullptr);
  {
    auto stub = tiny->Stub();
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    const grpc::Status st = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
    // Failed once in CI under load (status not recorded then): say what came back.
    ASSERT_TRUE(st.ok()) << "GetModelInfo: code " << st.error_code() << ": " << st.error_message()
                         << "\nserver alive: " << tiny->Alive() << "\nlog:\n"
                         << tiny->Log();
    EXPECT_LE(info.kv_capacity_tokens(), 160);
    // A request that fits the context but never the pool: refused up front, naming
    // max_tokens (before, the engine refused it with a message naming no field).
    if (info.kv_capacity_tokens() + 8 < info.max_model_len()) {
      const StreamResult r =
          Generate(*stub, Greedy("hello", static_cast<int>(info.kv_capacity_tokens())));
      EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_EQ(r.status.error_message().rfind("max_tokens:", 0), 0u) << r.status.error_message();
      EXPECT_NE(r.status.error_message().find("KV cache capacity"), std::string::npos)
          << r.status.error_message();
    } else {
      ADD_FAILURE() << "tiny KV pool " << info.kv_capacity_tokens() << " tokens, context "
                    << info.max_model_len() << ": the pool must be the tighter limit here";
    }
  }
  constexpr int kRequests = 8;
  const int tokens = flavor_.short_tokens * 2;
  std::vector<StreamResult> expected(kRequests), got(kRequests);
  auto ref_stub = reference.Stub();
  for (int i = 0; i < kRequests; ++i) {
    expected[i] = Generate(*ref_stub, Greedy(Prompt(i), tokens));
    ASSERT_TRUE(expected[i].status.ok()) << expected[i].status.error_message();
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] {
      auto stub = tiny->Stub();
      got[i] = Generate(*stub, Greedy(Prompt(i), tokens));
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(got[i].status.ok()) << i << ": " << got[i].status.error_message();
    EXPECT_EQ(got[i].token_ids, expected[i].token_ids) << "request " << i;
    EXPECT_EQ(got[i].text, expected[i].text) << "request " << i;
  }
  const v1::ServerState st = State(*tiny);
  EXPECT_GT(st.num_preemptions(), 0);
  const std::string metrics = HttpGet(tiny->http_port(), "/metrics");
  EXPECT_GT(MetricValue(metrics, "leank:num_preemptions_total").value_or(0), 0);
  EXPECT_TRUE(Eventually([&] { return Idle(*tiny); }, kHang));
}

struct InvalidCase {
  std::string field;
  std::function<void(v1::GenerateRequest*)> mutate;
};

TEST_P(ServerE2E, EveryInvalidFieldIsNamed) {
  ServerProcess& server = Shared();
  auto stub = server.Stub();
  const float nan = std::nanf("");
  const std::vector<InvalidCase> cases = {
      {"input", [](auto* r) { r->clear_text(); }},
      {"text", [](auto* r) { r->set_text(""); }},
      {"messages", [](auto* r) { r->mutable_messages(); }},
      {"messages[0].role",
       [](auto* r) {
         auto* m = r->mutable_messages()->add_messages();
         m->set_role("wizard");
         m->set_content("hi");
       }},
      {"token_ids", [](auto* r) { r->mutable_token_ids(); }},
      {"token_ids[1]",
       [](auto* r) {
         r->mutable_token_ids()->add_ids(1);
         r->mutable_token_ids()->add_ids(1 << 30);
       }},
      {"token_ids[0]", [](auto* r) { r->mutable_token_ids()->add_ids(-1); }},
      {"max_tokens", [](auto* r) { r->set_max_tokens(0); }},
      {"max_tokens", [](auto* r) { r->set_max_tokens(-5); }},
      {"max_tokens", [](auto* r) { r->set_max_tokens(1 << 30); }},
      {"min_tokens", [](auto* r) { r->set_min_tokens(-1); }},
      {"min_tokens", [](auto* r) { r->set_min_tokens(r->max_tokens() + 1); }},
      {"temperature", [nan](auto* r) { r->set_temperature(nan); }},
      {"temperature", [](auto* r) { r->set_temperature(-0.5f); }},
      {"top_k", [](auto* r) { r->set_top_k(-2); }},  // -1 is vLLM's "off", valid
      {"top_p", [](auto* r) { r->set_top_p(0.0f); }},
      {"top_p", [](auto* r) { r->set_top_p(1.5f); }},
      {"top_p", [nan](auto* r) { r->set_top_p(nan); }},
      {"min_p", [](auto* r) { r->set_min_p(-0.1f); }},
      {"min_p", [](auto* r) { r->set_min_p(1.1f); }},
      {"repetition_penalty", [](auto* r) { r->set_repetition_penalty(0.0f); }},
      {"repetition_penalty", [](auto* r) { r->set_repetition_penalty(100.0f); }},
      {"presence_penalty", [](auto* r) { r->set_presence_penalty(2.5f); }},
      {"frequency_penalty", [](auto* r) { r->set_frequency_penalty(-3.0f); }},
      {"frequency_penalty", [nan](auto* r) { r->set_frequency_penalty(nan); }},
      {"stop",
       [](auto* r) {
         for (int i = 0; i < 17; ++i) r->add_stop("s" + std::to_string(i));
       }},
      {"stop[1]",
       [](auto* r) {
         r->add_stop("ok");
         r->add_stop(std::string(300, 'x'));
       }},
      {"stop[0]", [](auto* r) { r->add_stop(""); }},
      {"stop_token_ids[0]", [](auto* r) { r->add_stop_token_ids(1 << 30); }},
      {"stop_token_ids",
       [](auto* r) {
         for (int i = 0; i < 65; ++i) r->add_stop_token_ids(1);
       }},
      {"logprobs", [](auto* r) { r->set_logprobs(21); }},
      {"logprobs", [](auto* r) { r->set_logprobs(-1); }},
      {"request_id", [](auto* r) { r->set_request_id(std::string(200, 'r')); }},
      {"request_id", [](auto* r) { r->set_request_id("a\n[b] finished: forged"); }},
      // Bytes that are not UTF-8 in every string field (protobuf's parser refused them
      // before the handler ran: INTERNAL with an empty message).
      {"text", [](auto* r) { r->set_text("ab\xff"); }},
      {"request_id", [](auto* r) { r->set_request_id("id\xc3"); }},
      {"stop[1]",
       [](auto* r) {
         r->add_stop("ok");
         r->add_stop("\xed\xa0\x80");  // a UTF-16 surrogate
       }},
      {"messages[0].content",
       [](auto* r) {
         auto* m = r->mutable_messages()->add_messages();
         m->set_role("user");
         m->set_content("\xc0\xaf");  // overlong '/'
       }},
      {"messages[1].role",
       [](auto* r) {
         auto* m = r->mutable_messages()->add_messages();
         m->set_role("user");
         m->set_content("hi");
         m = r->mutable_messages()->add_messages();
         m->set_role("\xff");
         m->set_content("hi");
       }},
  };
  for (const InvalidCase& c : cases) {
    v1::GenerateRequest req = Greedy("Hello there", 4);
    c.mutate(&req);
    StreamResult r = Generate(*stub, req, kHang);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << c.field << ": " << r.status.error_message();
    EXPECT_EQ(r.status.error_message().rfind(c.field + ":", 0), 0u)
        << "message should start with '" << c.field << ":', got: " << r.status.error_message();
    EXPECT_TRUE(r.chunks.empty());
  }
  // A prompt longer than the context.
  {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    ASSERT_TRUE(stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
    v1::GenerateRequest req = Greedy("x", 4);
    req.clear_text();
    for (int i = 0; i < info.max_model_len() + 1; ++i) req.mutable_token_ids()->add_ids(65);
    StreamResult r = Generate(*stub, req, kHang);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(r.status.error_message().rfind("input:", 0), 0u) << r.status.error_message();
  }
  // The server keeps serving, and counted the rejections.
  StreamResult ok = Generate(*stub, Greedy("Hello there", 4));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.token_ids.size(), 4u);
  const std::string metrics = HttpGet(server.http_port(), "/metrics");
  EXPECT_GE(
      MetricValue(metrics, "leank:request_rejected_total", "code=\"invalid_argument\"").value_or(0),
      static_cast<double>(cases.size()));
}

TEST_P(ServerE2E, BytesThatAreNotUtf8OrNotARequestAreNamed) {
  ServerProcess& server = Shared();
  auto stub = server.Stub();
  {
    grpc::ClientContext ctx;
    v1::TokenizeRequest req;
    req.set_text("x\xfey");
    v1::TokenizeResponse resp;
    const grpc::Status s = stub->Tokenize(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_EQ(s.error_message().rfind("text:", 0), 0u) << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    v1::TokenizeRequest req;
    auto* m = req.mutable_messages()->add_messages();
    m->set_role("user");
    m->set_content("\xff");
    v1::TokenizeResponse resp;
    const grpc::Status s = stub->Tokenize(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_EQ(s.error_message().rfind("messages[0].content:", 0), 0u) << s.error_message();
  }
  // Bytes that are no GenerateRequest / TokenizeRequest at all (a truncated field).
  for (const char* method :
       {"/leank.v1.LeankService/Generate", "/leank.v1.LeankService/Tokenize"}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
    const std::string junk =
        "\x12\x7f"
        "abc";  // field 2 (text), 127 bytes long, 3 sent
    grpc::Slice slice(junk);
    const grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer reply;
    const grpc::Status s = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
        server.channel().get(),
        grpc::internal::RpcMethod(method, grpc::internal::RpcMethod::NORMAL_RPC), &ctx, request,
        &reply);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << method << ": " << s.error_message();
    EXPECT_EQ(s.error_message().rfind("input:", 0), 0u) << s.error_message();
  }
  // Still serving: text and a chat through the same handlers.
  StreamResult ok = Generate(*stub, Greedy("Hello there", 3));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.token_ids.size(), 3u);
  {
    grpc::ClientContext ctx;
    v1::TokenizeRequest req;
    req.set_text("Hello");
    v1::TokenizeResponse resp;
    EXPECT_TRUE(stub->Tokenize(&ctx, req, &resp).ok());
    EXPECT_GT(resp.token_ids_size(), 0);
  }
}

TEST_P(ServerE2E, TokenizeDetokenizeModelInfoAndEndpoints) {
  ServerProcess& server = Shared();
  auto stub = server.Stub();
  v1::TokenizeResponse tok;
  {
    grpc::ClientContext ctx;
    v1::TokenizeRequest req;
    req.set_text("Hello world");
    req.set_add_special_tokens(false);
    ASSERT_TRUE(stub->Tokenize(&ctx, req, &tok).ok());
    EXPECT_GT(tok.token_ids_size(), 0);
    EXPECT_EQ(tok.token_ids_size(), tok.tokens_size());
  }
  {
    grpc::ClientContext ctx;
    v1::DetokenizeRequest req;
    *req.mutable_token_ids() = tok.token_ids();
    v1::DetokenizeResponse resp;
    ASSERT_TRUE(stub->Detokenize(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.text(), "Hello world");
  }
  {
    grpc::ClientContext ctx;
    v1::DetokenizeRequest req;
    req.add_token_ids(-3);
    v1::DetokenizeResponse resp;
    grpc::Status s = stub->Detokenize(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(s.error_message().rfind("token_ids[0]:", 0), 0u) << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    ASSERT_TRUE(stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
    EXPECT_GT(info.max_model_len(), 0);
    EXPECT_GT(info.vocab_size(), 0);
    EXPECT_GT(info.kv_capacity_tokens(), 0);
    EXPECT_EQ(info.block_size(), 16);
    EXPECT_FALSE(info.model().empty());
    if (flavor_.name == "smollm2_leank") {
      EXPECT_TRUE(info.masked());
      EXPECT_NEAR(info.k_sparsity(), 0.5, 0.05);
      EXPECT_EQ(info.sink(), 16);
      EXPECT_EQ(info.recent(), 16);
    } else {
      EXPECT_FALSE(info.masked());
    }
  }
  // Logprobs and stop strings travel through.
  {
    v1::GenerateRequest req = Greedy("Hello there", 6);
    req.set_logprobs(3);
    StreamResult r = Generate(*stub, req);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    int lp = 0;
    for (const auto& c : r.chunks) {
      lp += c.logprobs_size();
      for (const auto& l : c.logprobs()) EXPECT_EQ(l.top_size(), 3);
    }
    EXPECT_EQ(lp, 6);
  }
  EXPECT_EQ(server.Health(), HealthStatus::SERVING);
  EXPECT_EQ(server.Health("leank.v1.LeankService"), HealthStatus::SERVING);
  {
    // Server reflection lists the services (what grpcurl relies on).
    namespace refl = grpc::reflection::v1alpha;
    auto rstub = refl::ServerReflection::NewStub(server.channel());
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(5));
    auto stream = rstub->ServerReflectionInfo(&ctx);
    refl::ServerReflectionRequest rreq;
    rreq.set_list_services("");
    ASSERT_TRUE(stream->Write(rreq));
    stream->WritesDone();
    refl::ServerReflectionResponse rresp;
    std::set<std::string> services;
    while (stream->Read(&rresp)) {
      for (const auto& s : rresp.list_services_response().service()) services.insert(s.name());
    }
    EXPECT_TRUE(stream->Finish().ok());
    EXPECT_TRUE(services.count("leank.v1.LeankService"));
    EXPECT_TRUE(services.count("grpc.health.v1.Health"));
  }
  int code = 0;
  HttpGet(server.http_port(), "/healthz", &code);
  EXPECT_EQ(code, 200);
  HttpGet(server.http_port(), "/readyz", &code);
  EXPECT_EQ(code, 200);
  const std::string metrics = HttpGet(server.http_port(), "/metrics", &code);
  EXPECT_EQ(code, 200);
  for (const char* name :
       {"leank:num_requests_running", "leank:num_requests_waiting", "leank:kv_cache_usage_perc",
        "leank:time_to_first_token_seconds_count", "leank:inter_token_latency_seconds_count",
        "leank:e2e_request_latency_seconds_count", "leank:time_per_output_token_seconds_count",
        "leank:prompt_tokens_total", "leank:generation_tokens_total",
        "leank:num_preemptions_total"}) {
    EXPECT_TRUE(MetricValue(metrics, name).has_value()) << name;
  }
  EXPECT_GT(MetricValue(metrics, "leank:generation_tokens_total").value_or(0), 0);
  EXPECT_GT(
      MetricValue(metrics, "leank:request_success_total", "finished_reason=\"length\"").value_or(0),
      0);
}

// A Generate stream that the test holds open. Its client reads what the test asks for
// and then nothing until Release(). Its own channel turns BDP probing off and grants a
// 1 KiB lookahead, so the HTTP/2 flow-control window that the server may fill unread
// stays about that small (with gRPC's defaults, BDP probing grew it past 150 KB of
// unread responses). Once the responses outgrow it, the server's handler blocks in
// Write, and the stream stays active, which the drain waits for, until the test reads
// again, however long the test takes and however loaded the machine. A 128-byte
// request_id (repeated in every chunk) and 20 top logprobs per token make a response
// ~400-550 bytes a token, so a stream of long_tokens is tens of KB (measured with
// gRPC 1.51: 20 tokens, ~8-10 KB, already held the handler).
class HeldStream {
 public:
  static constexpr int kLookahead = 1024;

  HeldStream(const std::string& target, const v1::GenerateRequest& req) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, kLookahead);
    channel_ = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
    stub_ = v1::LeankService::NewStub(channel_);
    ctx_.set_deadline(std::chrono::system_clock::now() + seconds(600));
    reader_ = stub_->Generate(&ctx_, req);
  }

  // The next chunk; false at the end of the stream.
  bool ReadOne() {
    v1::GenerateResponse chunk;
    if (!reader_->Read(&chunk)) return false;
    wire_bytes_ += static_cast<int64_t>(chunk.ByteSizeLong()) + 5;  // + gRPC message header
    result_.text += chunk.text();
    result_.token_ids.insert(result_.token_ids.end(), chunk.token_ids().begin(),
                             chunk.token_ids().end());
    if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      result_.finish_reason = chunk.finish_reason();
    }
    result_.chunks.push_back(std::move(chunk));
    return true;
  }
  // Reads the rest of the stream.
  StreamResult Release() {
    while (ReadOne()) {
    }
    result_.status = reader_->Finish();
    return result_;
  }
  // What the server sent, as gRPC messages (HTTP/2 framing not counted).
  int64_t wire_bytes() const { return wire_bytes_; }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::LeankService::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader_;
  StreamResult result_;
  int64_t wire_bytes_ = 0;
};

// The drain is held open by a HeldStream, started before SIGTERM with the two others,
// not by the others being slow enough: the server cannot finish draining (nor exit)
// before the test has checked it and released that stream, on a loaded machine too.
// The held stream, accepted before the signal, then gets all its tokens as well.
TEST_P(ServerE2E, SigtermDrainsInFlightAndRefusesNewCalls) {
  // Only a hang reaches the drain timeout: the test ends the drain by releasing the
  // held stream (an expired drain would abort it, and the test would say so).
  auto server = StartServer("drain", {"--drain-timeout=600"});
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(server->Health(), HealthStatus::SERVING);
  v1::GenerateRequest hold_req = Greedy(Prompt(7), flavor_.long_tokens);
  hold_req.set_request_id(std::string(128, 'h'));
  hold_req.set_logprobs(20);
  HeldStream held(server->target(), hold_req);
  // Accepted before the signal: its first chunk is in.
  ASSERT_TRUE(held.ReadOne()) << "held stream: no first chunk; log:\n" << server->Log();
  constexpr int kStreams = 2;
  std::vector<StreamResult> results(kStreams);
  std::atomic<int> started{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      auto stub = server->Stub();
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + seconds(300));
      auto reader = stub->Generate(&ctx, Greedy(Prompt(i), flavor_.long_tokens));
      v1::GenerateResponse chunk;
      while (reader->Read(&chunk)) {
        if (results[i].chunks.empty()) ++started;
        results[i].token_ids.insert(results[i].token_ids.end(), chunk.token_ids().begin(),
                                    chunk.token_ids().end());
        results[i].chunks.push_back(chunk);
        if (chunk.finish_reason()) results[i].finish_reason = chunk.finish_reason();
      }
      results[i].status = reader->Finish();
    });
  }
  ASSERT_TRUE(Eventually([&] { return started.load() == kStreams; }, kHang));
  server->Signal(SIGTERM);
  EXPECT_TRUE(Eventually([&] { return server->Health() == HealthStatus::NOT_SERVING; }, kHang));
  {
    auto stub = server->Stub();
    StreamResult refused = Generate(*stub, Greedy("Hello", 4), kHang);
    EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << refused.status.error_message();
    // Refused by the draining server, not UNAVAILABLE from one that already exited.
    EXPECT_EQ(refused.status.error_message(), "server is shutting down");
    int code = 0;
    HttpGet(server->http_port(), "/readyz", &code);
    EXPECT_EQ(code, 503);
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kStreams; ++i) {
    EXPECT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    EXPECT_EQ(static_cast<int>(results[i].token_ids.size()), flavor_.long_tokens);
    EXPECT_EQ(results[i].finish_reason, v1::FINISH_REASON_LENGTH);
  }
  // The two streams are done; the held one keeps the server draining, not exiting.
  EXPECT_TRUE(Eventually(
      [&] {
        const v1::ServerState st = State(*server);
        return st.draining() && st.active_streams() == 1;
      },
      kHang))
      << State(*server).DebugString();
  EXPECT_TRUE(server->Alive());
  const StreamResult h = held.Release();
  EXPECT_TRUE(h.status.ok()) << h.status.error_message();
  EXPECT_EQ(static_cast<int>(h.token_ids.size()), flavor_.long_tokens);
  EXPECT_EQ(h.finish_reason, v1::FINISH_REASON_LENGTH);
  // The hold rested on the responses outgrowing, by far, what the client's channel lets
  // the server send unread: were they small, the checks above raced the drain again.
  EXPECT_GE(held.wire_bytes(), 16 * HeldStream::kLookahead)
      << "the held stream is too small to block the server's writes";
  const std::optional<int> code = server->WaitExit(seconds(30));
  EXPECT_EQ(code, 0) << server->Log();
}

TEST_P(ServerE2E, PythonClientGeneratesAndChecksHealth) {
  ServerProcess& server = Shared();
  const std::string client = std::string(LEANK_SOURCE_DIR) + "/tools/python_client/leank_client.py";
  // Debian's python3-grpcio lives in /usr/bin/python3; fall back to the PATH's.
  std::string python;
  for (const char* candidate : {"/usr/bin/python3", "python3"}) {
    const std::string probe = std::string(candidate) + " -c 'import grpc' >/dev/null 2>&1";
    if (std::system(probe.c_str()) == 0) {
      python = candidate;
      break;
    }
  }
  if (python.empty()) GTEST_SKIP() << "no python3 with grpcio (apt-get install python3-grpcio)";
  const std::string out_path = LogPath(flavor_.name + "-python");
  const std::string cmd = "timeout 120 " + python + " " + client + " --target " + server.target() +
                          " selftest --text 'Hello there' --max-tokens 4 > " + out_path + " 2>&1";
  const int rc = std::system(cmd.c_str());
  std::ifstream in(out_path);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(rc, 0) << ss.str();
  EXPECT_NE(ss.str().find("health: SERVING"), std::string::npos) << ss.str();
  EXPECT_NE(ss.str().find("finish_reason: FINISH_REASON_LENGTH"), std::string::npos) << ss.str();
  EXPECT_NE(ss.str().find("completion_tokens: 4"), std::string::npos) << ss.str();
}

TEST_P(ServerE2E, StopStringsChatMessagesAndSeeds) {
  ServerProcess& server = Shared();
  auto stub = server.Stub();
  // Stop string: cut a greedy output at a piece of itself.
  StreamResult full = Generate(*stub, Greedy(Prompt(5), flavor_.short_tokens * 2));
  ASSERT_TRUE(full.status.ok()) << full.status.error_message();
  ASSERT_GE(full.text.size(), 6u);
  const std::string stop = full.text.substr(full.text.size() / 2, 3);
  const std::string expected = full.text.substr(0, full.text.find(stop));
  v1::GenerateRequest req = Greedy(Prompt(5), flavor_.short_tokens * 2);
  req.add_stop(stop);
  StreamResult cut = Generate(*stub, req);
  ASSERT_TRUE(cut.status.ok()) << cut.status.error_message();
  EXPECT_EQ(cut.finish_reason, v1::FINISH_REASON_STOP);
  EXPECT_EQ(cut.text, expected) << "stop '" << stop << "' in '" << full.text << "'";
  req.set_include_stop_str_in_output(true);
  StreamResult kept = Generate(*stub, req);
  EXPECT_EQ(kept.text, expected + stop);

  // Chat messages through the model's template.
  v1::GenerateRequest chat;
  auto* m = chat.mutable_messages()->add_messages();
  m->set_role("user");
  m->set_content("Say hello.");
  chat.set_max_tokens(4);
  chat.set_temperature(0);
  StreamResult c = Generate(*stub, chat);
  EXPECT_TRUE(c.status.ok()) << c.status.error_message();
  EXPECT_FALSE(c.token_ids.empty());

  // Sampling with a seed is reproducible.
  v1::GenerateRequest sampled = Greedy(Prompt(6), flavor_.short_tokens);
  sampled.set_temperature(0.9f);
  sampled.set_top_p(0.95f);
  sampled.set_seed(1234);
  StreamResult a = Generate(*stub, sampled);
  StreamResult b = Generate(*stub, sampled);
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  EXPECT_EQ(a.token_ids, b.token_ids);
}

TEST_P(ServerE2E, FullQueueIsResourceExhausted) {
  if (flavor_.name != "fake") GTEST_SKIP() << "engine-independent; the fake flavor covers it";
  auto server = StartServer("queue", {"--max-num-seqs=1", "--max-waiting=2"});
  ASSERT_NE(server, nullptr);
  constexpr int kClients = 8;
  std::vector<StreamResult> results(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      auto stub = server->Stub();
      results[i] = Generate(*stub, Greedy(Prompt(i), 300));
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0, exhausted = 0;
  for (const StreamResult& r : results) {
    ok += r.status.ok();
    exhausted += r.status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
  }
  EXPECT_EQ(ok + exhausted, kClients);
  EXPECT_GE(ok, 1);
  EXPECT_GE(exhausted, 1);
  StreamResult after = Generate(*server->Stub(), Greedy("Hello", 4));
  EXPECT_TRUE(after.status.ok()) << after.status.error_message();
}

TEST(ServerBinary, PrintsItsConfigSchemaAndRefusesBadFlags) {
  const std::string out = LogPath("schema");
  ASSERT_EQ(
      std::system((std::string(LEANK_SERVER_BIN) + " --print-config-schema > " + out).c_str()), 0);
  std::ifstream in(out);
  const nlohmann::json schema = nlohmann::json::parse(in);
  ASSERT_TRUE(schema.is_array());
  bool port = false;
  for (const auto& f : schema) {
    if (f.at("env") == "LEANK_PORT") port = f.at("flag") == "--port" && f.at("default") == "50051";
  }
  EXPECT_TRUE(port) << schema.dump();
  // No model: exit code 2, the message names the flag.
  const std::string err = LogPath("noflag");
  const int rc = std::system((std::string(LEANK_SERVER_BIN) + " > " + err + " 2>&1").c_str());
  EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 2) << rc;
  std::ifstream e(err);
  std::stringstream ss;
  ss << e.rdbuf();
  EXPECT_NE(ss.str().find("--model"), std::string::npos) << ss.str();
}

TEST(ServerBinary, NotServingWhileTheModelLoads) {
  // The fake "loads" until the test creates a file: from the moment the port listens
  // until then, health says NOT_SERVING (grpc++'s default health service said SERVING
  // for an instant after the port opened), Generate is UNAVAILABLE and /readyz is 503.
  const std::string loaded = LogPath("loaded");
  std::filesystem::remove(loaded);
  auto server = ServerProcess::Start(LEANK_FAKE_SERVER_BIN, {"--model=fake"}, LogPath("loading"),
                                     {{"LEANK_FAKE_LOAD_UNTIL", loaded}});
  ASSERT_TRUE(
      Eventually([&] { return server->Listening() || !server->Alive(); }, milliseconds(20000)))
      << server->Log();
  ASSERT_TRUE(server->Alive()) << server->Log();
  EXPECT_EQ(server->Health(), HealthStatus::NOT_SERVING);
  EXPECT_EQ(server->Health("leank.v1.LeankService"), HealthStatus::NOT_SERVING);
  StreamResult early = Generate(*server->Stub(), Greedy("Hello", 4), kHang);
  EXPECT_EQ(early.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(early.status.error_message(), "model is loading");
  int code = 0;
  HttpGet(server->http_port(), "/readyz", &code);
  EXPECT_EQ(code, 503);
  EXPECT_EQ(server->Health(), HealthStatus::NOT_SERVING);  // still loading after all that
  std::ofstream(loaded) << "go\n";
  ASSERT_TRUE(server->WaitServing(seconds(30))) << server->Log();
  EXPECT_EQ(server->Health("leank.v1.LeankService"), HealthStatus::SERVING);
  StreamResult late = Generate(*server->Stub(), Greedy("Hello", 4));
  EXPECT_TRUE(late.status.ok()) << late.status.error_message();
  HttpGet(server->http_port(), "/readyz", &code);
  EXPECT_EQ(code, 200);
  std::filesystem::remove(loaded);
}

INSTANTIATE_TEST_SUITE_P(Flavors, ServerE2E, ::testing::Values("fake", "smollm2", "smollm2_leank"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace leank::e2e
