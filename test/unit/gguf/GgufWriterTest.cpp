#include "GgufTestUtil.h"
#include "runtime/gguf/GgufWriter.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace kt::gguf {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::ByteBuilder;
using testing::TempDir;

std::string serializeError(const GgufWriter &writer) {
  StatusOr<std::vector<uint8_t>> image = writer.serialize();
  EXPECT_FALSE(image.ok());
  return image.ok() ? std::string() : image.message();
}

// The exact bytes, built independently of the writer from the GGUF spec.
TEST(GgufWriterTest, WritesTheSpecifiedLayout) {
  GgufWriter writer;
  writer.addString("general.architecture", "llama");
  writer.addFloat32("eps", 0.5f);
  writer.addInt32Array("ids", {1, -1});
  writer.addTensor("w", {2, 1}, GgmlType::F32, {1, 2, 3, 4, 5, 6, 7, 8});
  writer.addTensor("v", {1}, GgmlType::F16, {9, 10});
  StatusOr<std::vector<uint8_t>> image = writer.serialize();
  ASSERT_TRUE(image.ok()) << image.message();

  ByteBuilder expected;
  expected.header(3, 2, 3);
  expected.str("general.architecture").u32(8).str("llama");
  expected.str("eps").u32(6).f32(0.5f);
  expected.str("ids").u32(9).u32(5).u64(2).u32(1).u32(0xFFFFFFFFu);
  expected.str("w").u32(2).u64(2).u64(1).u32(0).u64(0);
  expected.str("v").u32(1).u64(1).u32(1).u64(32);
  expected.padTo(32);
  for (uint8_t byte : {1, 2, 3, 4, 5, 6, 7, 8})
    expected.u8(byte);
  expected.padTo(32).u8(9).u8(10).padTo(32);
  EXPECT_EQ(*image, expected.bytes);
}

TEST(GgufWriterTest, RejectsDuplicateKeysAndTensors) {
  GgufWriter keys;
  keys.addUInt32("deepseek2.block_count", 3);
  keys.addUInt64("deepseek2.block_count", 3);
  EXPECT_THAT(serializeError(keys), AllOf(HasSubstr("'deepseek2.block_count'"), HasSubstr("added twice")));

  GgufWriter tensors;
  tensors.addTensor("output.weight", {1}, GgmlType::F32, std::vector<uint8_t>(4));
  tensors.addTensor("output.weight", {1}, GgmlType::F32, std::vector<uint8_t>(4));
  EXPECT_THAT(serializeError(tensors), AllOf(HasSubstr("'output.weight'"), HasSubstr("added twice")));
}

TEST(GgufWriterTest, RejectsByteCountsThatDoNotMatchTheShape) {
  GgufWriter writer;
  writer.addTensor("blk.0.ffn_up.weight", {256, 2}, GgmlType::Q4_K, std::vector<uint8_t>(100));
  EXPECT_THAT(serializeError(writer),
              AllOf(HasSubstr("'blk.0.ffn_up.weight'"), HasSubstr("100 bytes"), HasSubstr("[256, 2]"),
                    HasSubstr("q4_K"), HasSubstr("needs 288 bytes")));

  GgufWriter partialBlock;
  partialBlock.addTensor("t", {16}, GgmlType::Q8_0, std::vector<uint8_t>(17));
  EXPECT_THAT(serializeError(partialBlock), AllOf(HasSubstr("row length of 16"), HasSubstr("block size 32")));

  GgufWriter noDims;
  noDims.addTensor("t", {}, GgmlType::F32, {});
  EXPECT_THAT(serializeError(noDims), HasSubstr("0 dimensions"));

  GgufWriter negative;
  negative.addTensor("t", {-4}, GgmlType::F32, {});
  EXPECT_THAT(serializeError(negative), HasSubstr("negative dimension -4"));

  GgufWriter unknownType;
  unknownType.addTensor("t", {4}, static_cast<GgmlType>(4), std::vector<uint8_t>(16));
  EXPECT_THAT(serializeError(unknownType), HasSubstr("unknown GGML type id 4"));
}

