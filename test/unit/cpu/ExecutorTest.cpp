// The CPU executor on generated tiny models compiled with the build's ktc.
#include "test/unit/cpu/TestModels.h"

#include <algorithm>
#include <cstdio>

namespace kt::cpu::test {
namespace {

// Logits of every position, fed one token at a time (the decode path).
std::vector<float> decodeOneByOne(CpuExecutor &executor, const std::vector<int32_t> &tokens) {
  std::vector<float> logits;
  for (int32_t token : tokens) {
    StatusOr<std::vector<float>> step = executor.forward({token});
    EXPECT_TRUE(step.ok()) << step.message();
    if (!step.ok())
      return {};
    logits.insert(logits.end(), step->begin(), step->end());
  }
  return logits;
}

std::vector<float> prefillAll(CpuExecutor &executor, const std::vector<int32_t> &tokens) {
  StatusOr<std::vector<float>> logits = executor.forward(tokens, true);
  EXPECT_TRUE(logits.ok()) << logits.message();
  return logits.ok() ? *logits : std::vector<float>{};
}

// Prefill of all tokens at once against token-by-token decode (weight
// absorption), position by position.
void expectDecodeMatchesPrefill(const TestModel &m, double tolerance,
                                const ExecutorOptions &options = {}) {
  const std::vector<int32_t> tokens = sampleTokens(12);
  auto prefill = makeExecutor(m, options);
  auto decode = makeExecutor(m, options);
  ASSERT_TRUE(prefill && decode);
  std::vector<float> all = prefillAll(*prefill, tokens);
  std::vector<float> oneByOne = decodeOneByOne(*decode, tokens);
  ASSERT_EQ(all.size(), tokens.size() * static_cast<size_t>(prefill->vocabSize()));
  ASSERT_EQ(oneByOne.size(), all.size());
  const size_t vocab = static_cast<size_t>(prefill->vocabSize());
  for (size_t t = 0; t < tokens.size(); ++t) {
    std::vector<float> a(all.begin() + t * vocab, all.begin() + (t + 1) * vocab);
    std::vector<float> d(oneByOne.begin() + t * vocab, oneByOne.begin() + (t + 1) * vocab);
    EXPECT_LE(relativeL2(d, a), tolerance) << "position " << t;
  }
  EXPECT_EQ(prefill->position(), 12);
  EXPECT_EQ(decode->position(), 12);
}

TEST(CpuExecutor, DecodeMatchesPrefill) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("tiny-f32", tinyF32Config(), m));
  expectDecodeMatchesPrefill(m, 1e-5);
}

TEST(CpuExecutor, DecodeMatchesPrefillWithoutQueryCompression) {
  KT_REQUIRE_COMPILER();
  gen::ModelConfig config = tinyF32Config();
  config.qLoraRank = 0; // V2-Lite's q_proj
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("no-qlora", config, m));
  ASSERT_NE(m.model->findTensor("blk.0.attn_q.weight"), nullptr);
  expectDecodeMatchesPrefill(m, 1e-5);
}

TEST(CpuExecutor, DecodeMatchesPrefillWithSoftmaxGatingAndPlainRope) {
  KT_REQUIRE_COMPILER();
  gen::ModelConfig config = tinyF32Config();
  config.gating = gen::GatingFunction::Softmax; // V2: no correction bias
  config.normTopkProb = false;
  config.routedScalingFactor = 16.0;
  config.yarnFactor = 1.0; // no rope scaling keys
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("softmax-plain", config, m));
  ASSERT_EQ(m.model->findTensor("blk.1.exp_probs_b.bias"), nullptr);
  expectDecodeMatchesPrefill(m, 1e-5);
}

