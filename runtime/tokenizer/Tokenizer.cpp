#include "runtime/tokenizer/Tokenizer.h"

#include "runtime/tokenizer/ByteLevel.h"
#include "runtime/tokenizer/TokenizerImpl.h"
#include "runtime/tokenizer/Utf8.h"

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <cstdio>
#include <functional>

namespace kt::tokenizer {

//===----------------------------------------------------------------------===//
// MergeTable and AddedTokenMatcher
//===----------------------------------------------------------------------===//

void MergeTable::build(const std::vector<std::pair<uint64_t, Merge>> &entries) {
  size_t capacity = 16;
  while (capacity < entries.size() * 2)
    capacity *= 2;
  entries_.assign(capacity, Entry{});
  mask_ = capacity - 1;
  shift_ = 64 - __builtin_ctzll(capacity);
  size_ = 0;
  for (const auto &[key, merge] : entries) {
    size_t slot = slotOf(key);
    while (entries_[slot].key != kEmpty && entries_[slot].key != key)
      slot = (slot + 1) & mask_;
    if (entries_[slot].key == kEmpty)
      ++size_;
    // A rule listed twice keeps its later rank, as Hugging Face's map does.
    entries_[slot] = Entry{key, merge};
  }
}

int32_t AddedTokenMatcher::child(int32_t node, uint8_t byte) const {
  const auto &children = nodes_[node].children;
  auto it = std::lower_bound(children.begin(), children.end(), byte,
                             [](const auto &entry, uint8_t b) { return entry.first < b; });
  return it != children.end() && it->first == byte ? it->second : -1;
}

void AddedTokenMatcher::add(std::string_view text, TokenId id) {
  if (text.empty())
    return;
  startsToken_[static_cast<uint8_t>(text[0])] = true;
  int32_t node = 0;
  for (char c : text) {
    uint8_t byte = static_cast<uint8_t>(c);
    int32_t next = child(node, byte);
    if (next < 0) {
      next = static_cast<int32_t>(nodes_.size());
      nodes_.emplace_back();
      auto &children = nodes_[node].children;
      auto it = std::lower_bound(children.begin(), children.end(), byte,
                                 [](const auto &entry, uint8_t b) { return entry.first < b; });
      children.insert(it, {byte, next});
    }
    node = next;
  }
  // Two tokens with one spelling: the first id wins, like a vocabulary lookup.
  if (nodes_[node].id < 0)
    nodes_[node].id = id;
}

std::optional<AddedTokenMatcher::Match> AddedTokenMatcher::findNext(std::string_view text,
                                                                    size_t from) const {
  for (size_t begin = from; begin < text.size(); ++begin) {
    if (!startsToken_[static_cast<uint8_t>(text[begin])])
      continue;
    Match best;
    int32_t node = 0;
    for (size_t pos = begin; pos < text.size(); ++pos) {
      node = child(node, static_cast<uint8_t>(text[pos]));
      if (node < 0)
        break;
      if (nodes_[node].id >= 0)
        best = Match{begin, pos + 1 - begin, nodes_[node].id};
    }
    if (best.id >= 0)
      return best;
  }
  return std::nullopt;
}

//===----------------------------------------------------------------------===//
// Building the tables
//===----------------------------------------------------------------------===//

StatusOr<std::shared_ptr<const Tokenizer::Impl>> Tokenizer::Impl::build(VocabularySpec spec) {
  auto impl = std::make_shared<Impl>();
  const std::string &source = spec.source;
  size_t count = spec.tokens.size();
  if (count == 0)
    return Status::error(source + ": the vocabulary is empty.");
  if (count > static_cast<size_t>(INT32_MAX))
    return Status::error(source + ": the vocabulary has more tokens than 32-bit ids can number.");
  if (spec.kinds.size() != count)
    return Status::error(source + ": there are " + std::to_string(spec.kinds.size()) +
                         " token types for " + std::to_string(count) +
                         " tokens; the two lists must have the same length.");

  impl->source = source;
  impl->tokenTexts = std::move(spec.tokens);
  impl->kinds = std::move(spec.kinds);
  impl->tokenBytes.resize(count);
  impl->normalIds.reserve(count);
  for (size_t id = 0; id < count; ++id) {
    const std::string &text = impl->tokenTexts[id];
    auto tokenId = static_cast<TokenId>(id);
    switch (impl->kinds[id]) {
    case TokenKind::Normal:
    case TokenKind::Byte:
      impl->normalIds.emplace(text, tokenId);
      // A normal token outside the byte-level alphabet decodes as its text,
      // as Hugging Face's ByteLevel decoder does.
      impl->tokenBytes[id] = byteLevelDecode(text).value_or(text);
      break;
    case TokenKind::Control:
    case TokenKind::Unknown:
      impl->tokenBytes[id] = text;
      impl->specialMatcher.add(text, tokenId);
      break;
    case TokenKind::UserDefined:
      impl->tokenBytes[id] = text;
      impl->specialMatcher.add(text, tokenId);
      impl->userDefinedMatcher.add(text, tokenId);
      break;
    case TokenKind::Unused:
      break; // padding of the embedding: decodes to nothing
    default:
      return Status::error(source + ": token " + std::to_string(id) + " has type " +
                           std::to_string(static_cast<int>(impl->kinds[id])) +
                           ", which is not a GGUF token type (1..6).");
    }
  }

  for (int byte = 0; byte < 256; ++byte) {
    auto it = impl->normalIds.find(byteLevelSymbol(static_cast<uint8_t>(byte)));
    if (it == impl->normalIds.end()) {
      char hex[8];
      snprintf(hex, sizeof(hex), "0x%02X", byte);
      return Status::error(source + ": the vocabulary has no token for byte " + hex + " ('" +
                           byteLevelSymbol(static_cast<uint8_t>(byte)) +
                           "'); it is not a byte-level BPE vocabulary, which DeepSeek "
                           "models use.");
    }
    impl->byteTokens[byte] = it->second;
  }

  std::vector<std::pair<uint64_t, MergeTable::Merge>> mergeEntries;
  mergeEntries.reserve(spec.merges.size());
  for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
    const std::string &rule = spec.merges[rank];
    // Split at the first space after the first character, as llama.cpp does.
    size_t space = rule.find(' ', 1);
    auto describe = [&] { return "merge " + std::to_string(rank) + " ('" + rule + "')"; };
    if (space == std::string::npos)
      return Status::error(source + ": " + describe() + " is not two tokens separated by a space.");
    std::string left = rule.substr(0, space), right = rule.substr(space + 1);
    auto leftIt = impl->normalIds.find(left), rightIt = impl->normalIds.find(right);
    auto mergedIt = impl->normalIds.find(left + right);
    if (leftIt == impl->normalIds.end() || rightIt == impl->normalIds.end() ||
        mergedIt == impl->normalIds.end())
      return Status::error(source + ": " + describe() +
                           " uses or produces a token that is not an ordinary token of the "
                           "vocabulary; the merges do not belong to these tokens.");
    mergeEntries.push_back({MergeTable::keyOf(leftIt->second, rightIt->second),
                            {static_cast<uint32_t>(rank), mergedIt->second}});
  }
  impl->merges.build(mergeEntries);

