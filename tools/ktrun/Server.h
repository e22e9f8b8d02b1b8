// `ktrun MODEL.plan --serve`: an OpenAI-compatible HTTP server over the CPU
// execution path (docs/server.md). POST /v1/chat/completions and
// /v1/completions (streaming as server-sent events, or one JSON answer),
// GET /v1/models and /health. Requests run in `parallel` KV cache slots of
// the session's one executor, their steps batched together by a
// BatchScheduler; up to `queue` more wait for a slot, beyond that the
// answer is 503.
#pragma once

#include "tools/ktrun/Session.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace kt::ktrun {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 10002;           // 0: any free port (the one chosen is printed)
  int parallel = 2;           // requests generating at once
  int queue = 16;             // requests waiting for a slot before 503
  int64_t defaultMaxTokens = 1000; // when a request gives no max_tokens
  SamplingOptions defaultSampling;  // for the sampling fields a request leaves out
  size_t maxBodyBytes = 8u << 20;
};

// Serves until SIGINT or SIGTERM; `session` was opened with
// SessionOptions::sequences == options.parallel. Prints "listening on http://HOST:PORT" to
// stderr once requests are accepted. Returns the process exit code.
int serve(std::unique_ptr<Session> session, const ServerOptions &options);

} // namespace kt::ktrun
