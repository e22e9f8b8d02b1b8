#include "runtime/safetensors/Safetensors.h"

#include "runtime/quant/Quant.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <xxhash.h>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace kt::safetensors {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct DtypeInfo {
  Dtype dtype;
  const char *name;
  int bytes;
};
constexpr DtypeInfo kDtypes[] = {
    {Dtype::F64, "F64", 8},         {Dtype::F32, "F32", 4},     {Dtype::F16, "F16", 2},
    {Dtype::BF16, "BF16", 2},       {Dtype::F8_E4M3, "F8_E4M3", 1},
    {Dtype::F8_E5M2, "F8_E5M2", 1}, {Dtype::I64, "I64", 8},     {Dtype::I32, "I32", 4},
    {Dtype::I16, "I16", 2},         {Dtype::I8, "I8", 1},       {Dtype::U8, "U8", 1},
    {Dtype::Bool, "BOOL", 1},
};

// Headers of real checkpoints are a few MB; this stops a corrupt length from
// becoming a huge allocation.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

std::string shapeText(const std::vector<int64_t> &shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

StatusOr<std::string> readText(const fs::path &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return Status::error(path.string() + ": cannot read it");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

} // namespace

const char *dtypeName(Dtype dtype) {
  for (const DtypeInfo &info : kDtypes)
    if (info.dtype == dtype)
      return info.name;
  return "?";
}

std::optional<Dtype> parseDtype(const std::string &name) {
  for (const DtypeInfo &info : kDtypes)
    if (name == info.name)
      return info.dtype;
  return std::nullopt;
}

int dtypeBytes(Dtype dtype) {
  for (const DtypeInfo &info : kDtypes)
    if (info.dtype == dtype)
      return info.bytes;
  return 0;
}

int64_t TensorInfo::elements() const {
  int64_t count = 1;
  for (int64_t d : shape)
    count *= d;
  return count;
}

// ------------------------------------------------------------------ file

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::open(const std::string &path) {
  const std::string fix = "; the file is damaged or not a safetensors file: download or "
                          "convert it again";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return Status::error(path + ": cannot open it: " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::error(path + ": not a regular file");
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->size_ = static_cast<uint64_t>(st.st_size);
  if (file->size_ < 8) {
    ::close(fd);
    return Status::error(path + ": " + std::to_string(file->size_) +
                         " bytes, too short for a safetensors header" + fix);
  }
  void *mapping = mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping == MAP_FAILED)
    return Status::error(path + ": cannot map it: " + std::strerror(errno));
  file->mapping_ = mapping;
  const uint8_t *bytes = static_cast<const uint8_t *>(mapping);

  uint64_t headerBytes = 0;
  for (int i = 7; i >= 0; --i)
    headerBytes = headerBytes << 8 | bytes[i];
  if (headerBytes > kMaxHeaderBytes || headerBytes > file->size_ - 8)
    return Status::error(path + ": the header length field says " + std::to_string(headerBytes) +
                         " bytes, but the file has " + std::to_string(file->size_ - 8) +
                         " after it" + fix);
  file->headerBytes_ = headerBytes;
  json header = json::parse(bytes + 8, bytes + 8 + headerBytes, nullptr, false);
  if (header.is_discarded() || !header.is_object())
    return Status::error(path + ": the header is not a JSON object" + fix);
  const uint64_t dataStart = 8 + headerBytes, dataBytes = file->size_ - dataStart;

  for (auto &[name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object())
        return Status::error(path + ": __metadata__ is not an object" + fix);
      for (auto &[key, value] : entry.items())
        if (value.is_string())
          file->metadata_[key] = value.get<std::string>();
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    if (!entry.is_object() || !entry.contains("dtype") || !entry["dtype"].is_string() ||
        !entry.contains("shape") || !entry["shape"].is_array() ||
        !entry.contains("data_offsets") || !entry["data_offsets"].is_array() ||
        entry["data_offsets"].size() != 2)
      return Status::error(where + " lacks dtype, shape or data_offsets [begin, end]" + fix);
    TensorInfo info;
    info.name = name;
    std::optional<Dtype> dtype = parseDtype(entry["dtype"].get<std::string>());
    if (!dtype)
      return Status::error(where + " has the unknown dtype '" + entry["dtype"].get<std::string>() +
                           "' (known: F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, "
                           "U8, BOOL)");
    info.dtype = *dtype;
    uint64_t elements = 1;
    for (const json &d : entry["shape"]) {
      if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0))
        return Status::error(where + " has a shape that is not a list of non-negative integers" + fix);
      const uint64_t extent = d.get<uint64_t>();
      if (extent > 0 && elements > (uint64_t(1) << 62) / extent)
        return Status::error(where + " has a shape too large to address" + fix);
      elements *= extent;
      info.shape.push_back(static_cast<int64_t>(extent));
    }
    for (const json &o : entry["data_offsets"])
      if (!o.is_number_unsigned() && !(o.is_number_integer() && o.get<int64_t>() >= 0))
        return Status::error(where + " has data_offsets that are not non-negative integers" + fix);
    info.begin = entry["data_offsets"][0].get<uint64_t>();
    info.end = entry["data_offsets"][1].get<uint64_t>();
    const uint64_t expected = elements * static_cast<uint64_t>(dtypeBytes(info.dtype));
    if (info.end < info.begin || info.end - info.begin != expected)
      return Status::error(where + " (" + dtypeName(info.dtype) + " " + shapeText(info.shape) +
                           ", " + std::to_string(expected) + " bytes) has data_offsets [" +
                           std::to_string(info.begin) + ", " + std::to_string(info.end) +
                           "] of another size" + fix);
    if (info.end > dataBytes)
      return Status::error(where + " ends at byte " + std::to_string(info.end) +
                           " of the data, but the file holds " + std::to_string(dataBytes) +
                           " (truncated?)" + fix);
    info.data = bytes + dataStart + info.begin;
    info.file = file.get();
    file->tensors_.push_back(std::move(info));
  }
  std::vector<const TensorInfo *> byOffset;
  for (const TensorInfo &t : file->tensors_)
    byOffset.push_back(&t);
  std::sort(byOffset.begin(), byOffset.end(),
            [](const TensorInfo *a, const TensorInfo *b) { return a->begin < b->begin; });
  for (size_t i = 1; i < byOffset.size(); ++i)
    if (byOffset[i]->begin < byOffset[i - 1]->end)
      return Status::error(path + ": tensors '" + byOffset[i - 1]->name + "' and '" +
                           byOffset[i]->name + "' overlap in the data" + fix);
  std::sort(file->tensors_.begin(), file->tensors_.end(),
            [](const TensorInfo &a, const TensorInfo &b) { return a.name < b.name; });
  return file;
}