  StatusOr<std::unique_ptr<RegexPreTokenizer>> preTokenizer =
      RegexPreTokenizer::create(std::move(spec.preTokenizerPatterns), source);
  if (!preTokenizer.ok())
    return preTokenizer.status();
  impl->preTokenizer = std::move(*preTokenizer);

  for (const auto &[name, id] :
       {std::pair{"beginning-of-sentence", spec.bos}, std::pair{"end-of-sentence", spec.eos}})
    if (id && *id >= count)
      return Status::error(
          source + ": the " + name + " token id " +
          (*id == UINT64_MAX ? std::string("(not an unsigned integer)") : std::to_string(*id)) +
          " is outside the vocabulary of " + std::to_string(count) + " tokens.");
  if (spec.bos)
    impl->bos = static_cast<TokenId>(*spec.bos);
  if (spec.eos)
    impl->eos = static_cast<TokenId>(*spec.eos);
  impl->addBos = spec.addBos;
  impl->chatTemplate = std::move(spec.chatTemplate);
  return std::shared_ptr<const Impl>(std::move(impl));
}

//===----------------------------------------------------------------------===//
// Encoding
//===----------------------------------------------------------------------===//

namespace {

// Ids of pieces already encoded in this call: natural text repeats its words,
// and a hash lookup is much cheaper than running BPE again.
class PieceCache {
public:
  PieceCache() { slots_.resize(1024); }

  // The cached ids of `piece`, or nullptr; `count` receives their number.
  const TokenId *find(std::string_view piece, size_t hash, size_t &count) const {
    for (size_t slot = hash & (slots_.size() - 1);; slot = (slot + 1) & (slots_.size() - 1)) {
      const Slot &entry = slots_[slot];
      if (entry.idsLength == 0)
        return nullptr;
      if (entry.hash == hash && entry.keyLength == piece.size() &&
          std::string_view(keys_.data() + entry.keyOffset, entry.keyLength) == piece) {
        count = entry.idsLength;
        return ids_.data() + entry.idsOffset;
      }
    }
  }

