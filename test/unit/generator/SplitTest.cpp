// Split models as llama.cpp's gguf-split writes them.
#include "test/unit/generator/GeneratorTestUtil.h"

namespace kt::gen::test {
namespace {

using gguf::GgufFile;
using gguf::GgufModel;

TEST(GeneratorSplit, PartNamesFollowGgufSplit) {
  EXPECT_EQ(splitPaths("out/model.gguf", 3),
            (std::vector<std::string>{"out/model-00001-of-00003.gguf",
                                      "out/model-00002-of-00003.gguf",
                                      "out/model-00003-of-00003.gguf"}));
  EXPECT_EQ(splitPaths("model", 2)[1], "model-00002-of-00002.gguf");
}

void expectSameTensors(const GgufModel &split, const GgufModel &single) {
  ASSERT_EQ(split.tensors().size(), single.tensors().size());
  for (size_t i = 0; i < single.tensors().size(); ++i) {
    const gguf::TensorInfo &a = single.tensors()[i];
    const gguf::TensorInfo &b = split.tensors()[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.ne, b.ne);
    EXPECT_EQ(a.type, b.type);
    ASSERT_EQ(a.nbytes, b.nbytes);
    EXPECT_EQ(std::memcmp(a.data, b.data, a.nbytes), 0) << a.name;
  }
}

TEST(GeneratorSplit, MaxTensorsSplitOpensAsTheSameModel) {
  TempDir dir;
  ModelConfig config = tinyConfig();
  writeTiny(config, dir.file("single.gguf"));
  WriteOptions options;
  options.splitMaxTensors = 20;
  WriteResult result = writeTiny(config, dir.file("model.gguf"), options);
  // 52 tensors, at most 20 per file.
  ASSERT_EQ(result.files.size(), 3u);
  EXPECT_EQ(result.files[0].tensorCount, 20u);
  EXPECT_EQ(result.files[2].tensorCount, 12u);
  EXPECT_FALSE(std::filesystem::exists(dir.file("model.gguf")));

  for (int part = 0; part < 3; ++part) {
    std::string path = dir.file("model-0000" + std::to_string(part + 1) + "-of-00003.gguf");
    ASSERT_EQ(result.files[part].path, path);
    StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::open(path);
    ASSERT_TRUE(file.ok()) << file.message();
    // Key types as gguf-split writes them: u16, u16, i32.
    const gguf::Value *no = (*file)->find("split.no");
    const gguf::Value *count = (*file)->find("split.count");
    const gguf::Value *tensors = (*file)->find("split.tensors.count");
    ASSERT_TRUE(no && count && tensors);
    EXPECT_EQ(no->type, gguf::ValueType::UInt16);
    EXPECT_EQ(no->u, static_cast<uint64_t>(part));
    EXPECT_EQ(count->type, gguf::ValueType::UInt16);
    EXPECT_EQ(count->u, 3u);
    EXPECT_EQ(tensors->type, gguf::ValueType::Int32);
    EXPECT_EQ(tensors->i, 52);
    // All other metadata lives in the first part only.
    EXPECT_EQ((*file)->find("general.architecture") != nullptr, part == 0);
  }

  StatusOr<std::unique_ptr<GgufModel>> split =
      GgufModel::open(dir.file("model-00002-of-00003.gguf"));
  ASSERT_TRUE(split.ok()) << split.message();
  EXPECT_EQ((*split)->files().size(), 3u);
  EXPECT_EQ((*split)->architecture(), "deepseek2");
  StatusOr<std::unique_ptr<GgufModel>> single = GgufModel::open(dir.file("single.gguf"));
  ASSERT_TRUE(single.ok()) << single.message();
  expectSameTensors(**split, **single);
}

TEST(GeneratorSplit, SplitCountBalancesBytesAndFillsEveryPart) {
  TempDir dir;
  ModelConfig config = tinyConfig();
  writeTiny(config, dir.file("single.gguf"));
  WriteOptions options;
  options.splitCount = 4;
  WriteResult result = writeTiny(config, dir.file("model.gguf"), options);
  ASSERT_EQ(result.files.size(), 4u);
  uint64_t largest = 0, smallest = UINT64_MAX;
  for (const WrittenFile &file : result.files) {
    EXPECT_GE(file.tensorCount, 1u);
    largest = std::max(largest, file.bytes);
    smallest = std::min(smallest, file.bytes);
  }
  // The tiny model's largest tensors are ~600 KB, a quarter of it ~1.2 MB.
  EXPECT_LT(largest, 2 * smallest) << "parts are unbalanced";
  StatusOr<std::unique_ptr<GgufModel>> split = GgufModel::open(result.files[0].path);
  ASSERT_TRUE(split.ok()) << split.message();
  StatusOr<std::unique_ptr<GgufModel>> single = GgufModel::open(dir.file("single.gguf"));
  ASSERT_TRUE(single.ok());
  expectSameTensors(**split, **single);
}

TEST(GeneratorSplit, EveryPartGetsATensorEvenWithManyParts) {
  ModelConfig config = tinyConfig();
  StatusOr<ModelPlan> plan = planModel(config, builtinVocabulary());
  ASSERT_TRUE(plan.ok());
  WriteOptions options;
  options.splitCount = static_cast<int64_t>(plan->tensors.size());
  StatusOr<std::vector<int64_t>> files = assignSplits(*plan, options);
  ASSERT_TRUE(files.ok()) << files.message();
  for (size_t i = 0; i < files->size(); ++i)
    EXPECT_EQ((*files)[i], static_cast<int64_t>(i));
  options.splitCount += 1;
  EXPECT_FALSE(assignSplits(*plan, options).ok());
  options.splitCount = 2;
  options.splitMaxTensors = 10;
  EXPECT_FALSE(assignSplits(*plan, options).ok());
}

} // namespace
} // namespace kt::gen::test