std::string_view SafetensorsFile::header() const {
  return {static_cast<const char *>(mapping_) + 8, static_cast<size_t>(headerBytes_)};
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_)
    munmap(mapping_, size_);
}

// ------------------------------------------------------------------ checkpoint

StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::open(const std::string &path) {
  auto checkpoint = std::make_unique<Checkpoint>();
  checkpoint->path_ = path;
  std::error_code error;
  std::vector<fs::path> shards;
  std::map<std::string, std::string> weightMap; // tensor -> shard, from the index
  if (fs::is_directory(path, error)) {
    const fs::path dir(path), config = dir / "config.json";
    if (fs::exists(config, error)) {
      StatusOr<std::string> text = readText(config);
      if (!text)
        return text.status();
      json parsed = json::parse(*text, nullptr, false);
      if (parsed.is_discarded() || !parsed.is_object())
        return Status::error(config.string() + ": not a JSON object; restore the checkpoint's "
                                               "config.json");
      checkpoint->configJson_ = *text;
      checkpoint->modelType_ = parsed.value("model_type", std::string());
      if (parsed.contains("quantization_config") && parsed["quantization_config"].is_object()) {
        const json &q = parsed["quantization_config"];
        if (q.value("quant_method", std::string()) == "fp8") {
          Fp8Config fp8;
          fp8.format = q.value("fmt", std::string("e4m3"));
          fp8.activationScheme = q.value("activation_scheme", std::string());
          if (q.contains("weight_block_size") && q["weight_block_size"].is_array())
            for (const json &b : q["weight_block_size"])
              if (b.is_number_integer())
                fp8.blockSize.push_back(b.get<int64_t>());
          if (fp8.format != "e4m3" || fp8.blockSize.size() != 2 || fp8.blockSize[0] <= 0 ||
              fp8.blockSize[0] != fp8.blockSize[1])
            return Status::error(config.string() +
                                 ": quantization_config must be fp8 with fmt e4m3 and a square "
                                 "weight_block_size such as [128, 128]; this one is " + q.dump());
          checkpoint->fp8_ = fp8;
        }
      }
    }
    const fs::path index = dir / "model.safetensors.index.json";
    if (fs::exists(index, error)) {
      StatusOr<std::string> text = readText(index);
      if (!text)
        return text.status();
      json parsed = json::parse(*text, nullptr, false);
      if (parsed.is_discarded() || !parsed.contains("weight_map") || !parsed["weight_map"].is_object())
        return Status::error(index.string() + ": no weight_map object; restore the checkpoint's "
                                              "index file");
      std::vector<std::string> names;
      for (auto &[tensor, shard] : parsed["weight_map"].items()) {
        if (!shard.is_string())
          return Status::error(index.string() + ": the shard of '" + tensor + "' is not a file name");
        const std::string file = shard.get<std::string>();
        if (file.find('/') != std::string::npos)
          return Status::error(index.string() + ": the shard of '" + tensor + "' ('" + file +
                               "') is not a file name in the checkpoint directory");
        weightMap[tensor] = file;
        if (std::find(names.begin(), names.end(), file) == names.end())
          names.push_back(file);
      }
      std::sort(names.begin(), names.end());
      for (const std::string &name : names)
        shards.push_back(dir / name);
    } else if (fs::exists(dir / "model.safetensors", error)) {
      shards.push_back(dir / "model.safetensors");
    } else {
      return Status::error(path + ": neither model.safetensors nor model.safetensors.index.json "
                                  "is there; give the directory of a Hugging Face checkpoint");
    }
  } else {
    shards.push_back(path);
  }

  for (const fs::path &shard : shards) {
    StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::open(shard.string());
    if (!file)
      return file.status();
    for (const TensorInfo &tensor : (*file)->tensors()) {
      auto [it, inserted] = checkpoint->byName_.emplace(tensor.name, &tensor);
      if (!inserted)
        return Status::error(path + ": tensor '" + tensor.name + "' is in both " +
                             it->second->file->path() + " and " + shard.string());
    }
    checkpoint->files_.push_back(std::move(*file));
  }
  for (const auto &[tensor, shard] : weightMap) {
    const TensorInfo *info = checkpoint->findTensor(tensor);
    if (!info || fs::path(info->file->path()).filename() != shard)
      return Status::error(path + ": model.safetensors.index.json puts '" + tensor + "' in " +
                           shard + ", which " + (info ? "does not hold it" : "lacks it") +
                           "; the index and the shards do not match");
  }
  return checkpoint;
}

