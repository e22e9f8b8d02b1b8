// The streaming writer: pieces of tensor data written out of order land where
// the in-memory GgufWriter puts them, the file appears only on commit, and
// bad layouts and misuse are refused.
#include "GgufTestUtil.h"
#include "runtime/gguf/GgufStreamWriter.h"
#include "runtime/gguf/GgufWriter.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace kt::gguf {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::everyValueType;
using testing::scalar;
using testing::TempDir;

std::string messageOf(const Status &status) {
  return status.ok() ? "(succeeded)" : status.message();
}

std::string createError(const std::vector<KeyValue> &metadata,
                        const std::vector<TensorDeclaration> &tensors, uint64_t alignment = 32) {
  StatusOr<GgufStreamWriter> writer =
      GgufStreamWriter::create("/out/m.gguf", metadata, tensors, alignment);
  EXPECT_FALSE(writer.ok());
  return writer.ok() ? std::string() : writer.message();
}

TEST(GgufStreamWriterTest, PiecewiseWritesGiveTheBytesOfGgufWriter) {
  TempDir dir;
  std::vector<float> small = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<uint8_t> smallBytes(reinterpret_cast<uint8_t *>(small.data()),
                                  reinterpret_cast<uint8_t *>(small.data()) + 32);
  std::vector<uint8_t> q8Bytes(34 * 3);
  for (size_t i = 0; i < q8Bytes.size(); ++i)
    q8Bytes[i] = static_cast<uint8_t>(i * 7);
  std::vector<uint8_t> oddBytes(2 * 5 * 3); // f16 {5, 3}: 30 bytes, padded to 32
  for (size_t i = 0; i < oddBytes.size(); ++i)
    oddBytes[i] = static_cast<uint8_t>(255 - i);

  GgufWriter reference;
  for (const KeyValue &kv : everyValueType())
    reference.addValue(kv.key, kv.value);
  reference.addTensor("small", {4, 2}, GgmlType::F32, smallBytes);
  reference.addTensor("q8", {32, 3}, GgmlType::Q8_0, q8Bytes);
  reference.addTensor("odd", {5, 3}, GgmlType::F16, oddBytes);
  StatusOr<std::vector<uint8_t>> expected = reference.serialize();
  ASSERT_TRUE(expected.ok()) << expected.message();

  std::string path = dir.file("stream.gguf");
  StatusOr<GgufStreamWriter> writer =
      GgufStreamWriter::create(path, everyValueType(),
                               {{"small", {4, 2}, GgmlType::F32},
                                {"q8", {32, 3}, GgmlType::Q8_0},
                                {"odd", {5, 3}, GgmlType::F16}});
  ASSERT_TRUE(writer.ok()) << writer.message();
  EXPECT_EQ(writer->fileSize(), expected->size());
  EXPECT_EQ(writer->tensorBytes(2), 30u);
  ASSERT_TRUE(writer->open().ok());
  // Out of order and in pieces, as the generator's threads write.
  ASSERT_TRUE(writer->writeTensorData(2, 0, oddBytes.data(), oddBytes.size()).ok());
  ASSERT_TRUE(writer->writeTensorData(1, 34, q8Bytes.data() + 34, 68).ok());
  ASSERT_TRUE(writer->writeTensorData(0, 0, smallBytes.data(), smallBytes.size()).ok());
  ASSERT_TRUE(writer->writeTensorData(1, 0, q8Bytes.data(), 34).ok());
  EXPECT_FALSE(std::filesystem::exists(path)) << "visible before commit";
  ASSERT_TRUE(writer->commit().ok());
  EXPECT_EQ(testing::readBytes(path), *expected);
  EXPECT_EQ(testing::listDirectory(dir.path()), std::vector<std::string>{"stream.gguf"});

  StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::open(path);
  ASSERT_TRUE(file.ok()) << file.message();
  EXPECT_EQ((*file)->metadata().size(), everyValueType().size());
  EXPECT_EQ((*file)->find("t.u16")->u, 65535u);
  EXPECT_EQ((*file)->find("t.array_of_arrays")->array[2].array[0].array[0].u, 9u);
  ASSERT_EQ((*file)->tensors().size(), 3u);
  for (size_t i = 0; i < 3; ++i)
    EXPECT_EQ(writer->layout().tensorOffsets[i],
              (*file)->dataOffset() + (*file)->tensors()[i].offset);
}

TEST(GgufStreamWriterTest, DeclaresAndAppliesANonDefaultAlignment) {
  TempDir dir;
  std::string path = dir.file("aligned.gguf");
  StatusOr<GgufStreamWriter> writer = GgufStreamWriter::create(
      path, {}, {{"a", {3}, GgmlType::F32}, {"b", {32}, GgmlType::Q8_0}}, 64);
  ASSERT_TRUE(writer.ok()) << writer.message();
  ASSERT_TRUE(writer->open().ok());
  const float a[3] = {1.5f, -2.0f, 3.25f};
  std::vector<uint8_t> b(34, 0x5A);
  ASSERT_TRUE(writer->writeTensorData(0, 0, a, sizeof a).ok());
  ASSERT_TRUE(writer->writeTensorData(1, 0, b.data(), b.size()).ok());
  ASSERT_TRUE(writer->commit().ok());

  StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::open(path);
  ASSERT_TRUE(file.ok()) << file.message();
  ASSERT_NE((*file)->find("general.alignment"), nullptr);
  EXPECT_EQ((*file)->find("general.alignment")->type, ValueType::UInt32);
  EXPECT_EQ((*file)->alignment(), 64u);
  EXPECT_EQ((*file)->dataOffset() % 64, 0u);
  EXPECT_EQ((*file)->tensors()[1].offset, 64u); // 12 bytes padded to 64
  EXPECT_EQ((*file)->fileSize(), (*file)->dataOffset() + 128);
  EXPECT_EQ(std::memcmp((*file)->tensors()[0].data, a, sizeof a), 0);
  EXPECT_EQ(std::memcmp((*file)->tensors()[1].data, b.data(), b.size()), 0);
}

