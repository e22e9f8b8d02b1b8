#include "GgufTestUtil.h"
#include "runtime/gguf/GgufFile.h"
#include "runtime/gguf/GgufWriter.h"

#include <cmath>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace kt::gguf {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::ByteBuilder;
using testing::everyValueType;
using testing::scalar;
using testing::sameValue;
using testing::TempDir;

constexpr uint32_t kF32 = static_cast<uint32_t>(GgmlType::F32);

std::vector<uint8_t> pattern(size_t size, uint8_t seed) {
  std::vector<uint8_t> bytes(size);
  for (size_t i = 0; i < size; ++i)
    bytes[i] = static_cast<uint8_t>(seed + i * 31);
  return bytes;
}

std::vector<uint8_t> serialized(const GgufWriter &writer) {
  StatusOr<std::vector<uint8_t>> image = writer.serialize();
  EXPECT_TRUE(image.ok()) << (image.ok() ? "" : image.message());
  return image.ok() ? *image : std::vector<uint8_t>();
}

std::unique_ptr<GgufFile> parseOk(const std::vector<uint8_t> &image,
                                  const std::string &name = "test.gguf") {
  StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::parse(image.data(), image.size(), name);
  EXPECT_TRUE(file.ok()) << (file.ok() ? "" : file.message());
  return file.ok() ? std::move(*file) : nullptr;
}

std::string parseError(const std::vector<uint8_t> &image, const std::string &name = "bad.gguf") {
  StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::parse(image.data(), image.size(), name);
  EXPECT_FALSE(file.ok());
  return file.ok() ? std::string() : file.message();
}

// A small valid file: one metadata entry, one f32 tensor of 8 elements.
ByteBuilder minimalFile(uint32_t version) {
  ByteBuilder b;
  b.header(version, 1, 1).kvU32("answer", 42).tensorInfo("w", {8}, kF32, 0).padTo(32);
  b.fill(32, 0x11);
  return b;
}

TEST(GgufReaderTest, RoundTripsEveryValueType) {
  GgufWriter writer;
  for (const KeyValue &kv : everyValueType())
    writer.addValue(kv.key, kv.value);
  std::vector<uint8_t> image = serialized(writer);
  std::unique_ptr<GgufFile> file = parseOk(image);
  ASSERT_TRUE(file);
  EXPECT_EQ(file->version(), 3u);
  std::vector<KeyValue> expected = everyValueType();
  ASSERT_EQ(file->metadata().size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    SCOPED_TRACE(expected[i].key);
    EXPECT_EQ(file->metadata()[i].key, expected[i].key);
    EXPECT_TRUE(sameValue(file->metadata()[i].value, expected[i].value))
        << file->metadata()[i].value.toString() << " vs " << expected[i].value.toString();
  }
  const Value *nested = file->find("t.array_of_arrays");
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(nested->array[2].array[0].array[0].u, 9u);
  EXPECT_EQ(file->find("missing"), nullptr);
}

