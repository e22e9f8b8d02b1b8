// Continuous batching for the server: one executor with a KV cache slot per
// concurrent request, and one thread that advances every active request by
// one step at a time, all of them in the same forward pass. Decoding
// requests contribute their last token, requests still reading their
// prompt a chunk of it (together at most the prefill budget per step), so a
// long prompt never stalls the others for more than one chunk and the
// experts see the batch's rows together instead of one vector per request.
#pragma once

#include "runtime/exec/Executor.h"
#include "runtime/tokenizer/Tokenizer.h"
#include "tools/ktrun/Sampler.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace kt::ktrun {

struct GenerationRequest {
  std::vector<int32_t> promptIds; // not empty, shorter than the cache
  int64_t maxNewTokens = 1;
  SamplingOptions sampling;
  bool ignoreEos = false; // the end-of-sentence token does not stop it
};

// How a generation ended.
struct GenerationResult {
  std::vector<int32_t> generatedIds; // without the end-of-sentence token
  bool stoppedAtEos = false;
  bool cancelled = false;
  Status status = Status::success(); // an executor failure
  double queuedSeconds = 0, prefillSeconds = 0, decodeSeconds = 0;
};

// One request's progress, shared by the HTTP thread that reads its text and
// the scheduler thread that produces it.
class Generation {
public:
  // Waits up to `timeout` for new text or the end; appends the text made
  // since the last call to `text` and returns true once the generation has
  // ended (and all its text was handed out).
  bool wait(std::chrono::milliseconds timeout, std::string &text);
  // Stops the generation (a stop string was seen, or the client left); its
  // slot is freed before the next step.
  void cancel();
  bool cancelled() const { return cancelled_.load(); }
  // Valid once wait() returned true.
  const GenerationResult &result() const { return result_; }

private:
  friend class BatchScheduler;
  using Clock = std::chrono::steady_clock;

  // Scheduler side.
  GenerationRequest request_;
  int slot_ = -1;
  size_t fed_ = 0;        // prompt tokens in the cache
  int32_t lastToken_ = 0; // the sampled token to feed next
  std::optional<Sampler> sampler_;
  std::optional<tokenizer::StreamingDecoder> decoder_;
  Clock::time_point submitted_, admitted_, decodeStart_;

  // Shared.
  std::mutex mutex_;
  std::condition_variable changed_;
  std::string pending_;
  bool finished_ = false;
  std::atomic<bool> cancelled_{false};
  GenerationResult result_;
  class BatchScheduler *scheduler_ = nullptr;
};

class BatchScheduler {
public:
  // `executor` has one sequence per slot; both it and `tokenizer` outlive
  // the scheduler. Up to `queueLimit` requests wait when all slots are busy.
  // A step feeds at most `prefillBudget` prompt tokens (the decoding
  // requests' tokens come on top).
  BatchScheduler(exec::Executor &executor, const tokenizer::Tokenizer &tokenizer,
                 int queueLimit, int64_t prefillBudget);
  // Ends the running generations (cancelled) and stops the thread.
  ~BatchScheduler();

  // Queues a request; nullptr when every slot is busy and the queue is full.
  std::shared_ptr<Generation> submit(GenerationRequest request);

  struct Stats {
    int slots = 0, busy = 0, queued = 0;
    uint64_t steps = 0;       // forward passes run
    uint64_t rows = 0;        // tokens fed over all steps
    int largestBatch = 0;     // most requests in one step
    uint64_t batchedSteps = 0; // steps with more than one request
  };
  Stats stats();

private:
  friend class Generation;
  void loop();
  void admit(std::unique_lock<std::mutex> &lock);
  void step(std::vector<std::shared_ptr<Generation>> &active);
  void finish(const std::shared_ptr<Generation> &generation, bool stoppedAtEos, Status status);
  // Gives an admitted generation's slot back (its cache emptied) and finishes it.
  void release(const std::shared_ptr<Generation> &generation, bool stoppedAtEos, Status status);
  void wake();

  exec::Executor &executor_;
  const tokenizer::Tokenizer &tokenizer_;
  std::optional<int32_t> eos_;
  int queueLimit_;
  int64_t prefillBudget_;

  std::mutex mutex_;
  std::condition_variable work_;
  std::deque<std::shared_ptr<Generation>> waiting_;
  std::vector<std::shared_ptr<Generation>> active_; // owned by the thread once admitted
  std::vector<int> freeSlots_;
  bool stopping_ = false;
  Stats stats_;
  std::thread thread_;
};

} // namespace kt::ktrun
