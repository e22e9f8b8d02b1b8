#include "GgufTestUtil.h"
#include "runtime/gguf/GgufWriter.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace kt::gguf {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::TempDir;

std::vector<uint8_t> floats(std::initializer_list<float> values) {
  std::vector<uint8_t> bytes(values.size() * 4);
  std::memcpy(bytes.data(), values.begin(), bytes.size());
  return bytes;
}

std::string partName(const std::string &prefix, int part, int count) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "-%05d-of-%05d.gguf", part, count);
  return prefix + buffer;
}

// Writes a model split like llama.cpp's gguf-split: metadata in part 1, the
// split.* keys in every part, tensors "t<part>.<i>" spread over the parts.
struct SplitOptions {
  int parts = 3;
  int tensorsPerPart = 2;
  int64_t declaredTensors = -1; // split.tensors.count; -1: the real total
  int wrongSplitNoPart = 0;     // 1-based part given a wrong split.no
};

void writeSplit(const std::filesystem::path &dir, const std::string &prefix,
                const SplitOptions &options = {}) {
  for (int part = 1; part <= options.parts; ++part) {
    GgufWriter writer;
    if (part == 1) {
      writer.addString("general.architecture", "deepseek2");
      writer.addUInt32("deepseek2.block_count", 61);
    }
    Value splitNo;
    splitNo.type = ValueType::UInt16;
    splitNo.u = part == options.wrongSplitNoPart ? 7 : part - 1;
    writer.addValue("split.no", splitNo);
    Value splitCount;
    splitCount.type = ValueType::UInt16;
    splitCount.u = options.parts;
    writer.addValue("split.count", splitCount);
    writer.addInt32("split.tensors.count",
                    static_cast<int32_t>(options.declaredTensors >= 0
                                             ? options.declaredTensors
                                             : options.parts * options.tensorsPerPart));
    for (int i = 0; i < options.tensorsPerPart; ++i)
      writer.addTensor("t" + std::to_string(part) + "." + std::to_string(i), {2}, GgmlType::F32,
                       floats({static_cast<float>(part), static_cast<float>(i)}));
    Status status = writer.write((dir / partName(prefix, part, options.parts)).string());
    ASSERT_TRUE(status.ok()) << status.message();
  }
}

void writeSingle(const std::string &path, const std::string &architecture = "deepseek2") {
  GgufWriter writer;
  writer.addString("general.architecture", architecture);
  writer.addTensor("token_embd.weight", {4}, GgmlType::F32, floats({1, 2, 3, 4}));
  Status status = writer.write(path);
  ASSERT_TRUE(status.ok()) << status.message();
}

std::string openError(const std::string &path) {
  StatusOr<std::unique_ptr<GgufModel>> model = GgufModel::open(path);
  EXPECT_FALSE(model.ok());
  return model.ok() ? std::string() : model.message();
}

void expectWholeSplitModel(const GgufModel &model, int parts, int tensorsPerPart) {
  EXPECT_EQ(model.files().size(), static_cast<size_t>(parts));
  EXPECT_EQ(model.architecture(), "deepseek2");
  EXPECT_EQ(model.find("deepseek2.block_count")->u, 61u);
  EXPECT_EQ(model.find("split.no")->u, 0u); // metadata comes from part 1
  ASSERT_EQ(model.tensors().size(), static_cast<size_t>(parts * tensorsPerPart));
  EXPECT_EQ(model.totalTensorBytes(), static_cast<uint64_t>(parts * tensorsPerPart * 8));
  for (int part = 1; part <= parts; ++part)
    for (int i = 0; i < tensorsPerPart; ++i) {
      std::string name = "t" + std::to_string(part) + "." + std::to_string(i);
      const TensorInfo *tensor = model.findTensor(name);
      ASSERT_NE(tensor, nullptr) << name;
      EXPECT_EQ(tensor->fileIndex, part - 1);
      EXPECT_EQ(tensor, &model.tensors()[(part - 1) * tensorsPerPart + i]);
      float values[2];
      std::memcpy(values, tensor->data, 8);
      EXPECT_EQ(values[0], static_cast<float>(part));
      EXPECT_EQ(values[1], static_cast<float>(i));
    }
  EXPECT_EQ(model.findTensor("absent"), nullptr);
}

