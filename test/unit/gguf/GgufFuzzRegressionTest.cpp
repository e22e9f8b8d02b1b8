// Inputs found by test/fuzz/gguf_fuzzer, kept so that the behaviour they
// exposed stays fixed.
#include "GgufTestUtil.h"
#include "runtime/gguf/GgufWriter.h"

#include <gtest/gtest.h>
#include <iterator>

namespace kt::gguf {
namespace {

std::vector<uint8_t> readRegression(const std::string &name) {
  std::ifstream in(std::string(KT_SOURCE_DIR) + "/test/unit/gguf/fuzz-regressions/" + name,
                   std::ios::binary);
  EXPECT_TRUE(in) << name;
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
}

int arrayLevels(const Value &value) {
  if (value.type != ValueType::Array)
    return 0;
  int deepest = 0;
  for (const Value &element : value.array)
    deepest = std::max(deepest, arrayLevels(element));
  return 1 + deepest;
}

// A value nesting arrays exactly kGgufMaxArrayNesting levels deep is valid;
// the fuzzer's own invariant miscounted the scalars inside the innermost
// array. The file must parse, keep its 16 levels and survive a write/read.
TEST(GgufFuzzRegressionTest, ArraysNestedToTheLimit) {
  std::vector<uint8_t> image = readRegression("nesting-16-levels.gguf");
  ASSERT_EQ(image.size(), 1864u);
  StatusOr<std::unique_ptr<GgufFile>> file =
      GgufFile::parse(image.data(), image.size(), "nesting-16-levels.gguf");
  ASSERT_TRUE(file.ok()) << file.message();
  const Value *nested = (*file)->find("n%sted");
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(arrayLevels(*nested), kGgufMaxArrayNesting);

  GgufWriter writer((*file)->alignment());
  for (const KeyValue &entry : (*file)->metadata())
    writer.addValue(entry.key, entry.value);
  StatusOr<std::vector<uint8_t>> copy = writer.serialize();
  ASSERT_TRUE(copy.ok()) << copy.message();
  StatusOr<std::unique_ptr<GgufFile>> again =
      GgufFile::parse(copy->data(), copy->size(), "copy.gguf");
  ASSERT_TRUE(again.ok()) << again.message();
  ASSERT_EQ((*again)->metadata().size(), (*file)->metadata().size());
  for (size_t i = 0; i < (*file)->metadata().size(); ++i)
    EXPECT_TRUE(testing::sameValue((*again)->metadata()[i].value, (*file)->metadata()[i].value))
        << (*file)->metadata()[i].key;
}

} // namespace
} // namespace kt::gguf
