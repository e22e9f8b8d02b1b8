// The generator's streaming GGUF writer against the project's in-memory
// writer and reader.
#include "test/unit/generator/GeneratorTestUtil.h"

#include "runtime/gguf/GgufWriter.h"
#include "tools/kt-gen-model/GgufStreamWriter.h"

namespace kt::gen::test {
namespace {

using gguf::GgufFile;
using gguf::GgufWriter;
using gguf::KeyValue;
using gguf::Value;
using gguf::ValueType;

Value scalar(ValueType type, uint64_t u, int64_t i = 0, double f = 0) {
  Value v;
  v.type = type;
  v.u = u;
  v.i = i;
  v.f = f;
  return v;
}

std::vector<KeyValue> sampleMetadata() {
  std::vector<KeyValue> kv;
  kv.push_back({"u8", scalar(ValueType::UInt8, 200)});
  kv.push_back({"i8", scalar(ValueType::Int8, 0, -100)});
  kv.push_back({"u16", scalar(ValueType::UInt16, 65000)});
  kv.push_back({"i16", scalar(ValueType::Int16, 0, -32000)});
  kv.push_back({"u32", scalar(ValueType::UInt32, 4000000000u)});
  kv.push_back({"i32", scalar(ValueType::Int32, 0, -2000000000)});
  kv.push_back({"f32", scalar(ValueType::Float32, 0, 0, 0.25)});
  kv.push_back({"bool", scalar(ValueType::Bool, 1)});
  kv.push_back({"u64", scalar(ValueType::UInt64, 1ull << 40)});
  kv.push_back({"i64", scalar(ValueType::Int64, 0, -(1ll << 40))});
  kv.push_back({"f64", scalar(ValueType::Float64, 0, 0, 1.0 / 3)});
  Value text;
  text.type = ValueType::String;
  text.s = "héllo ｜ world";
  kv.push_back({"string", text});
  Value strings;
  strings.type = ValueType::Array;
  strings.elementType = ValueType::String;
  for (const char *s : {"a", "", "ccc"}) {
    Value item;
    item.type = ValueType::String;
    item.s = s;
    strings.array.push_back(item);
  }
  kv.push_back({"strings", strings});
  Value nested;
  nested.type = ValueType::Array;
  nested.elementType = ValueType::Array;
  for (int row = 0; row < 2; ++row) {
    Value inner;
    inner.type = ValueType::Array;
    inner.elementType = ValueType::Int32;
    for (int k = 0; k <= row; ++k)
      inner.array.push_back(scalar(ValueType::Int32, 0, k - 5));
    nested.array.push_back(inner);
  }
  kv.push_back({"nested", nested});
  return kv;
}

TEST(GeneratorStreamWriter, WritesTheSameBytesAsGgufWriter) {
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
  for (const KeyValue &kv : sampleMetadata())
    reference.addValue(kv.key, kv.value);
  reference.addTensor("small", {4, 2}, GgmlType::F32, smallBytes);
  reference.addTensor("q8", {32, 3}, GgmlType::Q8_0, q8Bytes);
  reference.addTensor("odd", {5, 3}, GgmlType::F16, oddBytes);
  StatusOr<std::vector<uint8_t>> expected = reference.serialize();
  ASSERT_TRUE(expected.ok()) << expected.message();

  StatusOr<GgufStreamWriter> writer =
      GgufStreamWriter::create(sampleMetadata(), {{"small", {4, 2}, GgmlType::F32},
                                                  {"q8", {32, 3}, GgmlType::Q8_0},
                                                  {"odd", {5, 3}, GgmlType::F16}});
  ASSERT_TRUE(writer.ok()) << writer.message();
  std::string path = dir.file("stream.gguf");
  ASSERT_TRUE(writer->open(path).ok());
  // Out of order and in pieces, as the generator's threads write.
  ASSERT_TRUE(writer->writeTensorData(2, 0, oddBytes.data(), oddBytes.size()).ok());
  ASSERT_TRUE(writer->writeTensorData(1, 34, q8Bytes.data() + 34, 68).ok());
  ASSERT_TRUE(writer->writeTensorData(0, 0, smallBytes.data(), smallBytes.size()).ok());
  ASSERT_TRUE(writer->writeTensorData(1, 0, q8Bytes.data(), 34).ok());
  EXPECT_FALSE(std::filesystem::exists(path)) << "visible before commit";
  ASSERT_TRUE(writer->commit().ok());
  EXPECT_EQ(readBytes(path), *expected);
  EXPECT_EQ(writer->fileSize(), expected->size());

  StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::open(path);
  ASSERT_TRUE(file.ok()) << file.message();
  EXPECT_EQ((*file)->find("u16")->u, 65000u);
  EXPECT_EQ((*file)->find("nested")->array[1].array[1].i, -4);
  EXPECT_EQ((*file)->tensors()[2].name, "odd");
}

TEST(GeneratorStreamWriter, AbortAndDestructorRemoveTheTemporaryFile) {
  TempDir dir;
  std::string path = dir.file("x.gguf");
  std::string temporary;
  {
    StatusOr<GgufStreamWriter> writer =
        GgufStreamWriter::create({}, {{"t", {32}, GgmlType::F32}});
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE(writer->open(path).ok());
    temporary = writer->temporaryPath();
    EXPECT_TRUE(std::filesystem::exists(temporary));
  }
  EXPECT_FALSE(std::filesystem::exists(temporary));
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(GeneratorStreamWriter, RejectsInvalidLayouts) {
  auto message = [](std::vector<KeyValue> kv, std::vector<StreamTensorInfo> tensors) {
    StatusOr<GgufStreamWriter> writer = GgufStreamWriter::create(std::move(kv), std::move(tensors));
    return writer.ok() ? std::string() : writer.message();
  };
  EXPECT_NE(message({}, {{"q", {100}, GgmlType::Q8_0}}).find("not a multiple of 32"),
            std::string::npos);
  EXPECT_NE(message({}, {{"a", {4}, GgmlType::F32}, {"a", {4}, GgmlType::F32}}).find("twice"),
            std::string::npos);
  EXPECT_NE(message({}, {{"z", {4, 0}, GgmlType::F32}}).find("positive"), std::string::npos);
  Value v = scalar(ValueType::UInt32, 1);
  EXPECT_NE(message({{"k", v}, {"k", v}}, {}).find("set twice"), std::string::npos);
  StatusOr<GgufStreamWriter> writer = GgufStreamWriter::create({}, {{"t", {8}, GgmlType::F32}});
  ASSERT_TRUE(writer.ok());
  TempDir dir;
  ASSERT_TRUE(writer->open(dir.file("t.gguf")).ok());
  float values[9] = {};
  EXPECT_FALSE(writer->writeTensorData(0, 4, values, 32).ok()); // runs past the tensor
}

} // namespace
} // namespace kt::gen::test