TEST(CpuExecutor, DecodeMatchesPrefillOnQuantizedWeights) {
  KT_REQUIRE_COMPILER();
  gen::ModelConfig config = *gen::presetConfig("tiny"); // q8_0, experts q4_K
  config.types.sharedExperts = gguf::GgmlType::Q6_K;
  config.types.dense = gguf::GgmlType::Q5_K;
  config.types.norm = gguf::GgmlType::BF16;
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("tiny-quant", config, m));
  ASSERT_EQ(m.model->findTensor("blk.1.ffn_up_exps.weight")->type, gguf::GgmlType::Q4_K);
  // The row kernels give every token the same result in prefill and decode;
  // on AMX hosts, experts 8 prefill tokens chose would run on bf16 tiles
  // (held to the reference in CpuExecutorReference.QuantizedWeightsTileKernels).
  ExecutorOptions rowKernels;
  rowKernels.expertTileTokens = 0;
  expectDecodeMatchesPrefill(m, 1e-5, rowKernels);
}

TEST(CpuExecutor, AttentionLayoutsGiveTheSameLogits) {
  KT_REQUIRE_COMPILER();
  const std::vector<int32_t> tokens = sampleTokens(9, 4);
  std::vector<std::vector<float>> prefills, decodes;
  for (gen::AttentionLayout layout :
       {gen::AttentionLayout::Split, gen::AttentionLayout::Joint, gen::AttentionLayout::Both}) {
    gen::ModelConfig config = tinyF32Config();
    config.attention = layout;
    TestModel m;
    ASSERT_NO_FATAL_FAILURE(
        buildModel("layout-" + std::string(gen::attentionLayoutName(layout)), config, m));
    auto executor = makeExecutor(m);
    ASSERT_TRUE(executor);
    prefills.push_back(prefillAll(*executor, tokens));
    executor->reset();
    decodes.push_back(decodeOneByOne(*executor, tokens));
  }
  for (size_t i = 1; i < prefills.size(); ++i) {
    EXPECT_LE(relativeL2(prefills[i], prefills[0]), 1e-5) << "layout " << i;
    EXPECT_LE(relativeL2(decodes[i], decodes[0]), 1e-5) << "layout " << i;
  }
  EXPECT_LE(relativeL2(decodes[0], prefills[0]), 1e-5);
}

TEST(CpuExecutor, ChunkedPrefillEqualsOneStep) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("chunks", tinyF32Config(), m));
  const std::vector<int32_t> tokens = sampleTokens(11, 2);
  auto whole = makeExecutor(m);
  std::vector<float> reference = prefillAll(*whole, tokens);

  ExecutorOptions small;
  small.chunkSize = 4;
  auto chunked = makeExecutor(m, small);
  EXPECT_LE(relativeL2(prefillAll(*chunked, tokens), reference), 1e-5);

  // Two calls: the second prefill continues the cache of the first.
  auto split = makeExecutor(m);
  std::vector<float> first = prefillAll(*split, {tokens.begin(), tokens.begin() + 5});
  std::vector<float> second = prefillAll(*split, {tokens.begin() + 5, tokens.end()});
  first.insert(first.end(), second.begin(), second.end());
  EXPECT_LE(relativeL2(first, reference), 1e-5);

  // Without allPositions, only the last token's logits come back.
  auto last = makeExecutor(m, small);
  StatusOr<std::vector<float>> lastLogits = last->forward(tokens);
  ASSERT_TRUE(lastLogits.ok()) << lastLogits.message();
  const size_t vocab = static_cast<size_t>(last->vocabSize());
  ASSERT_EQ(lastLogits->size(), vocab);
  EXPECT_LE(relativeL2(*lastLogits, {reference.end() - vocab, reference.end()}), 1e-5);
}

