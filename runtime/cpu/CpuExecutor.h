// Runs an execution plan whose ops are all placed on the CPU: the reference
// path of the project (docs/cpu-execution.md). Weights are used in their GGUF
// storage type straight from the memory-mapped model, decoded row by row
// inside the matrix products; the KV cache holds MLA's compressed latents.
#pragma once

#include "runtime/gguf/GgufFile.h"
#include "runtime/plan/Plan.h"
#include "runtime/support/Status.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kt::cpu {

struct ExecutorOptions {
  int threads = 0;        // 0: one per hardware thread
  int64_t cacheLens = 0;  // positions the KV cache holds; 0: the plan's runtime.cache_lens
  int64_t chunkSize = 0;  // most tokens one prefill step runs; 0: the plan's runtime.chunk_size
  std::string planPath;   // the plan's file, for messages; empty: "the plan"
  // Experts chosen by at least this many tokens of a step run as bf16
  // GEMMs through oneDNN (builds with it); 0: never. Off by default: the
  // GEMMs beat the row kernels per matrix from about 64 tokens, but oneDNN's
  // OpenMP threads keep spinning against the pool's between them, and end
  // to end a 2048-token prefill was slower (docs/cpu-codegen.md).
  int64_t expertGemmTokens = 0;
  // Independent sequences (KV caches of cacheLens positions each) that
  // forwardBatch() can advance together; forward() uses sequence 0.
  int sequences = 1;
};

// The new tokens of one sequence in a batched step.
struct SequenceTokens {
  int sequence = 0;
  std::vector<int32_t> tokens;
};

// How often each expert of one MoE layer was chosen since the statistics
// were last cleared (benchmarks print how many distinct experts a layer used).
struct RoutingStats {
  std::string path; // the gate's module path, "model.layers.3.mlp.gate"
  std::vector<uint64_t> selections;
  int64_t distinctExperts() const;
};

class CpuExecutor {
public:
  // Binds every op of `plan` to the weights of `model`, which must outlive
  // the executor, and allocates the KV cache. Fails with a message naming
  // the op for an op not placed on the CPU, an unknown op kind, a missing
  // hyper-parameter, or a weight that the model lacks or whose type or shape
  // differs from the plan.
  static StatusOr<std::unique_ptr<CpuExecutor>> create(const plan::Plan &plan,
                                                       const gguf::GgufModel &model,
                                                       const ExecutorOptions &options);
  ~CpuExecutor();

  // Feeds `tokens` at the next positions (prefill when several, in chunks
  // of at most chunkSize; decode when one) and returns the logits of the
  // last token ([vocab]) or, with allPositions, of every token
  // ([tokens.size() * vocab], token-major). Fails without changing any state
  // for an empty input, a token id outside the vocabulary, or when the KV
  // cache would overflow (the message says how many tokens still fit).
  StatusOr<std::vector<float>> forward(const std::vector<int32_t> &tokens,
                                       bool allPositions = false);

  // One step for several sequences at once (continuous batching): each
  // entry's tokens go to the next positions of its own KV cache, and all
  // rows run through the matrix products together, so an expert chosen by
  // several sequences is read once for all of them. Returns the logits of
  // each entry's last token ([batch.size() * vocab], in batch order). Fails
  // without changing any state for an empty batch or entry, an unknown or
  // repeated sequence, a bad token id, or a cache that would overflow. The
  // caller bounds the step's size (no chunking here).
  StatusOr<std::vector<float>> forwardBatch(const std::vector<SequenceTokens> &batch);

  int64_t position() const;      // tokens in the cache of sequence 0
  int64_t position(int sequence) const;
  int64_t cacheCapacity() const; // positions each sequence's cache holds
  int sequenceCount() const;
  int64_t chunkSize() const;     // most tokens forward() runs in one step
  // MoE layers whose routed experts run the plan's generated CPU code (the
  // others use the reference kernels).
  int generatedExpertLayers() const;
  void reset();                  // empties sequence 0's cache (a new conversation)
  void reset(int sequence);
  // Keeps only the first `tokens` positions of the cache, for a
  // conversation whose history diverges from what was fed after them.
  void truncate(int64_t tokens);
  void truncate(int sequence, int64_t tokens);
  std::vector<RoutingStats> routingStats() const;
  void clearRoutingStats();
  int64_t vocabSize() const;     // logits per token
  int threadCount() const;

  // Which attention computation a forward step uses. Automatic: the
  // expanded keys/values (HF's computation) for steps of several tokens,
  // weight absorption for single-token decode. The others force one path
  // for every step (tests compare them).
  enum class AttentionPath { Automatic, Expanded, Absorbed };
  void setAttentionPath(AttentionPath path);

  class Impl;

private:
  explicit CpuExecutor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

} // namespace kt::cpu
