// The generator's files, written piecewise by many threads through
// GgufStreamWriter, are byte for byte what the in-memory GgufWriter makes of
// the same metadata and tensors: no gaps, no stray bytes, canonical padding.
#include "test/unit/generator/GeneratorTestUtil.h"

#include "runtime/gguf/GgufWriter.h"

namespace kt::gen::test {
namespace {

using gguf::GgufFile;
using gguf::GgufWriter;

// Re-encodes a parsed file with GgufWriter.
std::vector<uint8_t> rewrittenInMemory(const GgufFile &file) {
  GgufWriter writer(file.alignment());
  for (const gguf::KeyValue &entry : file.metadata())
    writer.addValue(entry.key, entry.value);
  for (const gguf::TensorInfo &tensor : file.tensors())
    writer.addTensor(tensor.name, tensor.ne, tensor.type,
                     std::vector<uint8_t>(tensor.data, tensor.data + tensor.nbytes));
  StatusOr<std::vector<uint8_t>> image = writer.serialize();
  EXPECT_TRUE(image.ok()) << (image.ok() ? "" : image.message());
  return image.ok() ? *image : std::vector<uint8_t>{};
}

void expectSameAsGgufWriter(const std::string &path) {
  StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::open(path);
  ASSERT_TRUE(file.ok()) << file.message();
  ASSERT_FALSE((*file)->tensors().empty()) << path;
  EXPECT_TRUE(rewrittenInMemory(**file) == readBytes(path)) << path;
}

TEST(GeneratorGgufOutput, SingleFileMatchesGgufWriterByteForByte) {
  TempDir dir;
  WriteOptions options;
  options.threads = 4;
  WriteResult result = writeTiny(tinyConfig(), dir.file("model.gguf"), options);
  ASSERT_EQ(result.files.size(), 1u);
  expectSameAsGgufWriter(result.files[0].path);
}

TEST(GeneratorGgufOutput, SplitPartsMatchGgufWriterByteForByte) {
  TempDir dir;
  WriteOptions options;
  options.splitCount = 3;
  options.threads = 4;
  WriteResult result = writeTiny(tinyConfig(), dir.file("model.gguf"), options);
  ASSERT_EQ(result.files.size(), 3u);
  for (const WrittenFile &part : result.files)
    expectSameAsGgufWriter(part.path);
}

} // namespace
} // namespace kt::gen::test