TEST(CpuExecutor, ExpandedAndAbsorbedAttentionAgree) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("paths", tinyF32Config(), m));
  const std::vector<int32_t> tokens = sampleTokens(10, 6);
  auto expanded = makeExecutor(m);
  expanded->setAttentionPath(CpuExecutor::AttentionPath::Expanded);
  auto absorbed = makeExecutor(m);
  absorbed->setAttentionPath(CpuExecutor::AttentionPath::Absorbed);
  std::vector<float> a = prefillAll(*expanded, tokens), b = prefillAll(*absorbed, tokens);
  EXPECT_LE(relativeL2(b, a), 1e-5);
  // A decode step through the expanded path too.
  StatusOr<std::vector<float>> stepA = expanded->forward({7});
  StatusOr<std::vector<float>> stepB = absorbed->forward({7});
  ASSERT_TRUE(stepA.ok() && stepB.ok());
  EXPECT_LE(relativeL2(*stepB, *stepA), 1e-5);
  // The two paths are different computations: equal logits come from the
  // math, not from sharing code.
  EXPECT_NE(a, b);
}

TEST(CpuExecutor, ThreadCountDoesNotChangeTheResult) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("threads", *gen::presetConfig("tiny"), m));
  const std::vector<int32_t> tokens = sampleTokens(7, 3);
  std::vector<std::vector<float>> results;
  for (int threads : {1, 3}) {
    ExecutorOptions options;
    options.threads = threads;
    auto executor = makeExecutor(m, options);
    EXPECT_EQ(executor->threadCount(), threads);
    std::vector<float> logits = prefillAll(*executor, tokens);
    std::vector<float> step = decodeOneByOne(*executor, {11, 12});
    logits.insert(logits.end(), step.begin(), step.end());
    results.push_back(logits);
  }
  EXPECT_EQ(results[0], results[1]);
}

TEST(CpuExecutor, CacheOverflowFailsWithoutChangingState) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("overflow", tinyF32Config(), m));
  const std::vector<int32_t> tokens = sampleTokens(8, 5);
  ExecutorOptions options;
  options.cacheLens = 8;
  auto executor = makeExecutor(m, options);
  EXPECT_EQ(executor->cacheCapacity(), 8);
  ASSERT_TRUE(executor->forward({tokens.begin(), tokens.begin() + 6}).ok());

  StatusOr<std::vector<float>> tooMany = executor->forward({1, 2, 3});
  ASSERT_FALSE(tooMany.ok());
  EXPECT_NE(tooMany.message().find("2 more fit"), std::string::npos) << tooMany.message();
  EXPECT_NE(tooMany.message().find("--cache-lens"), std::string::npos) << tooMany.message();
  EXPECT_EQ(executor->position(), 6);

  // The cache still holds the first six tokens: the remaining two give what
  // an executor that never failed gives.
  StatusOr<std::vector<float>> rest = executor->forward({tokens.begin() + 6, tokens.end()});
  ASSERT_TRUE(rest.ok()) << rest.message();
  EXPECT_EQ(executor->position(), 8);
  auto fresh = makeExecutor(m, options);
  StatusOr<std::vector<float>> expected = fresh->forward(tokens);
  ASSERT_TRUE(expected.ok());
  EXPECT_LE(relativeL2(*rest, *expected), 1e-5);
  EXPECT_FALSE(executor->forward({1}).ok());
}

TEST(CpuExecutor, ResetStartsANewConversation) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("reset", tinyF32Config(), m));
  const std::vector<int32_t> tokens = sampleTokens(6, 8);
  auto executor = makeExecutor(m);
  std::vector<float> first = prefillAll(*executor, tokens);
  ASSERT_TRUE(executor->forward({3, 4, 5}).ok());
  executor->reset();
  EXPECT_EQ(executor->position(), 0);
  EXPECT_EQ(prefillAll(*executor, tokens), first);
}

