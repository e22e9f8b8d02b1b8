// `ktc tokenize`: a model's tokenizer on the command line, for scripts and
// checks: text in, ids out (space-separated, one line), or the reverse.
#include "tools/ktc/Commands.h"

#include "runtime/model/CheckpointModel.h"
#include "runtime/tokenizer/Tokenizer.h"

#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/raw_ostream.h"

#include <cerrno>
#include <cstdlib>

namespace kt::tools {
namespace {

using tokenizer::TokenId;
using tokenizer::Tokenizer;

StatusOr<Tokenizer> loadTokenizer(const TokenizeOptions &options) {
  if (!options.tokenizerJson.empty())
    return Tokenizer::fromTokenizerJson(options.tokenizerJson);
  if (!options.ggufPath.empty()) {
    // A GGUF model, or a checkpoint directory (its tokenizer.json).
    StatusOr<std::unique_ptr<gguf::GgufModel>> model = kt::model::openModel(options.ggufPath);
    if (!model)
      return model.status();
    return Tokenizer::fromGguf(**model);
  }
  return Status::error("tokenize needs a tokenizer: pass --gguf-path MODEL or "
                       "--tokenizer-json FILE");
}

// The arguments joined by spaces, or all of stdin when there are none.
StatusOr<std::string> readInput(const TokenizeOptions &options) {
  if (!options.arguments.empty()) {
    std::string text;
    for (size_t i = 0; i < options.arguments.size(); ++i)
      text += (i ? " " : "") + options.arguments[i];
    return text;
  }
  llvm::ErrorOr<std::unique_ptr<llvm::MemoryBuffer>> buffer = llvm::MemoryBuffer::getSTDIN();
  if (!buffer)
    return Status::error("cannot read stdin: " + buffer.getError().message());
  return (*buffer)->getBuffer().str();
}

StatusOr<std::vector<TokenId>> parseIds(const std::string &text) {
  std::vector<TokenId> ids;
  size_t pos = 0;
  while (true) {
    pos = text.find_first_not_of(" \t\r\n,", pos);
    if (pos == std::string::npos)
      break;
    size_t end = text.find_first_of(" \t\r\n,", pos);
    std::string word = text.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    char *stop = nullptr;
    errno = 0;
    long long value = std::strtoll(word.c_str(), &stop, 10);
    if (*stop != '\0' || errno != 0 || value < 0 || value > INT32_MAX)
      return Status::error("'" + word +
                           "' is not a token id; --decode takes non-negative "
                           "integers separated by spaces");
    ids.push_back(static_cast<TokenId>(value));
    pos = end;
  }
  return ids;
}

} // namespace

int runTokenize(const TokenizeOptions &options) {
  StatusOr<Tokenizer> tokenizer = loadTokenizer(options);
  if (!tokenizer)
    return reportError(tokenizer.message());
  StatusOr<std::string> input = readInput(options);
  if (!input)
    return reportError(input.message());

  if (options.decode) {
    StatusOr<std::vector<TokenId>> ids = parseIds(*input);
    if (!ids)
      return reportError(ids.message());
    tokenizer::DecodeOptions decodeOptions;
    decodeOptions.skipSpecial = !options.special;
    StatusOr<std::string> text = tokenizer->decode(*ids, decodeOptions);
    if (!text)
      return reportError(text.message());
    llvm::outs() << *text;
    return EXIT_SUCCESS;
  }

  tokenizer::EncodeOptions encodeOptions;
  encodeOptions.parseSpecial = options.special;
  encodeOptions.addBos = options.addBos;
  if (options.addBos && !tokenizer->bosId())
    return reportError(tokenizer->source() + " has no beginning-of-sentence token, so "
                                             "--add-bos cannot add one");
  StatusOr<std::vector<TokenId>> ids = tokenizer->encode(*input, encodeOptions);
  if (!ids)
    return reportError(ids.message());
  llvm::raw_ostream &os = llvm::outs();
  for (size_t i = 0; i < ids->size(); ++i)
    os << (i ? " " : "") << (*ids)[i];
  os << "\n";
  return EXIT_SUCCESS;
}

} // namespace kt::tools
