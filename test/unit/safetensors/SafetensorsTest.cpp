// The safetensors reader (files, checkpoint directories, every refusal) and
// FP8 e4m3 conversion.
#include "runtime/quant/Quant.h"
#include "runtime/safetensors/Safetensors.h"
#include "test/unit/common/TempDir.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <fstream>

namespace kt::safetensors {
namespace {

using json = nlohmann::json;

// A safetensors file of `header` (JSON text) and `data` bytes.
void writeFile(const std::string &path, const std::string &header, const std::string &data) {
  std::ofstream out(path, std::ios::binary);
  uint64_t length = header.size();
  for (int i = 0; i < 8; ++i)
    out.put(static_cast<char>((length >> (8 * i)) & 0xff));
  out << header << data;
}

std::string floats(std::initializer_list<float> values) {
  std::string bytes;
  for (float v : values)
    bytes.append(reinterpret_cast<const char *>(&v), 4);
  return bytes;
}

TEST(Fp8E4m3, DecodesEveryCode) {
  EXPECT_EQ(quant::fp8E4m3ToFloat(0x00), 0.0f);
  EXPECT_EQ(quant::fp8E4m3ToFloat(0x38), 1.0f);
  EXPECT_EQ(quant::fp8E4m3ToFloat(0x7e), 448.0f);
  EXPECT_EQ(quant::fp8E4m3ToFloat(0xfe), -448.0f);
  EXPECT_EQ(quant::fp8E4m3ToFloat(0x01), std::ldexp(1.0f, -9)); // smallest subnormal
  EXPECT_EQ(quant::fp8E4m3ToFloat(0x08), std::ldexp(1.0f, -6)); // smallest normal
  EXPECT_TRUE(std::isnan(quant::fp8E4m3ToFloat(0x7f)));
  EXPECT_TRUE(std::isnan(quant::fp8E4m3ToFloat(0xff)));
  // Increasing magnitudes, and every finite code survives a round trip.
  for (int code = 0; code < 0x7e; ++code)
    EXPECT_LT(quant::fp8E4m3ToFloat(code), quant::fp8E4m3ToFloat(code + 1)) << code;
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f)
      continue;
    EXPECT_EQ(quant::floatToFp8E4m3(quant::fp8E4m3ToFloat(static_cast<uint8_t>(code))), code)
        << code;
  }
}

TEST(Fp8E4m3, RoundsToNearestEvenAndSaturates) {
  EXPECT_EQ(quant::floatToFp8E4m3(1.0625f), 0x38); // between 1 (even) and 1.125
  EXPECT_EQ(quant::floatToFp8E4m3(1.1875f), 0x3a); // between 1.125 and 1.25 (even)
  EXPECT_EQ(quant::floatToFp8E4m3(1.05f), 0x38);
  EXPECT_EQ(quant::floatToFp8E4m3(1.08f), 0x39);
  EXPECT_EQ(quant::floatToFp8E4m3(1000.0f), 0x7e);
  EXPECT_EQ(quant::floatToFp8E4m3(-1000.0f), 0xfe);
  EXPECT_EQ(quant::floatToFp8E4m3(std::ldexp(1.0f, -11)), 0x00); // below half the smallest
  EXPECT_EQ(quant::floatToFp8E4m3(std::nanf("")), 0x7f);
}

TEST(Safetensors, ReadsTensorsAndMetadata) {
  test::TempDir dir("st");
  const std::string path = dir.file("a.safetensors");
  json header = {{"__metadata__", {{"format", "pt"}}},
                 {"b", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {8, 16}}}},
                 {"a", {{"dtype", "F8_E4M3"}, {"shape", {2, 4}}, {"data_offsets", {0, 8}}}}};
  std::string data = std::string("\x38\x40\x00\xb8\x7e\x01\x08\x3a", 8) + floats({2.5f, -1.0f});
  writeFile(path, header.dump(), data);
  StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.message();
  ASSERT_EQ((*file)->tensors().size(), 2u);
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  const TensorInfo &a = (*file)->tensors()[0];
  EXPECT_EQ(a.name, "a");
  EXPECT_EQ(a.dtype, Dtype::F8_E4M3);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 4}));
  const TensorInfo &b = (*file)->tensors()[1];
  std::vector<float> values(2);
  ASSERT_TRUE(dequantize(b, nullptr, 128, values.data()).ok());
  EXPECT_EQ(values, (std::vector<float>{2.5f, -1.0f}));
  // FP8 with a 1x1 grid of scales (block 128 covers the 2x4 matrix).
  std::vector<float> decoded(8);
  TensorInfo scale = b;
  scale.shape = {1, 1}; // first value of b, 2.5, as the scale
  ASSERT_TRUE(dequantize(a, &scale, 128, decoded.data()).ok());
  EXPECT_EQ(decoded[0], 2.5f);
  EXPECT_EQ(decoded[4], 448.0f * 2.5f);
  // Without the right scales, FP8 is refused.
  Status noScales = dequantize(a, nullptr, 128, decoded.data());
  ASSERT_FALSE(noScales.ok());
  EXPECT_NE(noScales.message().find("weight_scale_inv of shape [1, 1]"), std::string::npos);
}