TEST(CpuExecutor, TruncateContinuesFromTheKeptPrefix) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("truncate", tinyF32Config(), m));
  const std::vector<int32_t> prefix = sampleTokens(5, 3), tail = sampleTokens(4, 4);
  std::vector<int32_t> whole = prefix;
  whole.insert(whole.end(), tail.begin(), tail.end());
  auto fresh = makeExecutor(m);
  StatusOr<std::vector<float>> expected = fresh->forward(whole);
  ASSERT_TRUE(expected.ok()) << expected.message();

  // A detour after the prefix, cut off again, must leave no trace.
  auto executor = makeExecutor(m);
  ASSERT_TRUE(executor->forward(prefix).ok());
  ASSERT_TRUE(executor->forward(sampleTokens(3, 9)).ok());
  executor->truncate(static_cast<int64_t>(prefix.size()));
  EXPECT_EQ(executor->position(), static_cast<int64_t>(prefix.size()));
  StatusOr<std::vector<float>> continued = executor->forward(tail);
  ASSERT_TRUE(continued.ok()) << continued.message();
  EXPECT_LE(relativeL2(*continued, *expected), 1e-6);
  executor->truncate(1000); // never grows the cache
  EXPECT_EQ(executor->position(), static_cast<int64_t>(whole.size()));
}

TEST(CpuExecutor, CountsExpertSelections) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  gen::ModelConfig config = tinyF32Config();
  ASSERT_NO_FATAL_FAILURE(buildModel("routing", config, m));
  auto executor = makeExecutor(m);
  const std::vector<int32_t> tokens = sampleTokens(24, 5);
  ASSERT_TRUE(executor->forward(tokens).ok());
  std::vector<RoutingStats> stats = executor->routingStats();
  ASSERT_EQ(static_cast<int64_t>(stats.size()), config.layerCount - config.denseLayerCount);
  for (const RoutingStats &layer : stats) {
    uint64_t total = 0;
    for (uint64_t n : layer.selections)
      total += n;
    EXPECT_EQ(total, tokens.size() * static_cast<uint64_t>(config.expertsUsed)) << layer.path;
    EXPECT_GT(layer.distinctExperts(), config.expertsUsed) << layer.path;
    EXPECT_EQ(layer.path.rfind("model.layers.", 0), 0u);
  }
  executor->clearRoutingStats();
  for (const RoutingStats &layer : executor->routingStats())
    EXPECT_EQ(layer.distinctExperts(), 0);
}

TEST(CpuExecutor, QuantizedWeightsStayCloseToF32) {
  KT_REQUIRE_COMPILER();
  gen::ModelConfig q8 = *gen::presetConfig("tiny");
  for (gguf::GgmlType *type : {&q8.types.embedding, &q8.types.output, &q8.types.attention,
                               &q8.types.dense, &q8.types.sharedExperts, &q8.types.experts})
    *type = gguf::GgmlType::Q8_0;
  TestModel f32Model, q8Model;
  ASSERT_NO_FATAL_FAILURE(buildModel("same-f32", tinyF32Config(), f32Model));
  ASSERT_NO_FATAL_FAILURE(buildModel("same-q8", q8, q8Model));
  const std::vector<int32_t> tokens = sampleTokens(10, 9);
  std::vector<float> a = prefillAll(*makeExecutor(f32Model), tokens);
  std::vector<float> b = prefillAll(*makeExecutor(q8Model), tokens);
  const double difference = relativeL2(b, a);
  EXPECT_LT(difference, 0.05); // measured 0.021
  EXPECT_GT(difference, 0.0); // the q8_0 model really has other weights
}

TEST(CpuExecutor, YarnScalingChangesTheLogits) {
  KT_REQUIRE_COMPILER();
  gen::ModelConfig plain = tinyF32Config();
  plain.yarnFactor = 1.0;
  TestModel yarnModel, plainModel;
  ASSERT_NO_FATAL_FAILURE(buildModel("yarn", tinyF32Config(), yarnModel));
  ASSERT_NO_FATAL_FAILURE(buildModel("plain", plain, plainModel));
  const std::vector<int32_t> tokens = sampleTokens(8, 10);
  std::vector<float> a = prefillAll(*makeExecutor(yarnModel), tokens);
  std::vector<float> b = prefillAll(*makeExecutor(plainModel), tokens);
  EXPECT_GT(relativeL2(a, b), 1e-3);
}

