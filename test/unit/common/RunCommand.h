// Runs a shell command for the command-line tests: what it printed (as its
// redirections leave it) and its exit code.
#pragma once

#include <cstdio>
#include <string>

#include <sys/wait.h>

namespace kt::test {

struct CommandResult {
  int exitCode = -1;
  std::string output;
};

inline CommandResult runCommand(const std::string &command) {
  CommandResult result;
  FILE *pipe = ::popen(command.c_str(), "r");
  if (!pipe)
    return result;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0)
    result.output.append(buffer, n);
  const int status = ::pclose(pipe);
  result.exitCode = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

} // namespace kt::test
