#pragma once
// leank-cli: generate, chat, tokenize, detokenize, info, health against a leank-serve
// gRPC endpoint. RunCli is the whole program with its streams injected, so tests can
// drive it in-process; main() only forwards to it.

#include <iosfwd>

namespace leank::client {

// Returns the process exit code: 0 ok, 1 health NOT_SERVING, 2 bad usage,
// 3 server error (the status code name and message are written to `err`).
int RunCli(int argc, const char* const* argv, std::istream& in, std::ostream& out,
           std::ostream& err, bool interactive);

}  // namespace leank::client