  void insert(std::string_view piece, size_t hash, const TokenId *ids, size_t count) {
    if ((used_ + 1) * 2 > slots_.size())
      grow();
    Slot entry{hash, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(piece.size()),
               static_cast<uint32_t>(ids_.size()), static_cast<uint32_t>(count)};
    keys_.append(piece);
    ids_.insert(ids_.end(), ids, ids + count);
    place(entry);
    ++used_;
  }

  // Limits that keep the 32-bit offsets valid and memory bounded.
  bool canInsert(size_t pieceBytes) const {
    return keys_.size() + pieceBytes < (1u << 30) && ids_.size() < (1u << 28);
  }

private:
  struct Slot {
    size_t hash = 0;
    uint32_t keyOffset = 0, keyLength = 0, idsOffset = 0, idsLength = 0; // idsLength 0: empty
  };
  void place(const Slot &entry) {
    size_t slot = entry.hash & (slots_.size() - 1);
    while (slots_[slot].idsLength != 0)
      slot = (slot + 1) & (slots_.size() - 1);
    slots_[slot] = entry;
  }
  void grow() {
    std::vector<Slot> old(slots_.size() * 2);
    old.swap(slots_);
    for (const Slot &entry : old)
      if (entry.idsLength != 0)
        place(entry);
  }
  std::vector<Slot> slots_;
  size_t used_ = 0;
  std::string keys_;
  std::vector<TokenId> ids_;
};

// Pieces longer than this are not cached: they rarely repeat.
constexpr size_t kMaxCachedPieceBytes = 128;

struct BpeSymbol {
  TokenId id;
  int32_t prev, next; // neighbours in the linked list, -1 at the ends
  bool alive;
};

struct PendingMerge {
  uint32_t rank;
  int32_t left;            // index of the left symbol
  TokenId leftId, rightId; // the pair when pushed, to recognize stale entries
  TokenId merged;
  // Lowest rank first, then leftmost: Hugging Face's order.
  bool operator<(const PendingMerge &other) const {
    return rank != other.rank ? rank > other.rank : left > other.left;
  }
};

struct EncodeContext {
  explicit EncodeContext(const RegexPreTokenizer &preTokenizer) : regexScratch(preTokenizer) {}
  RegexPreTokenizer::Scratch regexScratch;
  std::vector<std::string_view> pieces;
  PieceCache cache;
  std::vector<BpeSymbol> symbols;
  std::vector<PendingMerge> heap;
};

// Pieces up to this many bytes use the quadratic scan below, which beats the
// heap on short pieces; longer ones (long words, CJK runs) use the heap.
constexpr size_t kMaxScannedPieceBytes = 24;

struct ScannedSymbol {
  TokenId id;
  uint32_t rankRight;  // rank of the merge with the next symbol, or kNoMerge
  TokenId mergedRight; // what that merge produces
};
constexpr uint32_t kNoMerge = UINT32_MAX;

// Byte-level BPE of a short piece: repeatedly merge the pair with the lowest
// rank, the leftmost one among equals. This is the order in which Hugging
// Face's heap pops merges, so both give the same tokens.
void bytePairEncodeShort(const Tokenizer::Impl &impl, std::string_view piece,
                         std::vector<TokenId> &out) {
  ScannedSymbol symbols[kMaxScannedPieceBytes];
  size_t count = piece.size();
  for (size_t i = 0; i < count; ++i)
    symbols[i] = {impl.byteTokens[static_cast<uint8_t>(piece[i])], kNoMerge, -1};
  auto updateRank = [&](size_t i) {
    const MergeTable::Merge *merge =
        i + 1 < count ? impl.merges.find(symbols[i].id, symbols[i + 1].id) : nullptr;
    symbols[i].rankRight = merge ? merge->rank : kNoMerge;
    symbols[i].mergedRight = merge ? merge->merged : -1;
  };
  for (size_t i = 0; i + 1 < count; ++i)
    updateRank(i);
  while (count > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < count; ++i)
      if (symbols[i].rankRight < symbols[best].rankRight)
        best = i;
    if (symbols[best].rankRight == kNoMerge)
      break;
    symbols[best].id = symbols[best].mergedRight;
    std::copy(symbols + best + 2, symbols + count, symbols + best + 1);
    --count;
    updateRank(best);
    if (best > 0)
      updateRank(best - 1);
  }
  for (size_t i = 0; i < count; ++i)
    out.push_back(symbols[i].id);
}

