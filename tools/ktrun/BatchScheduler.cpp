#include "tools/ktrun/BatchScheduler.h"

#include <algorithm>

namespace kt::ktrun {
namespace {

double secondsBetween(std::chrono::steady_clock::time_point from,
                      std::chrono::steady_clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

} // namespace

// ---------------------------------------------------------------- Generation

bool Generation::wait(std::chrono::milliseconds timeout, std::string &text) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait_for(lock, timeout, [&] { return finished_ || !pending_.empty(); });
  text += pending_;
  pending_.clear();
  return finished_;
}

void Generation::cancel() {
  if (cancelled_.exchange(true))
    return;
  if (scheduler_)
    scheduler_->wake();
}

// ---------------------------------------------------------------- scheduler

BatchScheduler::BatchScheduler(exec::Executor &executor, const tokenizer::Tokenizer &tokenizer,
                               int queueLimit, int64_t prefillBudget)
    : executor_(executor), tokenizer_(tokenizer), eos_(tokenizer.eosId()),
      queueLimit_(queueLimit), prefillBudget_(std::max<int64_t>(1, prefillBudget)) {
  for (int slot = executor.sequenceCount() - 1; slot >= 0; --slot)
    freeSlots_.push_back(slot);
  stats_.slots = executor.sequenceCount();
  thread_ = std::thread([this] { loop(); });
}

BatchScheduler::~BatchScheduler() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_.notify_all();
  thread_.join();
  for (const std::shared_ptr<Generation> &generation : active_) {
    generation->cancelled_ = true;
    finish(generation, false, Status::success());
  }
  for (const std::shared_ptr<Generation> &generation : waiting_) {
    generation->cancelled_ = true;
    finish(generation, false, Status::success());
  }
}

void BatchScheduler::wake() {
  {
    std::lock_guard<std::mutex> lock(mutex_); // no lost wake-up between check and wait
  }
  work_.notify_all();
}

std::shared_ptr<Generation> BatchScheduler::submit(GenerationRequest request) {
  auto generation = std::make_shared<Generation>();
  generation->request_ = std::move(request);
  generation->scheduler_ = this;
  generation->submitted_ = Generation::Clock::now();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (freeSlots_.empty() && static_cast<int>(waiting_.size()) >= queueLimit_)
      return nullptr;
    waiting_.push_back(generation);
  }
  work_.notify_all();
  return generation;
}

BatchScheduler::Stats BatchScheduler::stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  Stats stats = stats_;
  stats.busy = static_cast<int>(active_.size());
  stats.queued = static_cast<int>(waiting_.size());
  return stats;
}

void BatchScheduler::admit(std::unique_lock<std::mutex> &) {
  // Requests cancelled while queued leave without taking a slot.
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if ((*it)->cancelled()) {
      finish(*it, false, Status::success());
      it = waiting_.erase(it);
    } else {
      ++it;
    }
  }
  while (!freeSlots_.empty() && !waiting_.empty()) {
    std::shared_ptr<Generation> next = waiting_.front();
    waiting_.pop_front();
    next->slot_ = freeSlots_.back();
    freeSlots_.pop_back();
    executor_.reset(next->slot_);
    next->admitted_ = Generation::Clock::now();
    next->sampler_.emplace(next->request_.sampling);
    tokenizer::DecodeOptions decode;
    decode.skipSpecial = true;
    next->decoder_.emplace(tokenizer_, decode);
    active_.push_back(std::move(next));
  }
}

void BatchScheduler::finish(const std::shared_ptr<Generation> &generation, bool stoppedAtEos,
                            Status status) {
  auto now = Generation::Clock::now();
  std::string rest = generation->decoder_ ? generation->decoder_->flush() : std::string();
  std::lock_guard<std::mutex> lock(generation->mutex_);
  GenerationResult &result = generation->result_;
  result.stoppedAtEos = stoppedAtEos;
  result.cancelled = generation->cancelled();
  result.status = std::move(status);
  if (generation->slot_ >= 0) {
    result.queuedSeconds = secondsBetween(generation->submitted_, generation->admitted_);
    if (generation->fed_ == generation->request_.promptIds.size()) {
      result.prefillSeconds = secondsBetween(generation->admitted_, generation->decodeStart_);
      result.decodeSeconds = secondsBetween(generation->decodeStart_, now);
    } else {
      result.prefillSeconds = secondsBetween(generation->admitted_, now);
    }
  }
  if (!result.cancelled && result.status.ok())
    generation->pending_ += rest;
  generation->finished_ = true;
  generation->changed_.notify_all();
}

void BatchScheduler::release(const std::shared_ptr<Generation> &generation, bool stoppedAtEos,
                             Status status) {
  freeSlots_.push_back(generation->slot_);
  executor_.reset(generation->slot_);
  finish(generation, stoppedAtEos, std::move(status));
}