TEST(GgufReaderTest, RoundTripsEveryTensorTypeSize) {
  GgufWriter writer;
  std::vector<std::pair<GgmlType, std::vector<uint8_t>>> written;
  for (uint32_t id = 0; id < 64; ++id) {
    std::optional<GgmlTypeTraits> traits = ggmlTypeTraits(id);
    if (!traits)
      continue;
    // Two blocks per row, three rows.
    std::vector<uint8_t> bytes = pattern(static_cast<size_t>(traits->blockBytes * 2 * 3), id);
    writer.addTensor(std::string(traits->name), {traits->blockSize * 2, 3}, traits->type, bytes);
    written.push_back({traits->type, bytes});
  }
  std::vector<uint8_t> image = serialized(writer);
  std::unique_ptr<GgufFile> file = parseOk(image);
  ASSERT_TRUE(file);
  ASSERT_EQ(file->tensors().size(), written.size());
  for (size_t t = 0; t < written.size(); ++t) {
    const TensorInfo &tensor = file->tensors()[t];
    SCOPED_TRACE(tensor.name);
    const GgmlTypeTraits &traits = ggmlTypeTraits(written[t].first);
    EXPECT_EQ(tensor.type, written[t].first);
    EXPECT_EQ(tensor.name, traits.name);
    EXPECT_EQ(tensor.ne, (std::vector<int64_t>{traits.blockSize * 2, 3}));
    EXPECT_EQ(tensor.elements(), traits.blockSize * 6);
    EXPECT_EQ(tensor.rows(), 3);
    EXPECT_EQ(tensor.nbytes, static_cast<uint64_t>(traits.blockBytes * 6));
    EXPECT_EQ(tensor.offset % 32, 0u);
    EXPECT_EQ((file->dataOffset() + tensor.offset) % 32, 0u);
    EXPECT_EQ(tensor.data, image.data() + file->dataOffset() + tensor.offset);
    EXPECT_EQ(std::vector<uint8_t>(tensor.data, tensor.data + tensor.nbytes), written[t].second);
    EXPECT_EQ(tensor.fileIndex, 0);
  }
}

TEST(GgufReaderTest, AcceptsVersion2) {
  std::vector<uint8_t> image = minimalFile(2).bytes;
  std::unique_ptr<GgufFile> file = parseOk(image);
  ASSERT_TRUE(file);
  EXPECT_EQ(file->version(), 2u);
  EXPECT_EQ(file->find("answer")->u, 42u);
  ASSERT_EQ(file->tensors().size(), 1u);
  EXPECT_EQ(file->tensors()[0].nbytes, 32u);
  EXPECT_EQ(file->tensors()[0].data[0], 0x11);
  EXPECT_EQ(file->dataOffset() % 32, 0u);
}

TEST(GgufReaderTest, RejectsVersion1) {
  std::vector<uint8_t> image = minimalFile(1).bytes;
  EXPECT_THAT(parseError(image, "old.gguf"),
              AllOf(HasSubstr("'old.gguf'"), HasSubstr("version 1"), HasSubstr("2 and 3")));
}

TEST(GgufReaderTest, RejectsUnknownVersions) {
  EXPECT_THAT(parseError(minimalFile(4).bytes), AllOf(HasSubstr("version 4"), HasSubstr("newer")));
  EXPECT_THAT(parseError(minimalFile(0).bytes), AllOf(HasSubstr("version 0"), HasSubstr("sha256")));
}

TEST(GgufReaderTest, RejectsBigEndian) {
  std::vector<uint8_t> image = minimalFile(3).bytes;
  std::reverse(image.begin() + 4, image.begin() + 8); // version 3 in big-endian byte order
  EXPECT_THAT(parseError(image, "be.gguf"),
              AllOf(HasSubstr("'be.gguf'"), HasSubstr("big-endian"), HasSubstr("little-endian")));
}

TEST(GgufReaderTest, RejectsNonGgufFiles) {
  std::string text = "PK\x03\x04 not a model";
  std::vector<uint8_t> zip(text.begin(), text.end());
  EXPECT_THAT(parseError(zip, "model.bin"),
              AllOf(HasSubstr("'model.bin'"), HasSubstr("not a GGUF file"), HasSubstr("50 4b 03 04")));
  std::string lfs = "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n";
  EXPECT_THAT(parseError(std::vector<uint8_t>(lfs.begin(), lfs.end())), HasSubstr("Git LFS pointer"));
  EXPECT_THAT(parseError({}, "empty.gguf"),
              AllOf(HasSubstr("'empty.gguf'"), HasSubstr("truncated"), HasSubstr("has 0 bytes")));
}