TEST(Safetensors, RefusesDamagedFiles) {
  test::TempDir dir("st-bad");
  auto expectRefused = [&](const std::string &name, const std::string &bytes, const std::string &words) {
    const std::string path = dir.file(name);
    std::ofstream(path, std::ios::binary) << bytes;
    StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::open(path);
    ASSERT_FALSE(file.ok()) << name;
    EXPECT_NE(file.message().find(words), std::string::npos) << file.message();
    EXPECT_NE(file.message().find(path), std::string::npos) << file.message();
  };
  auto withHeader = [](const std::string &header, const std::string &data = "") {
    std::string out(8, '\0');
    uint64_t length = header.size();
    for (int i = 0; i < 8; ++i)
      out[i] = static_cast<char>((length >> (8 * i)) & 0xff);
    return out + header + data;
  };
  expectRefused("short", "abc", "too short");
  expectRefused("length", std::string("\xff\xff\xff\x00\x00\x00\x00\x00{}", 10), "header length");
  expectRefused("json", withHeader("{not json"), "not a JSON object");
  expectRefused("dtype", withHeader(R"({"t":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", "x"),
                "unknown dtype 'Q4'");
  expectRefused("size", withHeader(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "xxxx"),
                "of another size");
  expectRefused("beyond", withHeader(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "xxxx"),
                "truncated");
  expectRefused("overlap",
                withHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                           "xxxxxxxx"),
                "overlap");
  expectRefused("shape", withHeader(R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "xxxx"),
                "non-negative");
  expectRefused("fields", withHeader(R"({"t":{"dtype":"F32"}})"), "lacks dtype, shape or data_offsets");
}

TEST(Safetensors, CheckpointDirectoriesWithShardsAndConfig) {
  test::TempDir dir("st-ckpt");
  const std::string one = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  const std::string two = R"({"v":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})";
  writeFile(dir.file("s1.safetensors"), one, floats({3.0f}));
  writeFile(dir.file("s2.safetensors"), two, std::string("\x80\x3f\x00\x40", 4)); // 1.0, 2.0
  std::ofstream(dir.file("model.safetensors.index.json"))
      << R"({"metadata":{},"weight_map":{"w":"s1.safetensors","v":"s2.safetensors"}})";
  std::ofstream(dir.file("config.json"))
      << R"({"model_type":"deepseek_v3","quantization_config":{"quant_method":"fp8","fmt":"e4m3",)"
         R"("activation_scheme":"dynamic","weight_block_size":[128,128]}})";
  StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::open(dir.path().string());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.message();
  EXPECT_EQ((*checkpoint)->files().size(), 2u);
  EXPECT_EQ((*checkpoint)->modelType(), "deepseek_v3");
  ASSERT_TRUE((*checkpoint)->fp8());
  EXPECT_EQ((*checkpoint)->fp8()->blockSize, (std::vector<int64_t>{128, 128}));
  const TensorInfo *v = (*checkpoint)->findTensor("v");
  ASSERT_NE(v, nullptr);
  std::vector<float> values(2);
  ASSERT_TRUE(dequantize(*v, nullptr, 128, values.data()).ok());
  EXPECT_EQ(values, (std::vector<float>{1.0f, 2.0f}));
  EXPECT_EQ((*checkpoint)->totalTensorBytes(), 8u);

  // An index naming a tensor its shard lacks.
  std::ofstream(dir.file("model.safetensors.index.json"))
      << R"({"weight_map":{"w":"s1.safetensors","v":"s1.safetensors"}})";
  StatusOr<std::unique_ptr<Checkpoint>> mismatch = Checkpoint::open(dir.path().string());
  ASSERT_FALSE(mismatch.ok());
  EXPECT_NE(mismatch.message().find("puts 'v' in s1.safetensors"), std::string::npos) << mismatch.message();

  // An FP8 config that is not e4m3 with square blocks.
  std::ofstream(dir.file("model.safetensors.index.json"))
      << R"({"weight_map":{"w":"s1.safetensors","v":"s2.safetensors"}})";
  std::ofstream(dir.file("config.json"))
      << R"({"quantization_config":{"quant_method":"fp8","fmt":"e5m2","weight_block_size":[128,128]}})";
  StatusOr<std::unique_ptr<Checkpoint>> badConfig = Checkpoint::open(dir.path().string());
  ASSERT_FALSE(badConfig.ok());
  EXPECT_NE(badConfig.message().find("fmt e4m3"), std::string::npos) << badConfig.message();

  // No weights at all.
  test::TempDir empty("st-empty");
  StatusOr<std::unique_ptr<Checkpoint>> none = Checkpoint::open(empty.path().string());
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.message().find("neither model.safetensors"), std::string::npos);
}

} // namespace
} // namespace kt::safetensors
