// leank-cli entry point: see cli.h and docs/cli.md.
#include <unistd.h>

#include <iostream>

#include "tools/cli/cli.h"

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  return leank::client::RunCli(argc, argv, std::cin, std::cout, std::cerr,
                               /*interactive=*/isatty(STDIN_FILENO) != 0);
}