// Cutting a valid file anywhere must give a "truncated" error naming the
// file, never a crash or a successful parse.
TEST(GgufReaderTest, EveryTruncationIsReported) {
  GgufWriter writer;
  for (const KeyValue &kv : everyValueType())
    writer.addValue(kv.key, kv.value);
  writer.addTensor("a", {32, 2}, GgmlType::Q8_0, pattern(68, 1));
  writer.addTensor("b", {4}, GgmlType::F32, pattern(16, 2));
  std::vector<uint8_t> image = serialized(writer);
  // The padding after the last tensor is not needed to read it.
  size_t lastNeeded = image.size() - 32 + 16;
  for (size_t size = 0; size < lastNeeded; ++size) {
    std::vector<uint8_t> cut(image.begin(), image.begin() + size);
    StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::parse(cut.data(), cut.size(), "cut.gguf");
    ASSERT_FALSE(file.ok()) << "prefix of " << size << " bytes parsed";
    EXPECT_THAT(file.message(), AllOf(HasSubstr("'cut.gguf'"), HasSubstr("truncated"),
                                      HasSubstr("sha256"), HasSubstr("has " + std::to_string(size) + " bytes")))
        << size;
  }
  EXPECT_TRUE(parseOk(std::vector<uint8_t>(image.begin(), image.begin() + lastNeeded)));
}

TEST(GgufReaderTest, TruncatedDataReportsExpectedAndActualSize) {
  ByteBuilder b;
  b.header(3, 1, 0).tensorInfo("blk.0.ffn_down.weight", {256, 4}, kF32, 0).padTo(32);
  size_t dataStart = b.bytes.size();
  b.fill(1000);
  std::string message = parseError(b.bytes, "model-q4.gguf");
  EXPECT_THAT(message, AllOf(HasSubstr("'model-q4.gguf' is truncated"), HasSubstr("blk.0.ffn_down.weight"),
                             HasSubstr("at least " + std::to_string(dataStart + 4096) + " bytes"),
                             HasSubstr("has " + std::to_string(dataStart + 1000) + " bytes"),
                             HasSubstr("sha256"), HasSubstr("download it again")));
}

TEST(GgufReaderTest, LyingLengthsAreBoundedByTheFileSize) {
  // A key length of 2^62 must not allocate; it is reported as truncation.
  ByteBuilder hugeKey;
  hugeKey.header(3, 0, 1).u64(1ull << 62).fill(16);
  EXPECT_THAT(parseError(hugeKey.bytes), AllOf(HasSubstr("truncated"), HasSubstr("key of metadata entry #0")));

  ByteBuilder maxKey;
  maxKey.header(3, 0, 1).u64(UINT64_MAX).fill(16);
  EXPECT_THAT(parseError(maxKey.bytes), HasSubstr("truncated"));

  ByteBuilder hugeArray;
  hugeArray.header(3, 0, 1).str("tokens").u32(static_cast<uint32_t>(ValueType::Array));
  hugeArray.u32(static_cast<uint32_t>(ValueType::String)).u64(1ull << 60).fill(64);
  EXPECT_THAT(parseError(hugeArray.bytes),
              AllOf(HasSubstr("truncated"), HasSubstr("'tokens'"), HasSubstr("1152921504606846976")));

  ByteBuilder hugeCounts;
  hugeCounts.header(3, UINT64_MAX, UINT64_MAX);
  EXPECT_THAT(parseError(hugeCounts.bytes), HasSubstr("truncated"));
  ByteBuilder hugeTensorCount;
  hugeTensorCount.header(3, UINT64_MAX / 2, 0).fill(100);
  EXPECT_THAT(parseError(hugeTensorCount.bytes), AllOf(HasSubstr("truncated"), HasSubstr("tensor infos")));
}

TEST(GgufReaderTest, RejectsDuplicateKeys) {
  ByteBuilder b;
  b.header(3, 0, 2).kvU32("llama.block_count", 1).kvU32("llama.block_count", 2);
  EXPECT_THAT(parseError(b.bytes, "dup.gguf"),
              AllOf(HasSubstr("'dup.gguf' is corrupt"), HasSubstr("'llama.block_count'"), HasSubstr("duplicate")));
}