const TensorInfo *Checkpoint::findTensor(const std::string &name) const {
  auto it = byName_.find(name);
  return it == byName_.end() ? nullptr : it->second;
}

std::vector<const TensorInfo *> Checkpoint::tensors() const {
  std::vector<const TensorInfo *> all;
  for (const auto &[name, info] : byName_)
    all.push_back(info);
  return all;
}

uint64_t Checkpoint::totalTensorBytes() const {
  uint64_t total = 0;
  for (const auto &[name, info] : byName_)
    total += info->end - info->begin;
  return total;
}

std::string fingerprint(const Checkpoint &checkpoint) {
  XXH3_state_t *state = XXH3_createState();
  XXH3_128bits_reset(state);
  for (const std::unique_ptr<SafetensorsFile> &file : checkpoint.files()) {
    const std::string name = fs::path(file->path()).filename().string();
    const uint64_t size = file->fileSize();
    XXH3_128bits_update(state, name.data(), name.size());
    XXH3_128bits_update(state, &size, sizeof size);
    std::string_view header = file->header();
    XXH3_128bits_update(state, header.data(), header.size());
    const uint8_t *data = reinterpret_cast<const uint8_t *>(header.data() + header.size());
    const uint64_t dataBytes = size - 8 - header.size();
    const uint64_t sample = std::min<uint64_t>(4096, dataBytes);
    XXH3_128bits_update(state, data, sample);
    XXH3_128bits_update(state, data + dataBytes - sample, sample);
  }
  XXH128_hash_t hash = XXH3_128bits_digest(state);
  XXH3_freeState(state);
  char text[33];
  std::snprintf(text, sizeof text, "%016llx%016llx", static_cast<unsigned long long>(hash.high64),
                static_cast<unsigned long long>(hash.low64));
  return text;
}

// ------------------------------------------------------------------ values

Status dequantize(const TensorInfo &weight, const TensorInfo *scaleInv, int64_t block, float *out) {
  const int64_t count = weight.elements();
  switch (weight.dtype) {
  case Dtype::F32:
    std::memcpy(out, weight.data, static_cast<size_t>(count) * 4);
    return Status::success();
  case Dtype::F16:
  case Dtype::BF16:
    for (int64_t i = 0; i < count; ++i) {
      uint16_t bits;
      std::memcpy(&bits, weight.data + 2 * i, 2);
      out[i] = weight.dtype == Dtype::F16 ? quant::halfToFloat(bits) : quant::bf16ToFloat(bits);
    }
    return Status::success();
  case Dtype::F8_E4M3: {
    if (weight.shape.size() != 2)
      return Status::error("tensor '" + weight.name + "': F8_E4M3 weights must be matrices, not " +
                           shapeText(weight.shape));
    const int64_t rows = weight.shape[0], cols = weight.shape[1];
    const int64_t blockRows = (rows + block - 1) / block, blockCols = (cols + block - 1) / block;
    if (!scaleInv || scaleInv->dtype != Dtype::F32 ||
        scaleInv->shape != std::vector<int64_t>{blockRows, blockCols})
      return Status::error("tensor '" + weight.name + "': F8_E4M3 weights need an F32 "
                           "weight_scale_inv of shape " +
                           shapeText({blockRows, blockCols}) + " (one per " +
                           std::to_string(block) + "x" + std::to_string(block) + " block)" +
                           (scaleInv ? ", not " + std::string(dtypeName(scaleInv->dtype)) + " " +
                                           shapeText(scaleInv->shape)
                                     : ""));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        float scale;
        std::memcpy(&scale, scaleInv->data + 4 * ((r / block) * blockCols + c / block), 4);
        out[r * cols + c] = quant::fp8E4m3ToFloat(weight.data[r * cols + c]) * scale;
      }
    return Status::success();
  }
  default:
    return Status::error("tensor '" + weight.name + "': cannot convert " +
                         dtypeName(weight.dtype) + " to f32 (F32, F16, BF16, F8_E4M3 are read)");
  }
}

} // namespace kt::safetensors