TEST(CpuExecutor, ReportsVocabularyAndCapacity) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("sizes", tinyF32Config(), m));
  auto executor = makeExecutor(m);
  EXPECT_EQ(executor->vocabSize(), m.model->findTensor("output.weight")->ne[1]);
  EXPECT_EQ(executor->cacheCapacity(), m.plan.defaults.cacheLens);
  EXPECT_EQ(executor->position(), 0);
}

TEST(CpuExecutor, RejectsBadTokens) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("bad-tokens", tinyF32Config(), m));
  auto executor = makeExecutor(m);
  StatusOr<std::vector<float>> empty = executor->forward({});
  EXPECT_FALSE(empty.ok());
  StatusOr<std::vector<float>> outside = executor->forward({1, 100000});
  ASSERT_FALSE(outside.ok());
  EXPECT_NE(outside.message().find("100000"), std::string::npos) << outside.message();
  StatusOr<std::vector<float>> negative = executor->forward({-1});
  EXPECT_FALSE(negative.ok());
  EXPECT_EQ(executor->position(), 0);
}

// Greedy decoding through the executor: each entry's id is the argmax of
// the logits the same step gives (the lower id on a tie).
TEST(CpuExecutor, GreedyIdsAreTheArgmaxOfTheLogits) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("greedy", tinyF32Config(), m));
  ExecutorOptions options;
  options.sequences = 2;
  auto greedy = makeExecutor(m, options), full = makeExecutor(m, options);
  std::vector<SequenceTokens> step = {{0, sampleTokens(6, 1)}, {1, sampleTokens(3, 2)}};
  const int64_t vocab = full->vocabSize();
  for (int round = 0; round < 3; ++round) {
    StatusOr<std::vector<int32_t>> ids = greedy->forwardGreedy(step);
    StatusOr<std::vector<float>> logits = full->forwardBatch(step);
    ASSERT_TRUE(ids.ok() && logits.ok());
    ASSERT_EQ(ids->size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      const auto row = logits->begin() + long(i * size_t(vocab));
      EXPECT_EQ((*ids)[i], int32_t(std::max_element(row, row + vocab) - row)) << "round " << round;
    }
    step = {{0, {(*ids)[0]}}, {1, {(*ids)[1]}}};
  }
}

