#pragma once
// Runs a program to completion with a time limit: stdin from a string, stdout and
// stderr captured. For driving leank-cli / leank-bench as a user would.

#include <chrono>
#include <string>
#include <vector>

namespace leank::testing {

struct ProcessResult {
  int exit_code = -1;  // -signal when killed by a signal
  bool timed_out = false;
  std::string out, err;
  double seconds = 0;
};

// argv[0] is the program path. The child is SIGKILLed after `limit`.
ProcessResult RunProcess(const std::vector<std::string>& argv, const std::string& stdin_text = "",
                         std::chrono::seconds limit = std::chrono::seconds(60));

// A fresh file path under the test's temp dir.
std::string TempPath(const std::string& name);

}  // namespace leank::testing
