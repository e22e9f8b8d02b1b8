// Tokenizer throughput: encodes ~10 MB of generated mixed text (English,
// code, Chinese, Japanese, Korean, numbers, emoji, whitespace-heavy markup)
// on one thread and prints MB/s and the ratio to the 20 MB/s target.
//
// The text is generated, not read from a file: the same seed always gives
// the same bytes, and its words follow a skewed (Zipf-like) distribution so
// that repeats are as common as in real text.
#include "runtime/tokenizer/Tokenizer.h"
#include "runtime/tokenizer/Utf8.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

using namespace kt::tokenizer;

namespace {

constexpr double kTargetMegabytesPerSecond = 20.0;

// splitmix64: small, fast and the same on every platform (unlike the
// standard library's distributions).
class Random {
public:
  explicit Random(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  size_t below(size_t n) { return static_cast<size_t>(next() % n); }
  // Index in [0, n) favouring small values: the most frequent words or
  // characters come first in their lists.
  size_t skewed(size_t n) {
    double u = uniform();
    return std::min(n - 1, static_cast<size_t>(n * u * u * u));
  }

private:
  uint64_t state_;
};

// clang-format off
const std::vector<std::string> kEnglishWords = {
    "the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as", "was", "with", "be",
    "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have",
    "an", "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has",
    "there", "been", "if", "more", "when", "will", "would", "who", "so", "no", "model", "data",
    "system", "time", "people", "because", "between", "through", "language", "compiler",
    "memory", "experts", "attention", "network", "throughput", "performance", "training",
    "however", "therefore", "example", "different", "important", "government", "information",
    "development", "understanding", "international", "responsibility", "characteristics",
    "DeepSeek", "GPU", "CPU", "Python", "Linux", "January", "Paris", "London", "Monday"};

const std::vector<std::string> kCodeLines = {
    "for (int i = 0; i < n; ++i) {", "  sum += values[i] * weights[i];", "}",
    "def forward(self, x):", "    return self.norm(x + self.attn(x))", "import torch",
    "std::vector<float> buffer(size, 0.0f);", "if (status != 0) return status;",
    "const auto result = compute(input, options);", "    # TODO: handle the error case",
    "SELECT id, name FROM users WHERE age > 30;", "let mut map = HashMap::new();",
    "return {\"key\": value, \"count\": 42}", "#include <stdio.h>", "x = np.zeros((128, 256))",
    "\tprintf(\"%d\\n\", count);", "class Model(nn.Module):", "    def __init__(self):"};

const std::vector<std::string> kEmoji = {"🙂", "😂", "👍", "👍🏽", "❤️", "🚀", "✨", "🎉",
                                         "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🤖", "😀😃", "✅", "🔥"};
// clang-format on

std::string codePointRun(Random &random, uint32_t first, uint32_t count, size_t length) {
  std::string out;
  for (size_t i = 0; i < length; ++i)
    appendUtf8(out, first + static_cast<uint32_t>(random.skewed(count)));
  return out;
}

std::string englishParagraph(Random &random) {
  std::string out;
  size_t sentences = 2 + random.below(5);
  for (size_t s = 0; s < sentences; ++s) {
    size_t words = 5 + random.below(20);
    for (size_t w = 0; w < words; ++w) {
      std::string word;
      if (random.uniform() < 0.08) {
        // A rarer word: random letters.
        size_t length = 3 + random.below(10);
        for (size_t k = 0; k < length; ++k)
          word += static_cast<char>('a' + random.skewed(26));
      } else {
        word = kEnglishWords[random.skewed(kEnglishWords.size())];
      }
      if (w == 0)
        word[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(word[0])));
      out += (w ? " " : "") + word;
      if (w + 1 < words && random.uniform() < 0.08)
        out += ",";
    }
    out += random.uniform() < 0.8 ? ". " : "? ";
  }
  return out + "\n\n";
}

std::string codeBlock(Random &random) {
  std::string out = "```\n";
  size_t lines = 3 + random.below(12);
  for (size_t l = 0; l < lines; ++l)
    out +=
        std::string(4 * random.below(3), ' ') + kCodeLines[random.below(kCodeLines.size())] + "\n";
  return out + "```\n\n";
}

std::string chineseParagraph(Random &random) {
  std::string out;
  size_t sentences = 2 + random.below(4);
  for (size_t s = 0; s < sentences; ++s) {
    size_t clauses = 1 + random.below(3);
    for (size_t c = 0; c < clauses; ++c)
      out += codePointRun(random, 0x4E00, 0x9FA5 - 0x4E00, 4 + random.below(14)) +
             (c + 1 < clauses ? "，" : "。");
  }
  return out + "\n";
}

std::string japaneseParagraph(Random &random) {
  std::string out;
  size_t parts = 4 + random.below(8);
  for (size_t p = 0; p < parts; ++p) {
    switch (random.below(3)) {
    case 0:
      out += codePointRun(random, 0x3041, 0x53, 2 + random.below(5)); // hiragana
      break;
    case 1:
      out += codePointRun(random, 0x30A1, 0x56, 2 + random.below(5)); // katakana
      break;
    default:
      out += codePointRun(random, 0x4E00, 0x9FA5 - 0x4E00, 1 + random.below(3)); // kanji
    }
    if (random.uniform() < 0.2)
      out += "、";
  }
  return out + "。\n";
}

std::string koreanParagraph(Random &random) {
  std::string out;
  size_t words = 5 + random.below(15);
  for (size_t w = 0; w < words; ++w)
    out += (w ? " " : "") + codePointRun(random, 0xAC00, 0xD7A3 - 0xAC00, 1 + random.below(4));
  return out + ".\n";
}

std::string numbersLine(Random &random) {
  std::string out;
  size_t fields = 3 + random.below(8);
  for (size_t f = 0; f < fields; ++f) {
    size_t digits = 1 + random.below(12);
    for (size_t d = 0; d < digits; ++d)
      out += static_cast<char>('0' + random.below(10));
    if (random.uniform() < 0.3)
      out += "." + std::to_string(random.below(1000));
    out += f + 1 < fields ? (random.uniform() < 0.5 ? ", " : "\t") : "\n";
  }
  return out;
}

std::string emojiLine(Random &random) {
  std::string out;
  size_t items = 3 + random.below(8);
  for (size_t i = 0; i < items; ++i)
    out += kEnglishWords[random.skewed(kEnglishWords.size())] + " " +
           kEmoji[random.below(kEmoji.size())] + " ";
  return out + "\n";
}

std::string markupBlock(Random &random) {
  std::string out = "| name | value |\n|------|-------|\n";
  size_t rows = 2 + random.below(6);
  for (size_t r = 0; r < rows; ++r)
    out += "| " + kEnglishWords[random.skewed(kEnglishWords.size())] +
           std::string(1 + random.below(6), ' ') + "| " + std::to_string(random.below(100000)) +
           "   |\n";
  return out + "\n  - item\n    - nested item\n\n";
}

struct Section {
  const char *name;
  double weight;
  std::string (*generate)(Random &);
};

// clang-format off
const Section kSections[] = {
    {"english", 0.45, englishParagraph}, {"code", 0.15, codeBlock},
    {"chinese", 0.15, chineseParagraph}, {"japanese", 0.07, japaneseParagraph},
    {"korean", 0.05, koreanParagraph},   {"numbers", 0.05, numbersLine},
    {"emoji", 0.04, emojiLine},          {"markup", 0.04, markupBlock},
};
// clang-format on

// The mixed text, plus the same text split by section kind.
struct Corpus {
  std::string text;
  std::map<std::string, std::string> bySection;
};

Corpus generateCorpus(size_t bytes, uint64_t seed) {
  Random random(seed);
  Corpus corpus;
  corpus.text.reserve(bytes + 4096);
  while (corpus.text.size() < bytes) {
    double pick = random.uniform();
    const Section *section = &kSections[0];
    for (const Section &candidate : kSections) {
      section = &candidate;
      if (pick < candidate.weight)
        break;
      pick -= candidate.weight;
    }
    std::string part = section->generate(random);
    corpus.text += part;
    corpus.bySection[section->name] += part;
  }
  return corpus;
}

// Best of `repeats` runs, in MB/s (1 MB = 10^6 bytes).
double measure(const Tokenizer &tokenizer, const std::string &text, int repeats,
               size_t &tokenCount) {
  double best = 0;
  for (int r = 0; r < repeats; ++r) {
    auto start = std::chrono::steady_clock::now();
    kt::StatusOr<std::vector<TokenId>> ids = tokenizer.encode(text);
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!ids.ok()) {
      std::fprintf(stderr, "tokenizer_bench: %s\n", ids.message().c_str());
      std::exit(1);
    }
    tokenCount = ids->size();
    best = std::max(best, static_cast<double>(text.size()) / 1e6 / seconds);
  }
  return best;
}