// Continuous batching: sequences advanced together give each sequence the
// logits it gets alone (each token's products do not depend on the other
// rows of the step, and every sequence attends over its own cache).
void expectBatchedSequencesMatchSeparateRuns(const TestModel &m, ExecutorOptions options) {
  const std::vector<int32_t> a = sampleTokens(7, 3), b = sampleTokens(5, 4), c = sampleTokens(9, 5);
  options.sequences = 3;
  auto batched = makeExecutor(m, options);
  ASSERT_EQ(batched->sequenceCount(), 3);
  const size_t vocab = static_cast<size_t>(batched->vocabSize());

  // Step 1: a and b prefill, c not yet admitted. Step 2: a and b decode one
  // token each while c prefills. Step 3: all three decode.
  auto slice = [](const std::vector<int32_t> &v, size_t begin, size_t end) {
    return std::vector<int32_t>(v.begin() + begin, v.begin() + end);
  };
  StatusOr<std::vector<float>> step1 =
      batched->forwardBatch({{0, slice(a, 0, 6)}, {2, slice(b, 0, 4)}});
  ASSERT_TRUE(step1.ok()) << step1.message();
  StatusOr<std::vector<float>> step2 =
      batched->forwardBatch({{2, slice(b, 4, 5)}, {1, slice(c, 0, 8)}, {0, slice(a, 6, 7)}});
  ASSERT_TRUE(step2.ok()) << step2.message();
  StatusOr<std::vector<float>> step3 =
      batched->forwardBatch({{0, {c[1]}}, {1, {c[8]}}, {2, {a[0]}}});
  ASSERT_TRUE(step3.ok()) << step3.message();
  EXPECT_EQ(batched->position(0), 8);
  EXPECT_EQ(batched->position(1), 9);
  EXPECT_EQ(batched->position(2), 6);

  auto alone = [&](const std::vector<int32_t> &prompt, const std::vector<int32_t> &rest) {
    ExecutorOptions one = options;
    one.sequences = 1;
    auto executor = makeExecutor(m, one);
    std::vector<float> out = *executor->forward(prompt, true);
    for (int32_t token : rest) {
      std::vector<float> step = *executor->forward({token});
      out.insert(out.end(), step.begin(), step.end());
    }
    return out; // logits of every position
  };
  std::vector<float> refA = alone(slice(a, 0, 6), {a[6], c[1]});
  std::vector<float> refB = alone(slice(b, 0, 4), {b[4], a[0]});
  std::vector<float> refC = alone(slice(c, 0, 8), {c[8]});
  auto row = [&](const std::vector<float> &logits, size_t index) {
    return std::vector<float>(logits.begin() + index * vocab, logits.begin() + (index + 1) * vocab);
  };
  EXPECT_LE(relativeL2(row(*step1, 0), row(refA, 5)), 1e-6);
  EXPECT_LE(relativeL2(row(*step1, 1), row(refB, 3)), 1e-6);
  EXPECT_LE(relativeL2(row(*step2, 0), row(refB, 4)), 1e-6);
  EXPECT_LE(relativeL2(row(*step2, 1), row(refC, 7)), 1e-6);
  EXPECT_LE(relativeL2(row(*step2, 2), row(refA, 6)), 1e-6);
  EXPECT_LE(relativeL2(row(*step3, 0), row(refA, 7)), 1e-6);
  EXPECT_LE(relativeL2(row(*step3, 1), row(refC, 8)), 1e-6);
  EXPECT_LE(relativeL2(row(*step3, 2), row(refB, 5)), 1e-6);

  // Resetting one sequence leaves the others alone.
  batched->reset(1);
  EXPECT_EQ(batched->position(1), 0);
  EXPECT_EQ(batched->position(0), 8);
}

TEST(CpuExecutor, BatchedSequencesMatchSeparateRuns) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("batched", tinyF32Config(), m));
  expectBatchedSequencesMatchSeparateRuns(m, {});
}

// With q4_K experts and (on AMX hosts) tile kernels for experts 2 tokens of
// a sequence chose: whether a sequence's rows run on tiles depends on its
// own tokens only, so batching still changes nothing.
TEST(CpuExecutor, BatchedSequencesMatchSeparateRunsOnTileKernels) {
  KT_REQUIRE_COMPILER();
  gen::ModelConfig config = *gen::presetConfig("tiny"); // q4_K experts
  config.hiddenSize = 256;
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("batched-tiles", config, m));
  ExecutorOptions options;
  options.expertTileTokens = 2;
  expectBatchedSequencesMatchSeparateRuns(m, options);
  auto executor = makeExecutor(m, options);
  std::printf("MoE layers on tile kernels: %d\n", executor->tileExpertLayers());
}

