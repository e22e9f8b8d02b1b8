// Helpers shared by the GGUF tests: a builder for hand-made (often malformed)
// GGUF images and a temporary directory that removes itself.
#pragma once

#include "runtime/gguf/GgufFile.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
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

class TempDir {
public:
  TempDir() {
    std::string pattern = std::string(KT_BINARY_DIR) + "/gguf-test-XXXXXX";
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    if (!mkdtemp(buffer.data()))
      std::abort();
    path_ = buffer.data();
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir &) = delete;
  TempDir &operator=(const TempDir &) = delete;

  const std::filesystem::path &path() const { return path_; }
  std::string file(const std::string &name) const { return (path_ / name).string(); }

private:
  std::filesystem::path path_;
};

inline void writeBytes(const std::string &path, const std::vector<uint8_t> &bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char *>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

inline std::vector<std::string> listDirectory(const std::filesystem::path &dir) {
  std::vector<std::string> names;
  for (const auto &entry : std::filesystem::directory_iterator(dir))
    names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
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
