#include "runtime/gguf/GgufWriter.h"

#include <cstring>

namespace kt::gguf {

void GgufWriter::addValue(std::string key, Value value) {
  metadata_.push_back({std::move(key), std::move(value)});
}

void GgufWriter::addString(std::string key, std::string value) {
  Value v;
  v.type = ValueType::String;
  v.s = std::move(value);
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addUInt32(std::string key, uint32_t value) {
  Value v;
  v.type = ValueType::UInt32;
  v.u = value;
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addInt32(std::string key, int32_t value) {
  Value v;
  v.type = ValueType::Int32;
  v.i = value;
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addUInt64(std::string key, uint64_t value) {
  Value v;
  v.type = ValueType::UInt64;
  v.u = value;
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addFloat32(std::string key, float value) {
  Value v;
  v.type = ValueType::Float32;
  v.f = value;
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addBool(std::string key, bool value) {
  Value v;
  v.type = ValueType::Bool;
  v.u = value ? 1 : 0;
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addStringArray(std::string key, const std::vector<std::string> &values) {
  Value v;
  v.type = ValueType::Array;
  v.elementType = ValueType::String;
  v.array.resize(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    v.array[i].type = ValueType::String;
    v.array[i].s = values[i];
  }
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addInt32Array(std::string key, const std::vector<int32_t> &values) {
  Value v;
  v.type = ValueType::Array;
  v.elementType = ValueType::Int32;
  v.array.resize(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    v.array[i].type = ValueType::Int32;
    v.array[i].i = values[i];
  }
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addFloat32Array(std::string key, const std::vector<float> &values) {
  Value v;
  v.type = ValueType::Array;
  v.elementType = ValueType::Float32;
  v.array.resize(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    v.array[i].type = ValueType::Float32;
    v.array[i].f = values[i];
  }
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addTensor(std::string name, std::vector<int64_t> ne, GgmlType type,
                           std::vector<uint8_t> bytes) {
  tensors_.push_back({std::move(name), std::move(ne), type});
  tensorData_.push_back(std::move(bytes));
}

StatusOr<GgufLayout> GgufWriter::layOut(const std::string &target) const {
  StatusOr<GgufLayout> layout = GgufLayout::create(metadata_, tensors_, alignment_, target);
  if (!layout.ok())
    return layout;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const TensorDeclaration &tensor = tensors_[i];
    if (tensorData_[i].size() == layout->tensorBytes[i])
      continue;
    std::string shape;
    for (int64_t extent : tensor.ne)
      shape += (shape.empty() ? "" : ", ") + std::to_string(extent);
    return Status::error("Cannot write " + target + ": tensor '" + tensor.name + "' has " +
                         std::to_string(tensorData_[i].size()) + " bytes of data, but its shape [" +
                         shape + "] in type " + std::string(ggmlTypeName(tensor.type)) +
                         " needs " + std::to_string(layout->tensorBytes[i]) + " bytes.");
  }
  return layout;
}

StatusOr<std::vector<uint8_t>> GgufWriter::serialize() const {
  StatusOr<GgufLayout> layout = layOut("the GGUF image");
  if (!layout.ok())
    return layout.status();
  std::vector<uint8_t> image = std::move(layout->header);
  image.resize(layout->fileSize, 0); // padding between tensors stays zero
  for (size_t i = 0; i < tensorData_.size(); ++i)
    if (!tensorData_[i].empty())
      std::memcpy(image.data() + layout->tensorOffsets[i], tensorData_[i].data(),
                  tensorData_[i].size());
  return image;
}

Status GgufWriter::write(const std::string &path) const {
  StatusOr<GgufLayout> layout = layOut(ggufFileTarget(path));
  if (!layout.ok())
    return layout.status();
  GgufStreamWriter writer(path, std::move(*layout));
  if (Status status = writer.open(); !status.ok())
    return status;
  for (size_t i = 0; i < tensorData_.size(); ++i)
    if (Status status = writer.writeTensorData(i, 0, tensorData_[i].data(), tensorData_[i].size());
        !status.ok())
      return status;
  return writer.commit();
}

} // namespace kt::gguf
