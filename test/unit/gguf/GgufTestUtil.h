// Helpers shared by the GGUF tests: a builder for hand-made (often malformed)
// GGUF images and a temporary directory that removes itself.
#pragma once

#include "test/unit/common/TempDir.h"

#include "runtime/gguf/GgufFile.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace kt::gguf::testing {

// Appends GGUF's little-endian encodings to a byte vector.
class ByteBuilder {
public:
  std::vector<uint8_t> bytes;

  ByteBuilder &raw(const void *data, size_t size) {
    const uint8_t *begin = static_cast<const uint8_t *>(data);
    bytes.insert(bytes.end(), begin, begin + size);
    return *this;
  }
  ByteBuilder &u8(uint8_t v) { return raw(&v, 1); }
  ByteBuilder &u32(uint32_t v) { return raw(&v, 4); }
  ByteBuilder &u64(uint64_t v) { return raw(&v, 8); }
  ByteBuilder &i64(int64_t v) { return raw(&v, 8); }
  ByteBuilder &f32(float v) { return raw(&v, 4); }
  ByteBuilder &str(const std::string &s) {
    u64(s.size());
    return raw(s.data(), s.size());
  }
  ByteBuilder &header(uint32_t version, uint64_t tensors, uint64_t kvs) {
    raw("GGUF", 4);
    u32(version);
    u64(tensors);
    return u64(kvs);
  }
  // A metadata entry holding one uint32.
  ByteBuilder &kvU32(const std::string &key, uint32_t value) {
    str(key);
    u32(static_cast<uint32_t>(ValueType::UInt32));
    return u32(value);
  }
  ByteBuilder &tensorInfo(const std::string &name, const std::vector<uint64_t> &ne,
                          uint32_t type, uint64_t offset) {
    str(name);
    u32(static_cast<uint32_t>(ne.size()));
    for (uint64_t extent : ne)
      u64(extent);
    u32(type);
    return u64(offset);
  }
  ByteBuilder &padTo(uint64_t alignment) {
    while (bytes.size() % alignment)
      bytes.push_back(0);
    return *this;
  }
  ByteBuilder &fill(size_t count, uint8_t value = 0) {
    bytes.insert(bytes.end(), count, value);
    return *this;
  }
};

using TempDir = ::kt::test::TempDir;

inline void writeBytes(const std::string &path, const std::vector<uint8_t> &bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char *>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

inline std::vector<uint8_t> readBytes(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

inline std::vector<std::string> listDirectory(const std::filesystem::path &dir) {
  std::vector<std::string> names;
  for (const auto &entry : std::filesystem::directory_iterator(dir))
    names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Metadata values for tests.
inline Value scalar(ValueType type, uint64_t u, int64_t i = 0, double f = 0) {
  Value v;
  v.type = type;
  v.u = u;
  v.i = i;
  v.f = f;
  return v;
}
inline Value str(std::string s) {
  Value v;
  v.type = ValueType::String;
  v.s = std::move(s);
  return v;
}
inline Value arrayOf(ValueType elementType, std::vector<Value> elements) {
  Value v;
  v.type = ValueType::Array;
  v.elementType = elementType;
  v.array = std::move(elements);
  return v;
}

// One value of every type, including arrays of arrays and empty arrays.
inline std::vector<KeyValue> everyValueType() {
  std::vector<KeyValue> kvs = {
      {"t.u8", scalar(ValueType::UInt8, 200)},
      {"t.i8", scalar(ValueType::Int8, 0, -100)},
      {"t.u16", scalar(ValueType::UInt16, 65535)},
      {"t.i16", scalar(ValueType::Int16, 0, -32768)},
      {"t.u32", scalar(ValueType::UInt32, 4000000000u)},
      {"t.i32", scalar(ValueType::Int32, 0, -2000000000)},
      {"t.f32", scalar(ValueType::Float32, 0, 0, static_cast<float>(3.14159))},
      {"t.bool", scalar(ValueType::Bool, 1)},
      {"t.string", str("héllo \"gguf\"\n")},
      {"t.empty_string", str("")},
      {"t.u64", scalar(ValueType::UInt64, UINT64_MAX)},
      {"t.i64", scalar(ValueType::Int64, 0, INT64_MIN)},
      {"t.f64", scalar(ValueType::Float64, 0, 0, -2.5e-300)},
      {"t.array_i32",
       arrayOf(ValueType::Int32, {scalar(ValueType::Int32, 0, 1), scalar(ValueType::Int32, 0, -2)})},
      {"t.array_string", arrayOf(ValueType::String, {str("a"), str(""), str("ccc")})},
      {"t.array_bool", arrayOf(ValueType::Bool, {scalar(ValueType::Bool, 0), scalar(ValueType::Bool, 1)})},
      {"t.array_f64", arrayOf(ValueType::Float64, {scalar(ValueType::Float64, 0, 0, 1.5)})},
      {"t.array_empty", arrayOf(ValueType::UInt8, {})},
      {"t.array_of_arrays",
       arrayOf(ValueType::Array,
               {arrayOf(ValueType::Int32, {scalar(ValueType::Int32, 0, 7)}),
                arrayOf(ValueType::String, {str("x"), str("y")}),
                arrayOf(ValueType::Array, {arrayOf(ValueType::UInt64, {scalar(ValueType::UInt64, 9)})}),
                arrayOf(ValueType::Float32, {})})},
  };
  for (ValueType type : {ValueType::UInt8, ValueType::Int8, ValueType::UInt16, ValueType::Int16,
                         ValueType::UInt32, ValueType::Int32, ValueType::Float32,
                         ValueType::UInt64, ValueType::Int64}) {
    Value element = scalar(type, 1, -1, 0.25);
    kvs.push_back({"t.array_of_" + std::string(valueTypeName(type)), arrayOf(type, {element, element})});
  }
  return kvs;
}

// Structural equality of metadata values (floats compared bit for bit so
// NaN round trips count).
inline bool sameValue(const Value &a, const Value &b) {
  if (a.type != b.type)
    return false;
  switch (a.type) {
  case ValueType::Float32:
  case ValueType::Float64:
    return std::memcmp(&a.f, &b.f, sizeof(double)) == 0;
  case ValueType::String:
    return a.s == b.s;
  case ValueType::Array:
    if (a.elementType != b.elementType || a.array.size() != b.array.size())
      return false;
    for (size_t i = 0; i < a.array.size(); ++i)
      if (!sameValue(a.array[i], b.array[i]))
        return false;
    return true;
  case ValueType::Int8:
  case ValueType::Int16:
  case ValueType::Int32:
  case ValueType::Int64:
    return a.i == b.i;
  default: // unsigned integers and bool
    return a.u == b.u;
  }
}

} // namespace kt::gguf::testing
