// Continuous batching: requests advanced together in one executor give the
// tokens each gets alone; slots, the queue and cancellation.
#include "test/unit/cpu/TestModels.h"
#include "tools/ktrun/BatchScheduler.h"

#include <gtest/gtest.h>

namespace kt::ktrun {
namespace {

using cpu::test::TestModel;
using namespace std::chrono_literals;

struct Fixture {
  TestModel m;
  std::optional<tokenizer::Tokenizer> tokenizer;
};

void load(Fixture &f, const std::string &name) {
  ASSERT_NO_FATAL_FAILURE(cpu::test::buildModel(name, cpu::test::tinyF32Config(), f.m));
  StatusOr<tokenizer::Tokenizer> tokenizer = tokenizer::Tokenizer::fromGguf(*f.m.model);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.message();
  f.tokenizer = std::move(*tokenizer);
}

std::unique_ptr<cpu::CpuExecutor> executorWith(const Fixture &f, int sequences,
                                               int64_t cacheLens = 0) {
  cpu::ExecutorOptions options;
  options.sequences = sequences;
  options.cacheLens = cacheLens;
  return cpu::test::makeExecutor(f.m, options);
}

// The tokens one request gets on an executor of its own, one step at a time.
std::vector<int32_t> generateAlone(const Fixture &f, const GenerationRequest &request) {
  auto executor = executorWith(f, 1);
  Sampler sampler(request.sampling);
  std::optional<int32_t> eos = f.tokenizer->eosId();
  std::vector<int32_t> ids;
  StatusOr<std::vector<float>> logits = executor->forward(request.promptIds);
  while (logits.ok()) {
    int32_t next = sampler.sample(*logits);
    if (eos && next == *eos && !request.ignoreEos)
      break;
    ids.push_back(next);
    if (static_cast<int64_t>(ids.size()) == request.maxNewTokens ||
        executor->position() == executor->cacheCapacity())
      break;
    logits = executor->forward({next});
  }
  EXPECT_TRUE(logits.ok()) << logits.message();
  return ids;
}

// Waits for the end; returns all the text handed out.
std::string collect(Generation &generation) {
  std::string text;
  for (int i = 0; i < 6000 && !generation.wait(10ms, text); ++i) {
  }
  return text;
}

GenerationRequest request(std::vector<int32_t> prompt, int64_t maxNewTokens,
                          double temperature = 0, uint64_t seed = 0) {
  GenerationRequest r;
  r.promptIds = std::move(prompt);
  r.maxNewTokens = maxNewTokens;
  r.sampling.temperature = temperature;
  r.sampling.seed = seed;
  r.ignoreEos = true;
  return r;
}

void expectBatchedMatchesAlone(int64_t prefillBudget) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(load(f, "batching-" + std::to_string(prefillBudget)));
  auto executor = executorWith(f, 3);
  std::vector<GenerationRequest> requests = {
      request(cpu::test::sampleTokens(9, 1), 12),
      request(cpu::test::sampleTokens(4, 2), 20),
      request(cpu::test::sampleTokens(15, 3), 6, 0.8, 7), // sampled, seeded
      request(cpu::test::sampleTokens(6, 4), 16),
      request(cpu::test::sampleTokens(11, 5), 9),
  };
  requests[3].ignoreEos = false;
  std::vector<std::shared_ptr<Generation>> running;
  {
    BatchScheduler scheduler(*executor, *f.tokenizer, 8, prefillBudget);
    for (const GenerationRequest &r : requests) {
      running.push_back(scheduler.submit(r));
      ASSERT_NE(running.back(), nullptr);
    }
    for (size_t i = 0; i < requests.size(); ++i) {
      std::string text = collect(*running[i]);
      const GenerationResult &result = running[i]->result();
      ASSERT_TRUE(result.status.ok()) << result.status.message();
      EXPECT_FALSE(result.cancelled);
      EXPECT_EQ(result.generatedIds, generateAlone(f, requests[i])) << "request " << i;
      // The text is the streamed decoding of the ids (random models make
      // broken UTF-8, which streaming turns into U+FFFD).
      tokenizer::DecodeOptions decode;
      decode.skipSpecial = true;
      tokenizer::StreamingDecoder stream(*f.tokenizer, decode);
      std::string expected;
      for (int32_t id : result.generatedIds)
        expected += *stream.push(id);
      expected += stream.flush();
      EXPECT_EQ(text, expected) << "request " << i;
    }
    BatchScheduler::Stats stats = scheduler.stats();
    EXPECT_EQ(stats.slots, 3);
    EXPECT_EQ(stats.busy, 0);
    EXPECT_EQ(stats.queued, 0);
    EXPECT_EQ(stats.largestBatch, 3); // three slots were decoding together
    EXPECT_GT(stats.batchedSteps, 0u);
  }
}

TEST(BatchScheduler, BatchedRequestsGetTheTokensTheyGetAlone) {
  KT_REQUIRE_COMPILER();
  expectBatchedMatchesAlone(64);
}

// A budget smaller than the prompts: prompts are fed in chunks between the
// decode steps of the others.
TEST(BatchScheduler, ChunkedPromptsInterleaveWithDecoding) {
  KT_REQUIRE_COMPILER();
  expectBatchedMatchesAlone(3);
}

// A long request holding the only slot, so the next ones queue.
std::shared_ptr<Generation> occupyTheSlot(BatchScheduler &scheduler) {
  auto first = scheduler.submit(request(cpu::test::sampleTokens(4), 4000));
  EXPECT_NE(first, nullptr);
  for (int i = 0; i < 500 && scheduler.stats().busy == 0; ++i)
    std::this_thread::sleep_for(5ms);
  EXPECT_EQ(scheduler.stats().busy, 1);
  return first;
}

TEST(BatchScheduler, RefusesWhenSlotsAndQueueAreFull) {
  KT_REQUIRE_COMPILER();
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(load(f, "queue-full"));
  auto executor = executorWith(f, 1, 4096);
  BatchScheduler scheduler(*executor, *f.tokenizer, 1, 64);
  auto first = occupyTheSlot(scheduler);
  auto second = scheduler.submit(request(cpu::test::sampleTokens(4), 3));
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(scheduler.stats().queued, 1);
  EXPECT_EQ(scheduler.submit(request(cpu::test::sampleTokens(4), 3)), nullptr);

  // Cancelling the first frees its slot for the queued one.
  first->cancel();
  collect(*first);
  EXPECT_TRUE(first->result().cancelled);
  EXPECT_LT(first->result().generatedIds.size(), 4000u);
  collect(*second);
  EXPECT_FALSE(second->result().cancelled);
  EXPECT_EQ(second->result().generatedIds.size(), 3u);
  EXPECT_EQ(scheduler.stats().busy, 0);
}

TEST(BatchScheduler, CancelledWhileQueuedNeverRuns) {
  KT_REQUIRE_COMPILER();
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(load(f, "cancel-queued"));
  auto executor = executorWith(f, 1, 4096);
  BatchScheduler scheduler(*executor, *f.tokenizer, 4, 64);
  auto first = occupyTheSlot(scheduler);
  auto queued = scheduler.submit(request(cpu::test::sampleTokens(4), 3));
  queued->cancel();
  collect(*queued);
  EXPECT_TRUE(queued->result().cancelled);
  EXPECT_TRUE(queued->result().generatedIds.empty());
  EXPECT_EQ(scheduler.stats().queued, 0);
  EXPECT_EQ(scheduler.stats().busy, 1); // the first still runs
  first->cancel();
  collect(*first);
  EXPECT_EQ(scheduler.stats().busy, 0);
}

// A request stops when its cache slot is full, even below max tokens.
TEST(BatchScheduler, StopsAtTheEndOfTheCache) {
  KT_REQUIRE_COMPILER();
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(load(f, "cache-end"));
  auto executor = executorWith(f, 2, 16);
  BatchScheduler scheduler(*executor, *f.tokenizer, 2, 64);
  auto generation = scheduler.submit(request(cpu::test::sampleTokens(10), 100));
  collect(*generation);
  ASSERT_TRUE(generation->result().status.ok());
  // 10 prompt tokens and 6 fed generated ones fill 16 positions; the
  // logits of the last fed token give one more.
  EXPECT_EQ(generation->result().generatedIds.size(), 7u);
}

} // namespace
} // namespace kt::ktrun
