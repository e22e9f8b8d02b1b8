// Where tests find the project's shared data (the real DeepSeek-V3
// tokenizer): $KT_SHARED_DIR, else <source>/../shared, else /work/shared.
#pragma once

#include <cstdlib>
#include <filesystem>

namespace kt::test {

inline std::filesystem::path sharedDataDir() {
  if (const char *env = std::getenv("KT_SHARED_DIR"); env && *env)
    return env;
  std::filesystem::path besideSource = std::filesystem::path(KT_SOURCE_DIR) / ".." / "shared";
  if (std::filesystem::exists(besideSource))
    return besideSource;
  return "/work/shared";
}

inline std::filesystem::path deepseekTokenizerDir() {
  return sharedDataDir() / "data" / "deepseek-v3-tokenizer";
}

inline std::filesystem::path deepseekTokenizerJson() {
  return deepseekTokenizerDir() / "tokenizer.json";
}

} // namespace kt::test