// Byte-level BPE of one piece: start from one symbol per byte and apply the
// lowest-ranked applicable merge until none applies.
void bytePairEncode(const Tokenizer::Impl &impl, std::string_view piece, EncodeContext &context,
                    std::vector<TokenId> &out) {
  if (piece.size() <= kMaxScannedPieceBytes) {
    bytePairEncodeShort(impl, piece, out);
    return;
  }
  std::vector<BpeSymbol> &symbols = context.symbols;
  std::vector<PendingMerge> &heap = context.heap;
  symbols.clear();
  heap.clear();
  int32_t count = static_cast<int32_t>(piece.size());
  for (int32_t i = 0; i < count; ++i)
    symbols.push_back(
        {impl.byteTokens[static_cast<uint8_t>(piece[i])], i - 1, i + 1 < count ? i + 1 : -1, true});
  auto pushPair = [&](int32_t left) {
    int32_t right = symbols[left].next;
    if (right < 0)
      return;
    if (const MergeTable::Merge *merge = impl.merges.find(symbols[left].id, symbols[right].id)) {
      heap.push_back({merge->rank, left, symbols[left].id, symbols[right].id, merge->merged});
      std::push_heap(heap.begin(), heap.end());
    }
  };
  for (int32_t i = 0; i + 1 < count; ++i)
    pushPair(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    PendingMerge top = heap.back();
    heap.pop_back();
    BpeSymbol &left = symbols[top.left];
    // Entries go stale when a neighbour was merged first; skip those. The
    // pair is unchanged iff both ids are, since merges only change ids.
    if (!left.alive || left.next < 0)
      continue;
    BpeSymbol &right = symbols[left.next];
    if (left.id != top.leftId || right.id != top.rightId)
      continue;
    left.id = top.merged;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0)
      symbols[right.next].prev = top.left;
    if (left.prev >= 0)
      pushPair(left.prev);
    pushPair(top.left);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next)
    out.push_back(symbols[i].id);
}

void encodePiece(const Tokenizer::Impl &impl, std::string_view piece, EncodeContext &context,
                 std::vector<TokenId> &out) {
  if (piece.size() == 1) {
    out.push_back(impl.byteTokens[static_cast<uint8_t>(piece[0])]);
    return;
  }
  if (piece.size() > kMaxCachedPieceBytes) {
    bytePairEncode(impl, piece, context, out);
    return;
  }
  size_t hash = std::hash<std::string_view>{}(piece);
  size_t cachedCount = 0;
  if (const TokenId *cached = context.cache.find(piece, hash, cachedCount)) {
    out.insert(out.end(), cached, cached + cachedCount);
    return;
  }
  size_t start = out.size();
  bytePairEncode(impl, piece, context, out);
  if (context.cache.canInsert(piece.size()))
    context.cache.insert(piece, hash, out.data() + start, out.size() - start);
}

// Encodes text that holds no added tokens.
Status encodeOrdinaryText(const Tokenizer::Impl &impl, std::string_view text,
                          EncodeContext &context, std::vector<TokenId> &out) {
  while (!text.empty()) {
    size_t valid = validUtf8PrefixLength(text);
    if (valid > 0) {
      context.pieces.clear();
      Status status =
          impl.preTokenizer->split(text.substr(0, valid), context.regexScratch, context.pieces);
      if (!status.ok())
        return status;
      for (std::string_view piece : context.pieces)
        encodePiece(impl, piece, context, out);
      text.remove_prefix(valid);
    }
    if (!text.empty()) {
      // Bytes that are not UTF-8 cannot go through the regexes; they become
      // their byte tokens, one each, so that decoding gives them back.
      size_t invalid = classifyUtf8Prefix(text).length;
      for (size_t i = 0; i < invalid; ++i)
        out.push_back(impl.byteTokens[static_cast<uint8_t>(text[i])]);
      text.remove_prefix(invalid);
    }
  }
  return Status::success();
}

} // namespace

StatusOr<std::vector<TokenId>> Tokenizer::encode(std::string_view text,
                                                 const EncodeOptions &options) const {
  const Impl &impl = *impl_;
  std::vector<TokenId> ids;
  ids.reserve(text.size() / 3 + 2);
  if (options.addBos && impl.bos)
    ids.push_back(*impl.bos);
  EncodeContext context(*impl.preTokenizer);
  const AddedTokenMatcher &matcher =
      options.parseSpecial ? impl.specialMatcher : impl.userDefinedMatcher;
  size_t pos = 0;
  while (pos < text.size()) {
    std::optional<AddedTokenMatcher::Match> match;
    if (!matcher.empty())
      match = matcher.findNext(text, pos);
    size_t end = match ? match->begin : text.size();
    Status status = encodeOrdinaryText(impl, text.substr(pos, end - pos), context, ids);
    if (!status.ok())
      return status;
    if (!match)
      break;
    ids.push_back(match->id);
    pos = match->begin + match->length;
  }
  return ids;
}