void BatchScheduler::loop() {
  std::vector<std::shared_ptr<Generation>> active;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_.wait(lock, [&] {
        if (stopping_)
          return true;
        bool cancelledActive = std::any_of(active_.begin(), active_.end(),
                                           [](auto &g) { return g->cancelled(); });
        bool cancelledWaiting = std::any_of(waiting_.begin(), waiting_.end(),
                                            [](auto &g) { return g->cancelled(); });
        return !active_.empty() || cancelledActive || cancelledWaiting ||
               (!waiting_.empty() && !freeSlots_.empty());
      });
      if (stopping_)
        return;
      // Cancelled requests give their slot back before anything else runs.
      for (auto it = active_.begin(); it != active_.end();) {
        if ((*it)->cancelled()) {
          release(*it, false, Status::success());
          it = active_.erase(it);
        } else {
          ++it;
        }
      }
      admit(lock);
      active = active_;
    }
    if (!active.empty())
      step(active);
  }
}

void BatchScheduler::step(std::vector<std::shared_ptr<Generation>> &active) {
  // Decoding requests first feed their last token; the prompts share the
  // prefill budget in admission order.
  std::vector<exec::SequenceTokens> batch;
  std::vector<std::shared_ptr<Generation>> members;
  int64_t budget = prefillBudget_;
  for (const std::shared_ptr<Generation> &g : active) {
    const std::vector<int32_t> &prompt = g->request_.promptIds;
    if (g->fed_ == prompt.size()) {
      batch.push_back({g->slot_, {g->lastToken_}});
    } else {
      if (budget <= 0)
        continue;
      const int64_t take = std::min<int64_t>(budget, static_cast<int64_t>(prompt.size() - g->fed_));
      budget -= take;
      batch.push_back({g->slot_, std::vector<int32_t>(prompt.begin() + static_cast<std::ptrdiff_t>(g->fed_),
                                                      prompt.begin() + static_cast<std::ptrdiff_t>(g->fed_ + static_cast<size_t>(take)))});
    }
    members.push_back(g);
  }
  if (batch.empty())
    return;
  uint64_t rows = 0;
  for (const exec::SequenceTokens &entry : batch)
    rows += entry.tokens.size();

  // The executor picks the tokens where the logits are: the most likely
  // ones for a batch of greedy requests, else each request's next draw
  // (greedy ones at temperature 0). Entries still reading their prompt take
  // a draw only when their prompt ends in this step.
  const bool allGreedy = std::all_of(members.begin(), members.end(),
                                     [](const auto &g) { return g->sampler_->greedy(); });
  std::vector<exec::TokenSampling> draws;
  if (!allGreedy)
    for (size_t i = 0; i < members.size(); ++i) {
      Generation &g = *members[i];
      const bool choosing = g.fed_ >= g.request_.promptIds.size() ||
                            g.fed_ + batch[i].tokens.size() >= g.request_.promptIds.size();
      draws.push_back(choosing ? g.sampler_->nextDraw() : exec::TokenSampling{});
    }
  StatusOr<std::vector<int32_t>> chosenIds =
      allGreedy ? executor_.forwardGreedy(batch) : executor_.forwardSampled(batch, draws);
  const Status stepStatus = chosenIds.status();
  struct Ending {
    std::shared_ptr<Generation> generation;
    bool stoppedAtEos;
    Status status;
  };
  std::vector<Ending> endings;
  for (size_t i = 0; i < members.size(); ++i) {
    Generation &g = *members[i];
    if (!stepStatus.ok()) {
      endings.push_back({members[i], false,
                         Status::error("the forward pass failed: " + stepStatus.message())});
      continue;
    }
    const std::vector<int32_t> &prompt = g.request_.promptIds;
    if (g.fed_ < prompt.size()) {
      g.fed_ += batch[i].tokens.size();
      if (g.fed_ < prompt.size())
        continue; // more of the prompt next step
      g.decodeStart_ = Generation::Clock::now();
    }
    const int32_t next = (*chosenIds)[i];
    if (eos_ && next == *eos_ && !g.request_.ignoreEos) {
      endings.push_back({members[i], true, Status::success()});
      continue;
    }
    g.result_.generatedIds.push_back(next); // read by the consumer only after finish
    StatusOr<std::string> piece = g.decoder_->push(next);
    if (!piece) {
      endings.push_back({members[i], false, piece.status()});
      continue;
    }
    if (!piece->empty()) {
      std::lock_guard<std::mutex> lock(g.mutex_);
      g.pending_ += *piece;
      g.changed_.notify_all();
    }
    const bool full = executor_.position(g.slot_) >= executor_.cacheCapacity();
    if (static_cast<int64_t>(g.result_.generatedIds.size()) >= g.request_.maxNewTokens || full) {
      endings.push_back({members[i], false, Status::success()});
      continue;
    }
    g.lastToken_ = next;
  }

  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.steps;
  stats_.rows += rows;
  stats_.largestBatch = std::max(stats_.largestBatch, static_cast<int>(batch.size()));
  if (batch.size() > 1)
    ++stats_.batchedSteps;
  for (Ending &ending : endings) {
    release(ending.generation, ending.stoppedAtEos, std::move(ending.status));
    active_.erase(std::find(active_.begin(), active_.end(), ending.generation));
  }
}

} // namespace kt::ktrun
