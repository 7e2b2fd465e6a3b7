// leank-bench-decode-plan's command line: a small run writes JSON records; bad options and
// bad mask files give one line and a non-zero exit code, never an uncaught exception.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace leank::kernels {
namespace {

struct BenchRun {
  int code = -1;
  std::string out;  // stdout and stderr
};

BenchRun RunBench(const std::string& args) {
  const std::string log = (std::filesystem::temp_directory_path() /
                           ("plan-bench-" + std::to_string(::getpid()) + ".log"))
                              .string();
  const int rc = std::system(
      (std::string(LEANK_DECODE_PLAN_BIN) + " " + args + " > " + log + " 2>&1").c_str());
  BenchRun r;
  r.code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  std::ifstream in(log);
  std::stringstream ss;
  ss << in.rdbuf();
  r.out = ss.str();
  std::filesystem::remove(log);
  return r;
}

std::string TempFile(const std::string& name, const std::string& text) {
  const auto path =
      std::filesystem::temp_directory_path() / (name + "-" + std::to_string(::getpid()) + ".json");
  std::ofstream(path) << text;
  return path.string();
}

TEST(PlanBenchCli, SmallRunWritesRecords) {
  const std::string json = TempFile("plan-bench-out", "");
  const BenchRun r = RunBench("--iters 2 --batches 2 --contexts 2000 --threads 2 --json " + json);
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream in(json);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  for (const char* key : {"\"steady_plan_us\"", "\"first_plan_us\"", "\"plan_threads\": 2",
                          "\"impl\": \"leank\"", "\"impl\": \"dense\"", "\"context\": 2000"}) {
    EXPECT_NE(text.find(key), std::string::npos) << key << " in " << text;
  }
  std::filesystem::remove(json);
}

TEST(PlanBenchCli, BadInputIsNamed) {
  EXPECT_EQ(RunBench("--help").code, 0);
  struct Case {
    std::string args;
    int code;
    std::string message;
  };
  const std::string not_json = TempFile("plan-bench-bad", "nope");
  const std::string no_kept = TempFile("plan-bench-nokept", "{\"x\": 1}");
  const std::string two_heads = TempFile("plan-bench-heads", "{\"kept\": [[[1], [2]]]}");
  for (const Case& c : {
           Case{"--batches a,b", 2, "must be integers"},
           Case{"--contexts 0", 2, "must be >= 1"},
           Case{"--threads -1", 2, "must be >= 1"},
           Case{"--frobnicate", 2, "unknown or incomplete option --frobnicate"},
           Case{"--iters", 2, "unknown or incomplete option --iters"},
           Case{"--mask /nonexistent/mask.json", 1, "cannot open mask"},
           Case{"--mask " + not_json, 1, "not a kept-channel JSON"},
           Case{"--mask " + no_kept, 1, "key 'kept' not found"},
           Case{"--mask " + two_heads, 1, "want [layers][8 kv heads]"},
       }) {
    const BenchRun r = RunBench(c.args);
    EXPECT_EQ(r.code, c.code) << c.args << ": " << r.out;
    EXPECT_NE(r.out.find(c.message), std::string::npos) << c.args << ": " << r.out;
  }
  for (const std::string& f : {not_json, no_kept, two_heads}) std::filesystem::remove(f);
}

}  // namespace
}  // namespace leank::kernels