TEST(GgufModelTest, OpensASingleFile) {
  TempDir dir;
  writeSingle(dir.file("m.gguf"));
  StatusOr<std::unique_ptr<GgufModel>> model = GgufModel::open(dir.file("m.gguf"));
  ASSERT_TRUE(model.ok()) << model.message();
  EXPECT_EQ((*model)->files().size(), 1u);
  EXPECT_EQ((*model)->architecture(), "deepseek2");
  ASSERT_NE((*model)->findTensor("token_embd.weight"), nullptr);
  EXPECT_EQ((*model)->totalTensorBytes(), 16u);
  EXPECT_EQ((*model)->metadata().size(), 1u);
}

TEST(GgufModelTest, OpensASplitModelFromAnyPartOrItsDirectory) {
  TempDir dir;
  writeSplit(dir.path(), "DeepSeek-V3-Q4_K_M");
  for (int part = 1; part <= 3; ++part) {
    SCOPED_TRACE(part);
    StatusOr<std::unique_ptr<GgufModel>> model =
        GgufModel::open(dir.file(partName("DeepSeek-V3-Q4_K_M", part, 3)));
    ASSERT_TRUE(model.ok()) << model.message();
    expectWholeSplitModel(**model, 3, 2);
  }
  StatusOr<std::unique_ptr<GgufModel>> fromDir = GgufModel::open(dir.path().string());
  ASSERT_TRUE(fromDir.ok()) << fromDir.message();
  expectWholeSplitModel(**fromDir, 3, 2);
}

TEST(GgufModelTest, NamesMissingSplitParts) {
  TempDir dir;
  writeSplit(dir.path(), "m");
  std::filesystem::remove(dir.file(partName("m", 2, 3)));
  for (const std::string &path : {dir.file(partName("m", 1, 3)), dir.path().string()}) {
    SCOPED_TRACE(path);
    EXPECT_THAT(openError(path), AllOf(HasSubstr("'m-00002-of-00003.gguf'"), HasSubstr("missing"),
                                       Not(HasSubstr("00001-of")), Not(HasSubstr("00003-of"))));
  }
  // Opening the missing part itself names it too.
  EXPECT_THAT(openError(dir.file(partName("m", 2, 3))),
              AllOf(HasSubstr("'m-00002-of-00003.gguf'"), HasSubstr("missing")));
  std::filesystem::remove(dir.file(partName("m", 3, 3)));
  EXPECT_THAT(openError(dir.file(partName("m", 1, 3))),
              AllOf(HasSubstr("'m-00002-of-00003.gguf', 'm-00003-of-00003.gguf'"), HasSubstr("2 of them are")));
}

TEST(GgufModelTest, ChecksSplitKeys) {
  {
    TempDir dir;
    writeSplit(dir.path(), "m", {3, 2, 7, 0});
    EXPECT_THAT(openError(dir.path().string()),
                AllOf(HasSubstr("7 tensors"), HasSubstr("hold 6"), HasSubstr("split.tensors.count")));
  }
  {
    TempDir dir;
    writeSplit(dir.path(), "m", {3, 2, -1, 2});
    EXPECT_THAT(openError(dir.file(partName("m", 1, 3))),
                AllOf(HasSubstr("m-00002-of-00003.gguf"), HasSubstr("split.no = 7"), HasSubstr("part 2 of 3")));
  }
  {
    // Parts from a 3-way split renamed as if the model had 4 parts.
    TempDir dir;
    writeSplit(dir.path(), "m");
    for (int part = 1; part <= 3; ++part)
      std::filesystem::rename(dir.file(partName("m", part, 3)), dir.file(partName("m", part, 4)));
    writeSingle(dir.file(partName("m", 4, 4)));
    EXPECT_THAT(openError(dir.file(partName("m", 4, 4))),
                AllOf(HasSubstr("m-00001-of-00004.gguf"), HasSubstr("split.count = 3")));
  }
  {
    // A part whose name lost the split pattern cannot find its siblings.
    TempDir dir;
    writeSplit(dir.path(), "m");
    std::filesystem::rename(dir.file(partName("m", 2, 3)), dir.file("renamed.gguf"));
    EXPECT_THAT(openError(dir.file("renamed.gguf")),
                AllOf(HasSubstr("renamed.gguf"), HasSubstr("part 2 of 3"), HasSubstr("<prefix>-00001-of-00003.gguf")));
  }
}