TEST(GgufWriterTest, RejectsInvalidAlignmentAndValues) {
  EXPECT_THAT(serializeError(GgufWriter(0)), HasSubstr("alignment 0"));
  EXPECT_THAT(serializeError(GgufWriter(24)), HasSubstr("alignment 24"));

  GgufWriter conflicting(64);
  conflicting.addUInt32("general.alignment", 32);
  EXPECT_THAT(serializeError(conflicting), AllOf(HasSubstr("general.alignment"), HasSubstr("64")));

  GgufWriter matching(64);
  matching.addUInt32("general.alignment", 64);
  StatusOr<std::vector<uint8_t>> image = matching.serialize();
  ASSERT_TRUE(image.ok()) << image.message();
  StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::parse(image->data(), image->size(), "m");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->metadata().size(), 1u); // not added a second time

  Value mixed;
  mixed.type = ValueType::Array;
  mixed.elementType = ValueType::Int32;
  mixed.array.resize(2);
  mixed.array[0].type = ValueType::Int32;
  mixed.array[1].type = ValueType::String;
  GgufWriter mixedWriter;
  mixedWriter.addValue("mixed", mixed);
  EXPECT_THAT(serializeError(mixedWriter),
              AllOf(HasSubstr("element 1 of key 'mixed'"), HasSubstr("string"), HasSubstr("int32")));

  Value badType;
  badType.type = static_cast<ValueType>(42);
  GgufWriter badTypeWriter;
  badTypeWriter.addValue("bad", badType);
  EXPECT_THAT(serializeError(badTypeWriter), HasSubstr("invalid value type id 42"));

  Value deep;
  deep.type = ValueType::Array;
  deep.elementType = ValueType::UInt8;
  for (int level = 0; level < kGgufMaxArrayNesting; ++level) {
    Value outer;
    outer.type = ValueType::Array;
    outer.elementType = ValueType::Array;
    outer.array.push_back(deep);
    deep = outer;
  }
  GgufWriter deepWriter;
  deepWriter.addValue("deep", deep);
  EXPECT_THAT(serializeError(deepWriter), HasSubstr("nests arrays"));
  GgufWriter deepestWriter; // one level less is the limit itself
  deepestWriter.addValue("deep", deep.array[0]);
  EXPECT_TRUE(deepestWriter.serialize().ok());
}

TEST(GgufWriterTest, WriteIsAtomicAndLeavesNothingOnFailure) {
  TempDir dir;
  std::string path = dir.file("model.gguf");
  GgufWriter first;
  first.addString("general.name", "first");
  ASSERT_TRUE(first.write(path).ok());
  GgufWriter second;
  second.addString("general.name", "second");
  ASSERT_TRUE(second.write(path).ok());
  EXPECT_EQ(testing::listDirectory(dir.path()), std::vector<std::string>{"model.gguf"});
  StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::open(path);
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->find("general.name")->s, "second");

  // A validation failure leaves the existing file untouched and no temporary.
  GgufWriter invalid;
  invalid.addTensor("t", {4}, GgmlType::F32, std::vector<uint8_t>(3));
  Status status = invalid.write(path);
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr(path));
  EXPECT_EQ(testing::listDirectory(dir.path()), std::vector<std::string>{"model.gguf"});
  EXPECT_TRUE(GgufFile::open(path).ok());

  // A failing rename (the target is a non-empty directory) removes the temporary.
  std::filesystem::create_directory(dir.file("taken.gguf"));
  testing::writeBytes(dir.file("taken.gguf") + "/keep", {1});
  status = second.write(dir.file("taken.gguf"));
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.message(), AllOf(HasSubstr("taken.gguf"), HasSubstr("renaming")));
  EXPECT_EQ(testing::listDirectory(dir.path()), (std::vector<std::string>{"model.gguf", "taken.gguf"}));

  status = second.write(dir.file("no-such-dir/model.gguf"));
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.message(), AllOf(HasSubstr("no-such-dir"), HasSubstr("directory exists")));
}

TEST(GgufWriterTest, WriteAndSerializeProduceTheSameBytes) {
  TempDir dir;
  GgufWriter writer(128);
  writer.addBool("flag", true);
  writer.addFloat32Array("scales", {1.0f, -2.0f});
  writer.addStringArray("names", {"a", "bc"});
  writer.addTensor("x", {64}, GgmlType::Q8_0, std::vector<uint8_t>(68, 7));
  StatusOr<std::vector<uint8_t>> image = writer.serialize();
  ASSERT_TRUE(image.ok());
  ASSERT_TRUE(writer.write(dir.file("x.gguf")).ok());
  std::ifstream in(dir.file("x.gguf"), std::ios::binary);
  std::vector<uint8_t> onDisk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(onDisk, *image);
  EXPECT_EQ(onDisk.size() % 128, 0u);
}

} // namespace
} // namespace kt::gguf
