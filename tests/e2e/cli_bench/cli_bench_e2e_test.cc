// leank-cli and leank-bench as processes against real server processes on loopback
// ports: leank-fake-server (the real server over the FakeEngine; seconds) and
// leank-server with SmolLM2 on the CPU backend (skipped when the model is missing).
// Every wait is bounded; every process is killed on the way out.
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <thread>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/cli_bench/run_process.h"
#include "tests/e2e/e2e_util.h"

namespace leank {
namespace {

using e2e::ServerProcess;
using std::chrono::seconds;
using testing::ProcessResult;
using testing::RunProcess;
using testing::TempPath;

// $LEANK_CACHE_DIR/models/... when set (as the golden and tokenizer tests), else the
// checkout's .cache.
std::string SmolLm2Dir() {
  if (const char* env = std::getenv("LEANK_CACHE_DIR")) {
    return std::string(env) + "/models/smollm2-135m-instruct";
  }
  return std::string(LEANK_SOURCE_DIR) + "/.cache/models/smollm2-135m-instruct";
}
bool Exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

ProcessResult Cli(const std::string& target, std::vector<std::string> args,
                  const std::string& input = "") {
  args.insert(args.begin(), {LEANK_CLI_BIN, "--server=" + target, "--timeout=60"});
  return RunProcess(args, input, seconds(90));
}

ProcessResult Bench(const std::string& target, std::vector<std::string> args) {
  args.insert(args.begin(), {LEANK_BENCH_BIN, "--server=" + target, "--no-progress"});
  return RunProcess(args, "", seconds(120));
}

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
}

std::string Describe(const ProcessResult& r) {
  return "exit " + std::to_string(r.exit_code) + (r.timed_out ? " (timed out)" : "") +
         "\nstdout:\n" + r.out + "\nstderr:\n" + r.err;
}

// `leank-cli --json generate` output: the token ids summed over the JSON lines, and the
// last line (the one with usage) in *last.
int JsonLinesTokens(const std::string& out, nlohmann::json* last) {
  std::istringstream lines(out);
  std::string line;
  int tokens = 0;
  while (std::getline(lines, line)) {
    *last = nlohmann::json::parse(line);
    tokens += static_cast<int>((*last)["token_ids"].size());
  }
  return tokens;
}

// Every measured request: client-counted tokens == the server's usage; prompts as meant.
void ExpectCountsMatchUsage(const nlohmann::json& j, int64_t expected_requests) {
  ASSERT_TRUE(j.is_object());
  const nlohmann::json& res = j["results"];
  EXPECT_EQ(res["completed"], expected_requests);
  EXPECT_EQ(res["failed"], 0);
  EXPECT_EQ(res["usage_mismatches"], 0);
  EXPECT_EQ(res["prompt_mismatches"], 0);
  int64_t out = 0, in = 0;
  ASSERT_EQ(j["requests"].size(), static_cast<size_t>(expected_requests));
  for (const nlohmann::json& r : j["requests"]) {
    EXPECT_TRUE(r["ok"].get<bool>());
    EXPECT_EQ(r["output_tokens"], r["server_completion_tokens"]);
    EXPECT_EQ(r["input_tokens"], r["server_prompt_tokens"]);
    out += r["server_completion_tokens"].get<int64_t>();
    in += r["server_prompt_tokens"].get<int64_t>();
  }
  EXPECT_EQ(res["output_tokens"], out);
  EXPECT_EQ(res["input_tokens"], in);
}

int Count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

// --- leank-fake-server ----------------------------------------------------------------

class FakeServerE2E : public ::testing::Test {
 protected:
  void StartServer(const std::string& step_us = "2000") {
    bool up = false;
    server_ = ServerProcess::StartServing(LEANK_FAKE_SERVER_BIN, {"--log-level=warn"},
                                          TempPath("fake-server.log"), seconds(30), &up,
                                          {{"LEANK_FAKE_STEP_US", step_us}});
    ASSERT_TRUE(up) << server_->Log();
  }
  void SetUp() override { StartServer(); }
  std::string target() const { return server_->target(); }
  std::unique_ptr<ServerProcess> server_;
};

TEST_F(FakeServerE2E, CliGenerateTokenizeInfoHealth) {
  ProcessResult r = Cli(target(), {"health"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(r.out, "SERVING\n");

  r = Cli(target(), {"generate", "Hello", "--max-tokens=6", "--temperature=0", "--ignore-eos"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_GE(r.out.size(), 2u) << r.out;  // text, then a newline
  EXPECT_EQ(r.out.back(), '\n');

  r = Cli(target(), {"--json", "generate", "Hello", "--max-tokens=6", "--ignore-eos"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  nlohmann::json last;
  EXPECT_EQ(JsonLinesTokens(r.out, &last), 6);
  EXPECT_EQ(last["usage"]["completion_tokens"], 6);

  r = Cli(target(), {"tokenize", "AB", "--no-special-tokens"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(r.out, "65 66\n");  // the fake tokenizer is byte-level

  r = Cli(target(), {"info"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_NE(r.out.find("FakeForCausalLM"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("state:              ready"), std::string::npos) << r.out;
}

TEST_F(FakeServerE2E, CliServerErrorExitsThree) {
  ProcessResult r = Cli(target(), {"generate", "Hello", "--top-p=2"});
  EXPECT_EQ(r.exit_code, 3) << Describe(r);
  EXPECT_NE(r.err.find("error: INVALID_ARGUMENT: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("top_p"), std::string::npos) << r.err;
  r = Cli(target(), {"detokenize", "999999"});
  EXPECT_EQ(r.exit_code, 3) << Describe(r);
  EXPECT_NE(r.err.find("INVALID_ARGUMENT"), std::string::npos) << r.err;
  const std::string dead = target();
  server_.reset();  // killed
  r = Cli(dead, {"--timeout=5", "info"});
  EXPECT_EQ(r.exit_code, 3) << Describe(r);
  EXPECT_NE(r.err.find("UNAVAILABLE"), std::string::npos) << r.err;
}

TEST_F(FakeServerE2E, CliChatAnswersEachLine) {
  ProcessResult r = Cli(target(), {"chat", "--max-tokens=4", "--ignore-eos", "--stats"},
                        "first\n\nsecond\n/reset\nthird\n");
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(Count(r.err, "completion_tokens=4"), 3) << r.err;  // the empty line is skipped
}

TEST_F(FakeServerE2E, BenchTokenCountsEqualServerUsage) {
  const std::string json = TempPath("closed.json");
  ProcessResult r =
      Bench(target(), {"--num-prompts=20", "--concurrency=4", "--input-len=24",
                       "--input-dist=uniform", "--input-spread=8", "--output-len=12",
                       "--output-dist=normal", "--output-spread=3", "--json=" + json, "--seed=3"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_NE(r.out.find("Successful requests:                                 20"),
            std::string::npos)
      << r.out;
  const nlohmann::json j = ReadJson(json);
  ExpectCountsMatchUsage(j, 20);
  EXPECT_EQ(j["config"]["mode"], "closed");
  EXPECT_LE(j["results"]["peak_concurrency"].get<double>(), 4.0);
  std::set<int> lens;
  for (const nlohmann::json& q : j["requests"]) lens.insert(q["input_tokens"].get<int>());
  EXPECT_GT(lens.size(), 3u);  // uniform lengths, not one fixed length
}

TEST_F(FakeServerE2E, BenchOpenLoopWithIgnoreEos) {
  const std::string json = TempPath("open.json");
  ProcessResult r =
      Bench(target(), {"--num-prompts=30", "--request-rate=60", "--burstiness=0.5",
                       "--max-concurrency=8", "--input-len=16", "--output-len=10", "--ignore-eos",
                       "--goodput=ttft:60000,tpot:60000", "--json=" + json, "--label=fake"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  const nlohmann::json j = ReadJson(json);
  ExpectCountsMatchUsage(j, 30);
  EXPECT_EQ(j["config"]["mode"], "open");
  EXPECT_EQ(j["label"], "fake");
  EXPECT_EQ(j["results"]["good_requests"], 30);
  for (const nlohmann::json& q : j["requests"]) {
    EXPECT_EQ(q["output_tokens"], 10);  // --ignore-eos: exactly max_tokens
    EXPECT_EQ(q["finish_reason"], "length");
  }
}

TEST_F(FakeServerE2E, BenchDurationRunJsonSaysWhatBoundedIt) {
  // --duration alone: the JSON said "num_prompts": 100 (the flag's default) although
  // the run was bounded by time only. Requests in flight at the cut-off are waited for
  // and counted: every sent request is in the results, none cancelled.
  const std::string json = TempPath("duration.json");
  ProcessResult r = Bench(target(), {"--duration=0.5", "--concurrency=2", "--input-len=8",
                                     "--output-len=4", "--ignore-eos", "--json=" + json});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  nlohmann::json j = ReadJson(json);
  ASSERT_TRUE(j.is_object()) << Describe(r);
  EXPECT_TRUE(j["config"]["num_prompts"].is_null()) << j["config"];
  EXPECT_EQ(j["config"]["duration_s"], 0.5);
  EXPECT_EQ(j["config"]["dataset_max_total_len"], 2048);  // the workload flags are all there
  const int64_t sent = static_cast<int64_t>(j["requests"].size());
  EXPECT_GE(sent, 1);
  ExpectCountsMatchUsage(j, sent);
  // Both bounds: the count is reported.
  r = Bench(target(), {"--duration=600", "--num-prompts=3", "--input-len=8", "--output-len=4",
                       "--ignore-eos", "--json=" + json});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  j = ReadJson(json);
  EXPECT_EQ(j["config"]["num_prompts"], 3);
  ExpectCountsMatchUsage(j, 3);
}

TEST_F(FakeServerE2E, ServerKilledMidRunGivesCountedErrorsAndAReport) {
  server_.reset();
  StartServer("20000");  // 20 ms steps: 40 tokens take ~0.8 s
  const std::string json = TempPath("killed.json");
  ProcessResult r;
  std::thread bench([&] {
    r = Bench(target(), {"--num-prompts=40", "--concurrency=4", "--input-len=8", "--output-len=40",
                         "--ignore-eos", "--timeout=30", "--json=" + json});
  });
  // Kill once the server has finished the warm-up request and a measured one: the bench
  // is then mid-run (its other 39 requests need ~7 s more of 20 ms steps) however
  // loaded the machine is. The bound only ends a hang; the state is asserted.
  const auto until = std::chrono::steady_clock::now() + seconds(60);
  double finished = 0;
  while ((finished = e2e::MetricValue(e2e::HttpGet(server_->http_port(), "/metrics"),
                                      "leank:request_success_total", "finished_reason=\"length\"")
                         .value_or(0)) < 2 &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  server_->Signal(SIGKILL);
  bench.join();
  ASSERT_GE(finished, 2) << "the bench never got going\n" << Describe(r);
  EXPECT_FALSE(r.timed_out) << Describe(r);
  EXPECT_EQ(r.exit_code, 1) << Describe(r);  // finished, with failed requests
  EXPECT_NE(r.out.find("Failed requests:"), std::string::npos) << Describe(r);
  const nlohmann::json j = ReadJson(json);
  ASSERT_TRUE(j.is_object()) << Describe(r);
  const int64_t completed = j["results"]["completed"], failed = j["results"]["failed"];
  EXPECT_GE(failed, 1);
  EXPECT_EQ(completed + failed, 40);
  int64_t by_code = 0;
  for (const auto& [code, n] : j["results"]["errors"].items()) by_code += n.get<int64_t>();
  EXPECT_EQ(by_code, failed);
  EXPECT_GE(j["results"]["errors"].value("UNAVAILABLE", 0), 1) << j["results"]["errors"];
  EXPECT_EQ(j["results"]["usage_mismatches"], 0);
}

TEST_F(FakeServerE2E, PlotBenchWritesPngs) {
  if (system("python3 -c 'import matplotlib' > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "no python3 with matplotlib";
  }
  std::vector<std::string> argv = {"/usr/bin/env", "python3",
                                   std::string(LEANK_SOURCE_DIR) + "/tools/plot_bench.py"};
  for (const char* label : {"dense", "leank"}) {
    for (const char* c : {"1", "2"}) {
      const std::string json = TempPath(std::string(label) + c + ".json");
      ProcessResult r = Bench(target(), {"--num-prompts=4", std::string("--concurrency=") + c,
                                         "--input-len=8", "--output-len=4", "--warmup=0",
                                         std::string("--label=") + label, "--json=" + json});
      ASSERT_EQ(r.exit_code, 0) << Describe(r);
      argv.push_back(json);
    }
  }
  const std::string out = TempPath("plots");
  argv.push_back("--out=" + out);
  ProcessResult r = RunProcess(argv, "", seconds(120));
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  for (const char* name : {"serving-throughput-closed.png", "serving-latency-closed.png",
                           "serving-compare-closed.png", "serving-cdf.png"}) {
    std::ifstream png(out + "/" + name, std::ios::binary);
    char magic[8] = {};
    png.read(magic, 8);
    EXPECT_EQ(std::string(magic + 1, 3), "PNG") << name << "\n" << r.out;
    EXPECT_NE(r.out.find(name), std::string::npos) << r.out;
  }
  // A file that is not a leank-bench result is refused with a message.
  const std::string bad = TempPath("bad.json");
  std::ofstream(bad) << "{\"hello\": 1}";
  r = RunProcess({"/usr/bin/env", "python3", std::string(LEANK_SOURCE_DIR) + "/tools/plot_bench.py",
                  bad, "--out=" + out},
                 "", seconds(60));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("not a leank-bench result"), std::string::npos) << r.err;
}

TEST(BenchUsage, BadFlagsExitTwo) {
  for (const auto& args :
       std::vector<std::vector<std::string>>{{"--request-rate=-1"},
                                             {"--concurrency=0"},
                                             {"--input-dist=zipf"},
                                             {"--goodput=ttft"},
                                             {"--burstiness=2"},  // needs --request-rate
                                             {"--concurrency=2", "--request-rate=3"},
                                             {"--metadata=novalue"},
                                             {"--dataset=/nonexistent.jsonl"},
                                             {"--no-such-flag"}}) {
    std::vector<std::string> argv = {LEANK_BENCH_BIN, "--server=127.0.0.1:1"};
    argv.insert(argv.end(), args.begin(), args.end());
    ProcessResult r = RunProcess(argv, "", seconds(30));
    EXPECT_EQ(r.exit_code, 2) << ::testing::PrintToString(args) << Describe(r);
    EXPECT_FALSE(r.err.empty());
  }
  // NaN passed CLI11's PositiveNumber / NonNegativeNumber: a NaN rate or duration was
  // ignored, a NaN or huge timeout or spread reached an undefined cast, and
  // --burstiness=nan aborted ("ArrivalProcess: ...", SIGABRT). Each names its flag now.
  for (const auto& [args, flag] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--request-rate=nan"}, "--request-rate"},
           {{"--request-rate=inf"}, "--request-rate"},
           {{"--request-rate=1", "--burstiness=nan"}, "--burstiness"},
           {{"--timeout=nan"}, "--timeout"},
           {{"--timeout=1e300"}, "--timeout"},
           {{"--duration=nan"}, "--duration"},
           {{"--input-dist=uniform", "--input-spread=1e300"}, "--input-spread"},
           {{"--output-spread=nan"}, "--output-spread"},
           {{"--max-concurrency=abc", "--request-rate=1"}, "--max-concurrency"},
           {{"--server", ""}, "--server"},
           // Wrapped to 2^64 - 1 / clamped silently (leank-cli refused these already).
           {{"--seed=-1"}, "--seed"},
           {{"--seed=99999999999999999999999"}, "--seed"},
           // Found only after the whole run before (the results' JSON was lost).
           {{"--json=/nonexistent-dir/out.json"}, "error: --json"},
           {{"--json=" + ::testing::TempDir()}, "error: --json"}}) {
    std::vector<std::string> argv = {LEANK_BENCH_BIN, "--server=127.0.0.1:1"};
    argv.insert(argv.end(), args.begin(), args.end());
    ProcessResult r = RunProcess(argv, "", seconds(30));
    EXPECT_EQ(r.exit_code, 2) << ::testing::PrintToString(args) << Describe(r);
    EXPECT_EQ(r.err.rfind(flag + ":", 0), 0u) << Describe(r);
    EXPECT_EQ(r.err.find("GetModelInfo"), std::string::npos) << "checked before any call";
  }
  ProcessResult r = RunProcess({LEANK_CLI_BIN, "generate", "--max-tokens=many", "x"});
  EXPECT_EQ(r.exit_code, 2) << Describe(r);
  EXPECT_NE(r.err.find("--max-tokens"), std::string::npos) << r.err;
}

TEST(BenchUsage, UnreachableServerExitsThree) {
  ProcessResult r =
      RunProcess({LEANK_BENCH_BIN, "--server=127.0.0.1:" + std::to_string(e2e::FreeLoopbackPort()),
                  "--timeout=5"},
                 "", seconds(30));
  EXPECT_EQ(r.exit_code, 3) << Describe(r);
  EXPECT_NE(r.err.find("UNAVAILABLE"), std::string::npos) << r.err;
}

// --- tmux: what a person sees in `leank-cli chat` -------------------------------------

std::string Tmux(const std::string& socket, const std::string& args) {
  const std::string cmd = "tmux -L " + socket + " " + args + " 2>&1";
  std::string out;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char buf[4096];
    while (size_t n = fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
    pclose(p);
  }
  return out;
}

bool WaitForPane(const std::string& socket, const std::function<bool(const std::string&)>& ok,
                 std::string* pane) {
  for (int i = 0; i < 200; ++i) {  // 20 s
    *pane = Tmux(socket, "capture-pane -p -t chat");
    if (ok(*pane)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

TEST_F(FakeServerE2E, ChatInTmuxShowsPromptsAndStreamedReplies) {
  if (system("command -v tmux > /dev/null 2>&1") != 0) GTEST_SKIP() << "tmux not installed";
  const std::string socket = "leank-cli-test-" + std::to_string(getpid());
  const std::string cmd = std::string(LEANK_CLI_BIN) + " --server=" + target() +
                          " chat --max-tokens=12 --temperature=0 --ignore-eos";
  Tmux(socket, "new-session -d -s chat -x 100 -y 30 '" + cmd + "'");
  std::string pane;  // capture-pane drops trailing blanks: "you>" not "you> "
  EXPECT_TRUE(WaitForPane(
      socket, [](const std::string& p) { return Count(p, "you>") == 1; }, &pane))
      << pane;
  EXPECT_NE(pane.find("leank chat with"), std::string::npos) << pane;
  Tmux(socket, "send-keys -t chat 'hello there' Enter");
  EXPECT_TRUE(WaitForPane(
      socket, [](const std::string& p) { return Count(p, "you>") == 2; }, &pane))
      << pane;
  EXPECT_EQ(Count(pane, "assistant>"), 1) << pane;
  EXPECT_NE(pane.find("you> hello there"), std::string::npos) << pane;
  Tmux(socket, "send-keys -t chat '/exit' Enter");
  bool gone = false;
  for (int i = 0; i < 100 && !gone; ++i) {
    gone = Tmux(socket, "has-session -t chat").find("can't find") != std::string::npos ||
           Tmux(socket, "has-session -t chat").find("no server") != std::string::npos;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(gone) << "chat did not exit on /exit";
  Tmux(socket, "kill-server");  // our private socket only
}

// --- leank-server with SmolLM2 --------------------------------------------------------

class SmolLm2E2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!Exists(SmolLm2Dir() + "/model.safetensors")) return;
    bool up = false;
    server_ =
        ServerProcess::StartServing(LEANK_SERVER_BIN,
                                    {"--model=" + SmolLm2Dir(), "--backend=cpu", "--num-threads=2",
                                     "--max-model-len=512", "--log-level=warn"},
                                    TempPath("smollm2-server.log"), seconds(120), &up);
    if (!up) {
      std::cerr << "SmolLM2 server did not come up:\n" << server_->Log() << "\n";
      server_.reset();
    }
  }
  static void TearDownTestSuite() { server_.reset(); }
  void SetUp() override {
    if (!Exists(SmolLm2Dir() + "/model.safetensors")) {
      GTEST_SKIP() << "no converted SmolLM2 at " << SmolLm2Dir()
                   << " (python3 tools/convert_smollm2.py)";
    }
    ASSERT_NE(server_, nullptr) << "server failed to start";
  }
  static std::string target() { return server_->target(); }
  static std::unique_ptr<ServerProcess> server_;
};
std::unique_ptr<ServerProcess> SmolLm2E2E::server_;

TEST_F(SmolLm2E2E, CliCommands) {
  ProcessResult r = Cli(target(), {"health"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  r = Cli(target(), {"info", "--json"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  const nlohmann::json info = nlohmann::json::parse(r.out, nullptr, false);
  EXPECT_EQ(info["model_info"]["architecture"], "LlamaForCausalLM");
  EXPECT_EQ(info["model_info"]["max_model_len"], 512);

  r = Cli(target(), {"tokenize", "Hello world", "--no-special-tokens", "--count"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(r.out, "2\n");

  r = Cli(target(), {"generate", "--chat", "What is the capital of France?", "--max-tokens=10",
                     "--temperature=0"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_NE(r.out.find("Paris"), std::string::npos) << r.out;

  r = Cli(target(), {"--json", "generate", "Once upon a time", "--max-tokens=4", "--ignore-eos",
                     "--temperature=0"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  nlohmann::json last;
  EXPECT_EQ(JsonLinesTokens(r.out, &last), 4);
  EXPECT_EQ(last["usage"]["completion_tokens"], 4);

  r = Cli(target(), {"generate", "x", "--max-tokens=4", "--repetition-penalty=0"});
  EXPECT_EQ(r.exit_code, 3) << Describe(r);
  EXPECT_NE(r.err.find("INVALID_ARGUMENT: repetition_penalty"), std::string::npos) << r.err;

  r = Cli(target(), {"chat", "--max-tokens=5", "--temperature=0"}, "Hi!\nAnd again?\n");
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
}

TEST_F(SmolLm2E2E, CliChatKeepsTheConversation) {
  // Greedy: the second turn answered with the first in context differs from the same
  // question in a fresh chat, while the first turn is the same either way.
  const std::vector<std::string> chat = {"chat", "--max-tokens=8", "--temperature=0"};
  const std::string a = "My name is Ana and I live in Lisbon.\n";
  const std::string b = "Where do I live?\n";
  ProcessResult convo = Cli(target(), chat, a + b);
  ProcessResult first = Cli(target(), chat, a);
  ProcessResult second = Cli(target(), chat, b);
  ASSERT_EQ(convo.exit_code, 0) << Describe(convo);
  ASSERT_EQ(first.exit_code, 0) << Describe(first);
  ASSERT_EQ(second.exit_code, 0) << Describe(second);
  EXPECT_EQ(convo.out.substr(0, first.out.size()), first.out);
  EXPECT_NE(convo.out, first.out + second.out);
}

TEST_F(SmolLm2E2E, BenchSyntheticTokenCountsEqualUsage) {
  const std::string json = TempPath("smol.json");
  ProcessResult r = Bench(target(), {"--num-prompts=6", "--concurrency=3", "--input-len=20",
                                     "--input-dist=uniform", "--input-spread=5", "--output-len=4",
                                     "--ignore-eos", "--warmup=1", "--json=" + json});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  const nlohmann::json j = ReadJson(json);
  ExpectCountsMatchUsage(j, 6);
  for (const nlohmann::json& q : j["requests"]) EXPECT_EQ(q["output_tokens"], 4);
  EXPECT_EQ(j["server"]["architecture"], "LlamaForCausalLM");
}

TEST_F(SmolLm2E2E, BenchShareGptDatasetPromptLengthsMatchTheServer) {
  const std::string data = TempPath("sharegpt.jsonl");
  {
    std::ofstream f(data);
    f << R"({"conversations": [{"from": "human", "value": "Name three colours of the rainbow."}, {"from": "gpt", "value": "Red, orange and yellow are three of them."}]})"
      << "\n"
      << R"({"conversations": [{"from": "system", "value": "You are terse."}, {"from": "human", "value": "What is two plus two?"}, {"from": "gpt", "value": "Two plus two is four."}]})"
      << "\n"
      << R"({"messages": [{"role": "user", "content": "Write one word about the sea."}, {"role": "assistant", "content": "Vast, deep and blue."}]})"
      << "\n";
  }
  const std::string json = TempPath("smol-dataset.json");
  ProcessResult r = Bench(target(), {"--dataset=" + data, "--num-prompts=3", "--concurrency=3",
                                     "--dataset-output-len=3", "--warmup=0", "--json=" + json});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  ExpectCountsMatchUsage(ReadJson(json), 3);  // prompt_mismatches 0: chat template counted
}

}  // namespace
}  // namespace leank