TEST(CpuExecutor, RejectsBadBatchesWithoutChangingState) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("bad-batches", tinyF32Config(), m));
  ExecutorOptions options;
  options.sequences = 2;
  options.cacheLens = 8;
  auto executor = makeExecutor(m, options);
  ASSERT_TRUE(executor->forwardBatch({{0, {1, 2, 3}}}).ok());
  auto expectError = [&](const std::vector<SequenceTokens> &batch, const std::string &words) {
    StatusOr<std::vector<float>> result = executor->forwardBatch(batch);
    ASSERT_FALSE(result.ok());
    EXPECT_NE(result.message().find(words), std::string::npos) << result.message();
    EXPECT_EQ(executor->position(0), 3);
    EXPECT_EQ(executor->position(1), 0);
  };
  expectError({}, "no sequences");
  expectError({{2, {1}}}, "does not exist");
  expectError({{-1, {1}}}, "does not exist");
  expectError({{0, {1}}, {0, {2}}}, "appears twice");
  expectError({{1, {}}}, "no tokens");
  expectError({{1, {1}}, {0, {100000}}}, "100000");
  expectError({{1, {1}}, {0, {1, 2, 3, 4, 5, 6}}}, "5 more fit");
  ExecutorOptions none;
  none.sequences = 0;
  StatusOr<std::unique_ptr<CpuExecutor>> refused = CpuExecutor::create(m.plan, *m.model, none);
  EXPECT_FALSE(refused.ok());
}

TEST(CpuExecutor, RefusesPlansWithGpuOps) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(
      buildModel("gpu", tinyF32Config(), m, "rules/DeepSeek-V3-Chat.yaml", "sm_90a:80GiB"));
  StatusOr<std::unique_ptr<CpuExecutor>> executor = CpuExecutor::create(m.plan, *m.model, {});
  ASSERT_FALSE(executor.ok());
  EXPECT_NE(executor.message().find("cuda:0"), std::string::npos) << executor.message();
  EXPECT_NE(executor.message().find("GPU backend"), std::string::npos) << executor.message();
}

TEST(CpuExecutor, RefusesHandEditedPlans) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("edited", tinyF32Config(), m));
  auto expectRefused = [&](const plan::Plan &plan, const std::string &needle) {
    ExecutorOptions options;
    options.planPath = "edited.plan";
    StatusOr<std::unique_ptr<CpuExecutor>> executor = CpuExecutor::create(plan, *m.model, options);
    ASSERT_FALSE(executor.ok()) << "accepted a plan that should fail with: " << needle;
    EXPECT_NE(executor.message().find(needle), std::string::npos) << executor.message();
    EXPECT_NE(executor.message().find("edited.plan"), std::string::npos) << executor.message();
  };
  auto findOp = [](plan::Plan &plan, const std::string &kind) -> plan::Op & {
    return *std::find_if(plan.ops.begin(), plan.ops.end(),
                         [&](const plan::Op &op) { return op.kind == kind; });
  };
  {
    plan::Plan p = m.plan;
    findOp(p, "routed_experts").decodeDevice = "cuda:1";
    expectRefused(p, "cuda:1");
  }
  {
    plan::Plan p = m.plan;
    findOp(p, "mla_attention").kernels["q_b_proj.decode"] = "linear.quant.gemv_q8_0";
    expectRefused(p, "GPU kernel");
  }
  {
    plan::Plan p = m.plan;
    findOp(p, "mlp").weights[0].tensor = "blk.0.no_such.weight";
    expectRefused(p, "blk.0.no_such.weight");
  }
  {
    plan::Plan p = m.plan;
    findOp(p, "lm_head").weights[0].type = "q8_0";
    expectRefused(p, "type q8_0");
  }
  {
    plan::Plan p = m.plan;
    plan::Op &attention = findOp(p, "mla_attention");
    for (plan::Weight &w : attention.weights)
      if (w.role == "o_proj")
        w.shape = {128, 512};
    expectRefused(p, "shape [128, 512]");
  }
  {
    plan::Plan p = m.plan;
    findOp(p, "moe_gate").kind = "moe_gate_v9";
    expectRefused(p, "unknown kind 'moe_gate_v9'");
  }
  {
    plan::Plan p = m.plan;
    findOp(p, "mla_attention").params.erase("kv_lora_rank");
    expectRefused(p, "kv_lora_rank");
  }
}

} // namespace
} // namespace kt::cpu::test