std::string defaultTokenizerJson() {
  namespace fs = std::filesystem;
  if (const char *env = std::getenv("KT_SHARED_DIR"); env && *env)
    return (fs::path(env) / "data/deepseek-v3-tokenizer/tokenizer.json").string();
  fs::path besideSource = fs::path(KT_SOURCE_DIR) / ".." / "shared";
  if (!fs::exists(besideSource))
    besideSource = "/work/shared";
  return (besideSource / "data/deepseek-v3-tokenizer/tokenizer.json").string();
}

} // namespace

int main(int argc, char **argv) {
  CLI::App app{"Measures single-thread tokenizer throughput on ~10 MB of generated mixed text."};
  std::string tokenizerJson, ggufPath;
  double megabytes = 10;
  int repeats = 3;
  uint64_t seed = 1;
  app.add_option("--tokenizer-json", tokenizerJson,
                 "Hugging Face tokenizer.json (default: the shared DeepSeek-V3 tokenizer)");
  app.add_option("--gguf-path", ggufPath, "read the tokenizer from this GGUF model instead");
  app.add_option("--megabytes", megabytes, "size of the generated text (default 10)")
      ->check(CLI::Range(0.01, 1000.0));
  app.add_option("--repeats", repeats, "runs per measurement; the best is reported (default 3)")
      ->check(CLI::Range(1, 100));
  app.add_option("--seed", seed, "seed of the text generator (default 1)");
  CLI11_PARSE(app, argc, argv);

  kt::StatusOr<Tokenizer> tokenizer =
      !ggufPath.empty() ? Tokenizer::fromGgufPath(ggufPath)
                        : Tokenizer::fromTokenizerJson(
                              tokenizerJson.empty() ? defaultTokenizerJson() : tokenizerJson);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "tokenizer_bench: %s\n", tokenizer.message().c_str());
    return 1;
  }
  Corpus corpus = generateCorpus(static_cast<size_t>(megabytes * 1e6), seed);
  std::printf("tokenizer: %s\n", tokenizer->source().c_str());
  std::printf("text: %.2f MB generated (seed %llu), one thread, best of %d runs\n",
              corpus.text.size() / 1e6, static_cast<unsigned long long>(seed), repeats);
  for (const auto &[name, text] : corpus.bySection) {
    size_t tokens = 0;
    double rate = measure(*tokenizer, text, repeats, tokens);
    std::printf("  %-9s %6.2f MB  %8.1f MB/s  %5.2f bytes/token\n", name.c_str(), text.size() / 1e6,
                rate, static_cast<double>(text.size()) / tokens);
  }
  size_t tokens = 0;
  double rate = measure(*tokenizer, corpus.text, repeats, tokens);
  std::printf("mixed: %zu tokens, %.2f bytes/token\n", tokens,
              static_cast<double>(corpus.text.size()) / tokens);
  std::printf("encode: %.1f MB/s, %.2fx the %.0f MB/s target\n", rate,
              rate / kTargetMegabytesPerSecond, kTargetMegabytesPerSecond);
  return 0;
}
