#include "runtime/exec/SequenceCaches.h"

#include <algorithm>
#include <string>

namespace kt::exec {

void SequenceCaches::truncate(size_t sequence, int64_t tokens) {
  int64_t &position = positions_.at(sequence);
  position = std::clamp<int64_t>(tokens, 0, position);
}

Status SequenceCaches::checkTokens(const int32_t *tokens, int64_t count, int64_t vocabulary) {
  for (int64_t i = 0; i < count; ++i)
    if (tokens[i] < 0 || tokens[i] >= vocabulary)
      return Status::error("Token id " + std::to_string(tokens[i]) + " (input position " +
                           std::to_string(i) + ") is outside the model's vocabulary of " +
                           std::to_string(vocabulary) +
                           " tokens; use the tokenizer of the same model.");
  return Status::success();
}

Status SequenceCaches::checkRoom(size_t sequence, int64_t count) const {
  const int64_t used = positions_[sequence], room = capacity_ - used;
  if (count <= room)
    return Status::success();
  return Status::error(
      "The KV cache is full: it holds " + std::to_string(capacity_) + " tokens, " +
      std::to_string(used) + " are in use, so " + std::to_string(room) +
      " more fit, but this step needs " + std::to_string(count) +
      ". Raise --cache-lens (the model allows longer contexts) or start a new conversation.");
}

Status SequenceCaches::checkForward(const std::vector<int32_t> &tokens, int64_t vocabulary) const {
  const int64_t count = static_cast<int64_t>(tokens.size());
  if (count == 0)
    return Status::error("forward() got no tokens; pass at least one token id.");
  if (Status valid = checkTokens(tokens.data(), count, vocabulary); !valid.ok())
    return valid;
  return checkRoom(0, count);
}

Status SequenceCaches::checkBatch(const std::vector<SequenceTokens> &batch,
                                  int64_t vocabulary) const {
  if (batch.empty())
    return Status::error("forwardBatch() got no sequences; pass at least one.");
  // Names and repeats are looked for only where something is wrong: a
  // valid batch (every decode step's) allocates nothing here.
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceTokens &entry = batch[i];
    auto name = [&] { return "Sequence " + std::to_string(entry.sequence); };
    if (entry.sequence < 0 || entry.sequence >= count())
      return Status::error(name() + " does not exist; the executor has " + std::to_string(count()) +
                           " sequences.");
    for (size_t j = 0; j < i; ++j)
      if (batch[j].sequence == entry.sequence)
        return Status::error(name() +
                             " appears twice in one batch; give each sequence's tokens once.");
    const size_t sequence = static_cast<size_t>(entry.sequence);
    const int64_t tokens = static_cast<int64_t>(entry.tokens.size());
    if (tokens == 0)
      return Status::error(name() + " has no tokens in this batch; leave it out instead.");
    if (Status valid = checkTokens(entry.tokens.data(), tokens, vocabulary); !valid.ok())
      return Status::error(name() + ": " + valid.message());
    if (Status room = checkRoom(sequence, tokens); !room.ok())
      return Status::error(name() + ": " + room.message());
  }
  return Status::success();
}

} // namespace kt::exec