TEST(GgufReaderTest, RejectsDuplicateTensorNames) {
  ByteBuilder b;
  b.header(3, 2, 0).tensorInfo("w", {8}, kF32, 0).tensorInfo("w", {8}, kF32, 32).padTo(32).fill(64);
  EXPECT_THAT(parseError(b.bytes), AllOf(HasSubstr("'w'"), HasSubstr("duplicate tensor")));
}

TEST(GgufReaderTest, RejectsInvalidValues) {
  ByteBuilder badType;
  badType.header(3, 0, 1).str("k").u32(13).u32(0);
  EXPECT_THAT(parseError(badType.bytes), AllOf(HasSubstr("key 'k'"), HasSubstr("type id 13")));

  ByteBuilder badElementType;
  badElementType.header(3, 0, 1).str("k").u32(static_cast<uint32_t>(ValueType::Array)).u32(77).u64(0);
  EXPECT_THAT(parseError(badElementType.bytes), AllOf(HasSubstr("'k'"), HasSubstr("element type id is 77")));

  ByteBuilder badBool;
  badBool.header(3, 0, 1).str("flag").u32(static_cast<uint32_t>(ValueType::Bool)).u8(2);
  EXPECT_THAT(parseError(badBool.bytes), AllOf(HasSubstr("'flag'"), HasSubstr("bool"), HasSubstr("corrupt")));

  // kGgufMaxArrayNesting levels of arrays are accepted, one more is not.
  auto nestedArrays = [](int levels) {
    ByteBuilder b;
    b.header(3, 0, 1).str("deep").u32(static_cast<uint32_t>(ValueType::Array));
    for (int level = 1; level < levels; ++level)
      b.u32(static_cast<uint32_t>(ValueType::Array)).u64(1);
    b.u32(static_cast<uint32_t>(ValueType::UInt8)).u64(1).u8(5);
    return b.bytes;
  };
  std::unique_ptr<GgufFile> deepest = parseOk(nestedArrays(kGgufMaxArrayNesting));
  ASSERT_TRUE(deepest);
  const Value *level = deepest->find("deep");
  for (int i = 1; i < kGgufMaxArrayNesting; ++i)
    level = &level->array.at(0);
  EXPECT_EQ(level->elementType, ValueType::UInt8);
  EXPECT_EQ(level->array.at(0).u, 5u);
  EXPECT_THAT(parseError(nestedArrays(kGgufMaxArrayNesting + 1)),
              AllOf(HasSubstr("'deep'"), HasSubstr("nests arrays")));

  ByteBuilder deep;
  deep.header(3, 0, 1).str("deep").u32(static_cast<uint32_t>(ValueType::Array));
  for (int level = 0; level < 40; ++level)
    deep.u32(static_cast<uint32_t>(ValueType::Array)).u64(1);
  deep.u32(static_cast<uint32_t>(ValueType::UInt8)).u64(0);
  EXPECT_THAT(parseError(deep.bytes), AllOf(HasSubstr("'deep'"), HasSubstr("nests arrays")));
}

