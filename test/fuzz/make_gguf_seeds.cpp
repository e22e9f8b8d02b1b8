// Writes a seed corpus for gguf_fuzzer: small valid GGUF files covering every
// value type, nested arrays, many tensor types, non-default alignment, split
// keys and version 2. Usage: gguf_fuzz_seeds <output-dir>
#include "runtime/gguf/GgufWriter.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

using namespace kt::gguf;

namespace {

Value scalar(ValueType type, uint64_t u, int64_t i = 0, double f = 0) {
  Value v;
  v.type = type;
  v.u = u;
  v.i = i;
  v.f = f;
  return v;
}

Value arrayOf(ValueType elementType, std::vector<Value> elements) {
  Value v;
  v.type = ValueType::Array;
  v.elementType = elementType;
  v.array = std::move(elements);
  return v;
}

bool save(const std::filesystem::path &dir, const std::string &name,
          kt::StatusOr<std::vector<uint8_t>> image) {
  if (!image.ok()) {
    std::fprintf(stderr, "%s: %s\n", name.c_str(), image.message().c_str());
    return false;
  }
  std::ofstream out(dir / name, std::ios::binary);
  out.write(reinterpret_cast<const char *>(image->data()),
            static_cast<std::streamsize>(image->size()));
  return static_cast<bool>(out);
}

std::vector<uint8_t> bytes(size_t size, uint8_t seed) {
  std::vector<uint8_t> out(size);
  for (size_t i = 0; i < size; ++i)
    out[i] = static_cast<uint8_t>(seed * 7 + i);
  return out;
}

} // namespace

int main(int argc, char **argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <output-dir>\n", argv[0]);
    return 2;
  }
  std::filesystem::path dir(argv[1]);
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    std::fprintf(stderr, "cannot create %s: %s\n", argv[1], error.message().c_str());
    return 1;
  }
  bool ok = true;

  ok &= save(dir, "empty.gguf", GgufWriter().serialize());

  GgufWriter values;
  values.addValue("u8", scalar(ValueType::UInt8, 7));
  values.addValue("i8", scalar(ValueType::Int8, 0, -7));
  values.addValue("u16", scalar(ValueType::UInt16, 700));
  values.addValue("i16", scalar(ValueType::Int16, 0, -700));
  values.addUInt32("u32", 70000);
  values.addInt32("i32", -70000);
  values.addFloat32("f32", 0.125f);
  values.addBool("bool", true);
  values.addString("general.architecture", "deepseek2");
  values.addUInt64("u64", 1ull << 40);
  values.addValue("i64", scalar(ValueType::Int64, 0, -(1ll << 40)));
  values.addValue("f64", scalar(ValueType::Float64, 0, 0, 1e-300));
  values.addStringArray("tokenizer.ggml.tokens", {"<s>", "</s>", "a", "b"});
  values.addInt32Array("tokenizer.ggml.token_type", {3, 3, 1, 1});
  values.addFloat32Array("tokenizer.ggml.scores", {0.f, 0.f, -1.f, -2.f});
  values.addValue("nested",
                  arrayOf(ValueType::Array,
                          {arrayOf(ValueType::UInt8, {scalar(ValueType::UInt8, 1)}),
                           arrayOf(ValueType::Array, {arrayOf(ValueType::Bool, {})})}));
  ok &= save(dir, "values.gguf", values.serialize());

  GgufWriter tensors(64);
  tensors.addString("general.name", "tensor types");
  for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0,
                        GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::IQ4_NL}) {
    const GgmlTypeTraits &traits = ggmlTypeTraits(type);
    int64_t rowLength = traits.blockSize == 1 ? 4 : traits.blockSize;
    tensors.addTensor(std::string(traits.name) + ".weight", {rowLength, 2}, type,
                      bytes(*ggmlRowBytes(type, rowLength) * 2, static_cast<uint8_t>(type)));
  }
  tensors.addTensor("empty", {0, 3}, GgmlType::F32, {});
  ok &= save(dir, "tensors.gguf", tensors.serialize());

  GgufWriter split;
  split.addValue("split.no", scalar(ValueType::UInt16, 1));
  split.addValue("split.count", scalar(ValueType::UInt16, 3));
  split.addInt32("split.tensors.count", 6);
  split.addTensor("blk.0.ffn_gate_exps.weight", {4, 2, 2}, GgmlType::F32, bytes(64, 3));
  split.addTensor("blk.0.ffn_up_exps.weight", {4, 1, 1, 2}, GgmlType::F16, bytes(16, 4));
  kt::StatusOr<std::vector<uint8_t>> splitImage = split.serialize();
  ok &= save(dir, "split.gguf", splitImage);

  // GGUF v2 has the same layout as v3: only the version field differs.
  if (splitImage.ok()) {
    std::vector<uint8_t> v2 = *splitImage;
    v2[4] = 2;
    ok &= save(dir, "split-v2.gguf", v2);
  }
  return ok ? 0 : 1;
}