TEST(GgufStreamWriterTest, AbortAndDestructorRemoveTheTemporaryFile) {
  TempDir dir;
  std::string path = dir.file("x.gguf");
  std::string temporary;
  {
    StatusOr<GgufStreamWriter> writer =
        GgufStreamWriter::create(path, {}, {{"t", {32}, GgmlType::F32}});
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE(writer->open().ok());
    temporary = writer->temporaryPath();
    EXPECT_TRUE(std::filesystem::exists(temporary));
    EXPECT_EQ(std::filesystem::file_size(temporary), writer->fileSize());
  }
  EXPECT_FALSE(std::filesystem::exists(temporary));
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));

  // An aborted rewrite leaves the previous file as it was.
  testing::writeBytes(path, {1, 2, 3});
  StatusOr<GgufStreamWriter> writer = GgufStreamWriter::create(path, {}, {});
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE(writer->open().ok());
  writer->abort();
  EXPECT_EQ(testing::listDirectory(dir.path()), std::vector<std::string>{"x.gguf"});
  EXPECT_EQ(testing::readBytes(path), (std::vector<uint8_t>{1, 2, 3}));
}

TEST(GgufStreamWriterTest, RejectsInvalidLayouts) {
  EXPECT_THAT(createError({}, {{"q", {100}, GgmlType::Q8_0}}),
              AllOf(HasSubstr("Cannot write the GGUF file '/out/m.gguf'"),
                    HasSubstr("row length of 100"), HasSubstr("block size 32 of q8_0")));
  EXPECT_THAT(createError({}, {{"a", {4}, GgmlType::F32}, {"a", {4}, GgmlType::F32}}),
              AllOf(HasSubstr("tensor 'a'"), HasSubstr("added twice")));
  EXPECT_THAT(createError({}, {{"z", {4, -1}, GgmlType::F32}}),
              HasSubstr("negative dimension -1"));
  EXPECT_THAT(createError({}, {{"big", {1ll << 62, 4}, GgmlType::F32}}),
              HasSubstr("more elements than a 64-bit count holds"));
  EXPECT_THAT(createError({}, {{"a", {1ll << 60}, GgmlType::F32}, {"b", {1ll << 60}, GgmlType::F32}}),
              HasSubstr("more than a file can hold"));
  Value v = scalar(ValueType::UInt32, 1);
  EXPECT_THAT(createError({{"k", v}, {"k", v}}, {}),
              AllOf(HasSubstr("key 'k'"), HasSubstr("added twice")));
  EXPECT_THAT(createError({}, {}, 48), HasSubstr("alignment 48"));

  // GGUF allows empty tensors; they take no data bytes.
  StatusOr<GgufStreamWriter> empty =
      GgufStreamWriter::create("e.gguf", {}, {{"e", {4, 0}, GgmlType::F32}});
  ASSERT_TRUE(empty.ok()) << empty.message();
  EXPECT_EQ(empty->tensorBytes(0), 0u);
}

TEST(GgufStreamWriterTest, RefusesWritesOutsideAnOpenFile) {
  TempDir dir;
  std::string path = dir.file("t.gguf");
  StatusOr<GgufStreamWriter> writer =
      GgufStreamWriter::create(path, {}, {{"t", {8}, GgmlType::F32}});
  ASSERT_TRUE(writer.ok());
  float values[9] = {};
  EXPECT_THAT(messageOf(writer->writeTensorData(0, 0, values, 32)), HasSubstr("before open()"));
  EXPECT_THAT(messageOf(writer->commit()), HasSubstr("without open()"));
  ASSERT_TRUE(writer->open().ok());
  EXPECT_THAT(messageOf(writer->writeTensorData(0, 4, values, 32)), HasSubstr("runs past tensor 0"));
  EXPECT_FALSE(writer->writeTensorData(0, UINT64_MAX, values, 4).ok()); // offset + size wraps
  EXPECT_FALSE(writer->writeTensorData(1, 0, values, 4).ok());          // no tensor 1
  EXPECT_TRUE(writer->writeTensorData(0, 4, values, 28).ok());          // ends at the last byte
  ASSERT_TRUE(writer->commit().ok());
  EXPECT_FALSE(writer->writeTensorData(0, 0, values, 4).ok());
  EXPECT_TRUE(std::filesystem::exists(path));
}

TEST(GgufStreamWriterTest, ReportsAFileItCannotCreate) {
  TempDir dir;
  StatusOr<GgufStreamWriter> writer =
      GgufStreamWriter::create(dir.file("no-such-dir/m.gguf"), {}, {});
  ASSERT_TRUE(writer.ok());
  EXPECT_THAT(messageOf(writer->open()),
              AllOf(HasSubstr("no-such-dir/m.gguf.tmp-"), HasSubstr("directory exists")));
  EXPECT_TRUE(writer->temporaryPath().empty());
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

} // namespace
} // namespace kt::gguf