TEST(GgufReaderTest, RejectsBadTensorShapes) {
  auto withTensor = [](std::vector<uint64_t> ne, uint32_t type) {
    ByteBuilder b;
    b.header(3, 1, 0).tensorInfo("blk.3.attn_q.weight", ne, type, 0).padTo(32).fill(4096);
    return b.bytes;
  };
  EXPECT_THAT(parseError(withTensor({}, kF32)), AllOf(HasSubstr("'blk.3.attn_q.weight'"), HasSubstr("0 dimensions")));
  EXPECT_THAT(parseError(withTensor({1, 1, 1, 1, 1}, kF32)), HasSubstr("5 dimensions"));
  EXPECT_THAT(parseError(withTensor({static_cast<uint64_t>(-5)}, kF32)), HasSubstr("negative (-5)"));
  EXPECT_THAT(parseError(withTensor({1ull << 32, 1ull << 32, 1ull << 32}, kF32)), HasSubstr("overflows"));
  EXPECT_THAT(parseError(withTensor({1ull << 61, 2}, static_cast<uint32_t>(GgmlType::F64))),
              HasSubstr("byte size that overflows"));
  EXPECT_THAT(parseError(withTensor({8}, 99)),
              AllOf(HasSubstr("'blk.3.attn_q.weight'"), HasSubstr("type id 99")));
  EXPECT_THAT(parseError(withTensor({8}, 31)), HasSubstr("type id 31"));
  EXPECT_THAT(parseError(withTensor({100, 2}, static_cast<uint32_t>(GgmlType::Q4_K))),
              AllOf(HasSubstr("row length of 100"), HasSubstr("block size 256"), HasSubstr("q4_K")));
  // A zero extent is a valid, empty tensor.
  std::unique_ptr<GgufFile> empty = parseOk(withTensor({0, 3}, kF32));
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->tensors()[0].nbytes, 0u);
  EXPECT_EQ(empty->tensors()[0].rows(), 0);
}

TEST(GgufReaderTest, RejectsMisplacedTensorData) {
  ByteBuilder misaligned;
  misaligned.header(3, 1, 0).tensorInfo("w", {4}, kF32, 16).padTo(32).fill(64);
  EXPECT_THAT(parseError(misaligned.bytes), AllOf(HasSubstr("'w'"), HasSubstr("not a multiple of the alignment 32")));

  ByteBuilder outside;
  outside.header(3, 1, 0).tensorInfo("w", {4}, kF32, 1ull << 40).padTo(32).fill(64);
  EXPECT_THAT(parseError(outside.bytes), AllOf(HasSubstr("truncated"), HasSubstr("'w'")));

  ByteBuilder wrapping;
  wrapping.header(3, 1, 0).tensorInfo("w", {4}, kF32, UINT64_MAX - 31).padTo(32).fill(64);
  EXPECT_THAT(parseError(wrapping.bytes), AllOf(HasSubstr("corrupt"), HasSubstr("'w'")));

  ByteBuilder overlapping;
  overlapping.header(3, 2, 0)
      .tensorInfo("first", {16}, kF32, 0)
      .tensorInfo("second", {8}, kF32, 32)
      .padTo(32)
      .fill(128);
  EXPECT_THAT(parseError(overlapping.bytes),
              AllOf(HasSubstr("'first'"), HasSubstr("'second'"), HasSubstr("overlap")));
}

TEST(GgufReaderTest, HonoursAlignment64) {
  GgufWriter writer(64);
  writer.addString("general.architecture", "deepseek2");
  writer.addTensor("a", {3}, GgmlType::F32, pattern(12, 1));
  writer.addTensor("b", {5}, GgmlType::F32, pattern(20, 2));
  std::vector<uint8_t> image = serialized(writer);
  std::unique_ptr<GgufFile> file = parseOk(image);
  ASSERT_TRUE(file);
  EXPECT_EQ(file->alignment(), 64u);
  ASSERT_NE(file->find("general.alignment"), nullptr);
  EXPECT_EQ(file->find("general.alignment")->type, ValueType::UInt32);
  EXPECT_EQ(file->dataOffset() % 64, 0u);
  EXPECT_EQ(file->tensors()[1].offset, 64u);
  EXPECT_EQ(std::vector<uint8_t>(file->tensors()[1].data, file->tensors()[1].data + 20), pattern(20, 2));
}