TEST(GgufModelTest, RejectsTheSameTensorInTwoParts) {
  TempDir dir;
  for (int part = 1; part <= 2; ++part) {
    GgufWriter writer;
    Value no, count;
    no.type = count.type = ValueType::UInt16;
    no.u = part - 1;
    count.u = 2;
    writer.addValue("split.no", no);
    writer.addValue("split.count", count);
    writer.addInt32("split.tensors.count", 2);
    writer.addTensor("same", {1}, GgmlType::F32, floats({1}));
    ASSERT_TRUE(writer.write(dir.file(partName("d", part, 2))).ok());
  }
  EXPECT_THAT(openError(dir.path().string()),
              AllOf(HasSubstr("'same'"), HasSubstr("d-00001-of-00002.gguf"), HasSubstr("d-00002-of-00002.gguf")));
}

TEST(GgufModelTest, DirectoryWithSeveralModelsListsThem) {
  TempDir dir;
  writeSingle(dir.file("a.gguf"));
  writeSplit(dir.path(), "big");
  std::filesystem::create_directory(dir.file("sub"));
  writeSingle(dir.file("sub/c.gguf"));
  std::string message = openError(dir.path().string());
  EXPECT_THAT(message, AllOf(HasSubstr(dir.path().string()), HasSubstr("3 models"), HasSubstr("'a.gguf'"),
                             HasSubstr("'big-00001-of-00003.gguf' (split into 3 parts, 3 present)"),
                             HasSubstr("'sub/c.gguf'"), HasSubstr("Pass one .gguf file")));
}

TEST(GgufModelTest, DirectoryCases) {
  TempDir dir;
  std::filesystem::create_directory(dir.file("empty"));
  testing::writeBytes(dir.file("empty/readme.txt"), {'x'});
  EXPECT_THAT(openError(dir.file("empty")), AllOf(HasSubstr("empty"), HasSubstr("no .gguf files")));

  // A model found in a subdirectory, as --gguf-path loaders search.
  std::filesystem::create_directories(dir.file("nested/q4"));
  writeSingle(dir.file("nested/q4/m.gguf"), "nested");
  StatusOr<std::unique_ptr<GgufModel>> nested = GgufModel::open(dir.file("nested"));
  ASSERT_TRUE(nested.ok()) << nested.message();
  EXPECT_EQ((*nested)->architecture(), "nested");

  // The search stops a few levels down.
  std::filesystem::create_directories(dir.file("deep/a/b/c/d"));
  writeSingle(dir.file("deep/a/b/c/d/m.gguf"));
  EXPECT_THAT(openError(dir.file("deep")), HasSubstr("no .gguf files"));
  writeSingle(dir.file("deep/a/b/c/m.gguf"), "found");
  StatusOr<std::unique_ptr<GgufModel>> deep = GgufModel::open(dir.file("deep"));
  ASSERT_TRUE(deep.ok()) << deep.message();
  EXPECT_EQ((*deep)->architecture(), "found");

  // A directory named like a file is still searched, and errors say what it is.
  std::filesystem::create_directory(dir.file("model.gguf"));
  EXPECT_THAT(openError(dir.file("model.gguf")),
              AllOf(HasSubstr("is a directory, not a GGUF file"), HasSubstr("no .gguf files")));
  writeSingle(dir.file("model.gguf/real.gguf"), "inside");
  StatusOr<std::unique_ptr<GgufModel>> inside = GgufModel::open(dir.file("model.gguf"));
  ASSERT_TRUE(inside.ok()) << inside.message();
  EXPECT_EQ((*inside)->architecture(), "inside");
  writeSingle(dir.file("model.gguf/other.gguf"));
  EXPECT_THAT(openError(dir.file("model.gguf")),
              AllOf(HasSubstr("is a directory, not a GGUF file"), HasSubstr("2 models")));
}

TEST(GgufModelTest, MissingPathsAndCorruptPartsAreReported) {
  TempDir dir;
  EXPECT_THAT(openError(dir.file("absent")), AllOf(HasSubstr("absent"), HasSubstr("does not exist")));

  writeSplit(dir.path(), "DeepSeek-R1");
  EXPECT_THAT(openError(dir.file("DeepSeek-R1.gguf")),
              AllOf(HasSubstr("does not exist"), HasSubstr("DeepSeek-R1-00001-of-00003.gguf")));

  // A damaged part is reported with its own file name.
  std::string part3 = dir.file(partName("DeepSeek-R1", 3, 3));
  std::filesystem::resize_file(part3, std::filesystem::file_size(part3) - 40);
  EXPECT_THAT(openError(dir.file(partName("DeepSeek-R1", 1, 3))),
              AllOf(HasSubstr(part3), HasSubstr("truncated"), HasSubstr("sha256")));
}

} // namespace
} // namespace kt::gguf