StatusOr<std::vector<std::string>> Tokenizer::preTokenize(std::string_view text) const {
  if (!isValidUtf8(text))
    return Status::error("preTokenize() needs valid UTF-8 text.");
  RegexPreTokenizer::Scratch scratch(*impl_->preTokenizer);
  std::vector<std::string_view> pieces;
  Status status = impl_->preTokenizer->split(text, scratch, pieces);
  if (!status.ok())
    return status;
  return std::vector<std::string>(pieces.begin(), pieces.end());
}

//===----------------------------------------------------------------------===//
// Decoding and accessors
//===----------------------------------------------------------------------===//

namespace {

Status unknownIdError(const Tokenizer &tokenizer, TokenId id) {
  return Status::error("Token id " + std::to_string(id) + " is outside the vocabulary of " +
                       tokenizer.source() + " (" + std::to_string(tokenizer.vocabSize()) +
                       " tokens); the ids do not belong to this model.");
}

bool skipped(const Tokenizer &tokenizer, TokenId id, const DecodeOptions &options) {
  return options.skipSpecial && tokenizer.tokenKind(id) == TokenKind::Control;
}

} // namespace

StatusOr<std::string> Tokenizer::decode(const std::vector<TokenId> &ids,
                                        const DecodeOptions &options) const {
  std::string text;
  for (TokenId id : ids) {
    if (!isValid(id))
      return unknownIdError(*this, id);
    if (!skipped(*this, id, options))
      text += impl_->tokenBytes[id];
  }
  return text;
}

size_t Tokenizer::vocabSize() const { return impl_->tokenTexts.size(); }
const std::string &Tokenizer::tokenText(TokenId id) const {
  assert(isValid(id) && "tokenText() of an id outside the vocabulary");
  return impl_->tokenTexts[id];
}
const std::string &Tokenizer::tokenBytes(TokenId id) const {
  assert(isValid(id) && "tokenBytes() of an id outside the vocabulary");
  return impl_->tokenBytes[id];
}
TokenKind Tokenizer::tokenKind(TokenId id) const {
  assert(isValid(id) && "tokenKind() of an id outside the vocabulary");
  return impl_->kinds[id];
}

std::optional<TokenId> Tokenizer::findToken(std::string_view text) const {
  auto it = impl_->normalIds.find(text);
  if (it != impl_->normalIds.end())
    return it->second;
  // Special tokens are few; a scan is fine for this rare lookup.
  for (size_t id = 0; id < impl_->tokenTexts.size(); ++id)
    if (impl_->kinds[id] != TokenKind::Normal && impl_->kinds[id] != TokenKind::Unused &&
        impl_->tokenTexts[id] == text)
      return static_cast<TokenId>(id);
  return std::nullopt;
}

std::optional<TokenId> Tokenizer::bosId() const { return impl_->bos; }
std::optional<TokenId> Tokenizer::eosId() const { return impl_->eos; }
bool Tokenizer::addBosByDefault() const { return impl_->addBos; }
const std::string &Tokenizer::chatTemplate() const { return impl_->chatTemplate; }
const std::string &Tokenizer::source() const { return impl_->source; }

StreamingDecoder::StreamingDecoder(Tokenizer tokenizer, DecodeOptions options)
    : tokenizer_(std::move(tokenizer)), options_(options) {}

StatusOr<std::string> StreamingDecoder::push(TokenId id) {
  if (!tokenizer_.isValid(id))
    return unknownIdError(tokenizer_, id);
  if (!skipped(tokenizer_, id, options_))
    pending_ += tokenizer_.tokenBytes(id);
  return takeComplete(/*endOfStream=*/false);
}

std::string StreamingDecoder::flush() { return takeComplete(/*endOfStream=*/true); }

std::string StreamingDecoder::takeComplete(bool endOfStream) {
  std::string out;
  size_t pos = 0;
  while (pos < pending_.size()) {
    Utf8Prefix prefix = classifyUtf8Prefix(std::string_view(pending_).substr(pos));
    if (prefix.kind == Utf8Prefix::Incomplete && !endOfStream)
      break; // wait for the rest of the character
    if (prefix.kind == Utf8Prefix::Complete)
      out.append(pending_, pos, prefix.length);
    else
      out += kReplacementCharacter;
    pos += prefix.length;
  }
  pending_.erase(0, pos);
  return out;
}

} // namespace kt::tokenizer