TEST(GgufReaderTest, RejectsBadAlignmentValues) {
  for (uint32_t alignment : {0u, 48u, 3u}) {
    ByteBuilder b;
    b.header(3, 0, 1).kvU32("general.alignment", alignment);
    EXPECT_THAT(parseError(b.bytes),
                AllOf(HasSubstr("general.alignment is " + std::to_string(alignment)), HasSubstr("power of two")));
  }
  ByteBuilder text;
  text.header(3, 0, 1).str("general.alignment").u32(static_cast<uint32_t>(ValueType::String)).str("32");
  EXPECT_THAT(parseError(text.bytes), AllOf(HasSubstr("general.alignment"), HasSubstr("string")));

  ByteBuilder huge;
  huge.header(3, 0, 1).str("general.alignment").u32(static_cast<uint32_t>(ValueType::UInt64)).u64(1ull << 63);
  EXPECT_THAT(parseError(huge.bytes),
              AllOf(HasSubstr("general.alignment is 9223372036854775808"), HasSubstr("32 bits")));

  // Without tensors the data section is empty and need not be present.
  ByteBuilder noTensors;
  noTensors.header(3, 0, 1).kvU32("general.alignment", 1u << 31);
  std::unique_ptr<GgufFile> empty = parseOk(noTensors.bytes);
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->alignment(), 1u << 31);
  EXPECT_EQ(empty->dataOffset(), 1u << 31);

  // The largest alignment pushes the data section past the end of a small file.
  ByteBuilder largest;
  largest.header(3, 1, 1).kvU32("general.alignment", 1u << 31).tensorInfo("w", {4}, kF32, 0).fill(64);
  EXPECT_THAT(parseError(largest.bytes),
              AllOf(HasSubstr("truncated"), HasSubstr("general.alignment 2147483648"),
                    HasSubstr("at least 2147483648 bytes")));
}

TEST(GgufReaderTest, OpenMapsTheFileAndKeepsDataValid) {
  TempDir dir;
  GgufWriter writer;
  writer.addString("general.architecture", "deepseek2");
  std::vector<uint8_t> weights = pattern(256 * 2, 5);
  writer.addTensor("token_embd.weight", {128, 2}, GgmlType::F16, weights);
  std::string path = dir.file("m.gguf");
  ASSERT_TRUE(writer.write(path).ok());

  StatusOr<std::unique_ptr<GgufFile>> opened = GgufFile::open(path);
  ASSERT_TRUE(opened.ok()) << opened.message();
  std::unique_ptr<GgufFile> file = std::move(*opened);
  EXPECT_EQ(file->path(), path);
  EXPECT_EQ(file->fileSize(), std::filesystem::file_size(path));
  // The mapping stays valid after the file is deleted from the directory.
  std::filesystem::remove(path);
  const TensorInfo &tensor = file->tensors()[0];
  EXPECT_EQ(std::vector<uint8_t>(tensor.data, tensor.data + tensor.nbytes), weights);
  EXPECT_EQ(file->find("general.architecture")->s, "deepseek2");
}

TEST(GgufReaderTest, OpenReportsPathProblems) {
  TempDir dir;
  StatusOr<std::unique_ptr<GgufFile>> missing = GgufFile::open(dir.file("nope.gguf"));
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.message(), AllOf(HasSubstr("nope.gguf"), HasSubstr("does not exist")));

  StatusOr<std::unique_ptr<GgufFile>> directory = GgufFile::open(dir.path().string());
  ASSERT_FALSE(directory.ok());
  EXPECT_THAT(directory.message(), HasSubstr("is a directory, not a GGUF file"));

  testing::writeBytes(dir.file("empty.gguf"), {});
  StatusOr<std::unique_ptr<GgufFile>> empty = GgufFile::open(dir.file("empty.gguf"));
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(empty.message(), AllOf(HasSubstr("empty.gguf"), HasSubstr("truncated")));

  std::vector<uint8_t> image = minimalFile(3).bytes;
  image.resize(image.size() - 8);
  testing::writeBytes(dir.file("cut.gguf"), image);
  StatusOr<std::unique_ptr<GgufFile>> cut = GgufFile::open(dir.file("cut.gguf"));
  ASSERT_FALSE(cut.ok());
  EXPECT_THAT(cut.message(), AllOf(HasSubstr(dir.file("cut.gguf")), HasSubstr("truncated"),
                                   HasSubstr("has " + std::to_string(image.size()) + " bytes")));
}

} // namespace
} // namespace kt::gguf
