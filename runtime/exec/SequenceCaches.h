// The positions of each sequence's KV cache and the checks every executor
// makes before a step changes any state: token ids inside the vocabulary,
// room in the cache, a well-formed batch.
#pragma once

#include "runtime/exec/Executor.h"
#include "runtime/support/Status.h"

#include <cstdint>
#include <vector>

namespace kt::exec {

class SequenceCaches {
public:
  SequenceCaches() = default;
  SequenceCaches(int sequences, int64_t capacity)
      : positions_(static_cast<size_t>(sequences), 0), capacity_(capacity) {}

  int64_t capacity() const { return capacity_; }
  int count() const { return static_cast<int>(positions_.size()); }
  int64_t position(size_t sequence) const { return positions_.at(sequence); }
  void advance(size_t sequence, int64_t tokens) { positions_.at(sequence) += tokens; }
  void reset(size_t sequence) { positions_.at(sequence) = 0; }
  // Keeps the first `tokens` positions (never more than are filled).
  void truncate(size_t sequence, int64_t tokens);

  // Token ids in [0, vocabulary).
  static Status checkTokens(const int32_t *tokens, int64_t count, int64_t vocabulary);
  Status checkRoom(size_t sequence, int64_t count) const;
  // forward()'s input: at least one token, each in the vocabulary, room for all.
  Status checkForward(const std::vector<int32_t> &tokens, int64_t vocabulary) const;
  // forwardBatch()'s input: known sequences, each once, with tokens that
  // fit; the message names the sequence.
  Status checkBatch(const std::vector<SequenceTokens> &batch, int64_t vocabulary) const;

private:
  std::vector<int64_t> positions_;
  int64_t capacity_ = 0;
};

} // namespace kt::exec
