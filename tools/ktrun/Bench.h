// `ktrun --bench`: prefill and decode speed of a plan on a random prompt,
// with decode's expert-weight traffic against the host's memory bandwidth.
#pragma once

#include "runtime/exec/Executor.h"
#include "runtime/plan/Plan.h"

#include <cstdint>

namespace kt::ktrun {

struct BenchOptions {
  int64_t promptTokens = 256;
  int64_t decodeTokens = 64;
  // Decode runs of decodeTokens, each followed by its own reading of the
  // host's bandwidth; the first is reported in full, and with more than
  // one each run's ratio to the bound and their median.
  int64_t decodeRounds = 1;
  uint64_t seed = 1;
};

// Runs the benchmark and prints its report to stdout; returns the exit code.
int runBench(const plan::Plan &plan, exec::Executor &executor, const BenchOptions &options);

} // namespace kt::ktrun
