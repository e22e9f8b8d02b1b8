#include "runtime/plan/Plan.h"

#include "runtime/support/AtomicFile.h"

#include <nlohmann/json.hpp>
#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

namespace kt::plan {
namespace {

using nlohmann::json;

constexpr uint64_t kFingerprintSamples = 16;
constexpr uint64_t kFingerprintSampleBytes = 4096;

// Reading: every access names the field it wants, so a hand-edited or damaged
// plan gets a message that says which field is wrong.
class Reader {
public:
  explicit Reader(std::string file) : file_(std::move(file)) {}

  const json *field(const json &object, const std::string &key, const std::string &where) {
    if (!object.is_object()) {
      fail(where + " is not an object");
      return nullptr;
    }
    auto it = object.find(key);
    if (it == object.end()) {
      fail("field '" + join(where, key) + "' is missing");
      return nullptr;
    }
    return &*it;
  }

  template <typename T>
  void read(const json &object, const std::string &key, const std::string &where, T &out) {
    const json *value = field(object, key, where);
    if (!value)
      return;
    if (!holds<T>(*value)) {
      fail("field '" + join(where, key) + "' has the wrong type");
      return;
    }
    out = value->get<T>();
  }

  template <typename T>
  void readOptional(const json &object, const std::string &key, const std::string &where,
                    std::optional<T> &out) {
    if (object.is_object() && object.contains(key)) {
      T value{};
      read(object, key, where, value);
      out = value;
    }
  }

  // An object whose values are all strings (kernel names, kernel defines).
  void readStringMap(const json &object, const std::string &key, const std::string &where,
                     std::map<std::string, std::string> &out) {
    const json *map = field(object, key, where);
    if (!map)
      return;
    if (!map->is_object()) {
      fail("field '" + join(where, key) + "' is not an object");
      return;
    }
    for (const auto &[name, value] : map->items()) {
      if (value.is_string())
        out[name] = value.get<std::string>();
      else
        fail("field '" + join(where, key) + "." + name + "' is not a string");
    }
  }

  // A list of {path, size} objects (the model's files, the FP8 checkpoint's).
  void readFiles(const json &object, const std::string &key, const std::string &where,
                 std::vector<ModelFile> &out) {
    const json *files = array(object, key, where);
    if (!files)
      return;
    for (size_t i = 0; i < files->size(); ++i) {
      std::string entry = join(where, key) + "[" + std::to_string(i) + "]";
      ModelFile file;
      read((*files)[i], "path", entry, file.path);
      read((*files)[i], "size", entry, file.size);
      out.push_back(file);
    }
  }

  const json *array(const json &object, const std::string &key, const std::string &where) {
    const json *value = field(object, key, where);
    if (value && !value->is_array()) {
      fail("field '" + join(where, key) + "' is not an array");
      return nullptr;
    }
    return value;
  }

  void fail(const std::string &message) {
    if (error_.empty())
      error_ = file_ + ": " + message + "; the plan file is damaged: recompile it with "
                                        "`ktc compile`";
  }
  const std::string &error() const { return error_; }

  static std::string join(const std::string &where, const std::string &key) {
    return where.empty() ? key : where + "." + key;
  }

private:
  template <typename T> static bool holds(const json &value) {
    if constexpr (std::is_same_v<T, std::string>)
      return value.is_string();
    else if constexpr (std::is_same_v<T, bool>)
      return value.is_boolean();
    else if constexpr (std::is_floating_point_v<T>)
      return value.is_number();
    else if constexpr (std::is_unsigned_v<T>)
      return value.is_number_unsigned();
    else if constexpr (std::is_integral_v<T>)
      return value.is_number_integer();
    else
      return value.is_array(); // vectors of scalars: element types checked by get
  }

  std::string file_;
  std::string error_;
};

json paramToJson(const Param &param) {
  return std::visit([](const auto &value) { return json(value); }, param);
}

json opToJson(const Op &op) {
  json weights = json::array();
  for (const Weight &weight : op.weights)
    weights.push_back({{"role", weight.role},
                       {"tensor", weight.tensor},
                       {"type", weight.type},
                       {"shape", weight.shape},
                       {"bytes", weight.bytes}});
  json params = json::object();
  for (const auto &[key, value] : op.params)
    params[key] = paramToJson(value);
  json out = {{"kind", op.kind},       {"path", op.path},
              {"inputs", op.inputs},   {"outputs", op.outputs},
              {"prefill_device", op.prefillDevice}, {"decode_device", op.decodeDevice},
              {"out_device", op.outDevice},         {"op", op.op},
              {"rule", op.rule},       {"weights", weights},
              {"kernels", op.kernels},
              {"params", params}};
  return out;
}

json filesJson(const std::vector<ModelFile> &files) {
  json out = json::array();
  for (const ModelFile &file : files)
    out.push_back({{"path", file.path}, {"size", file.size}});
  return out;
}

} // namespace

std::string planToJson(const Plan &plan) {
  json gpus = json::array();
  for (const Gpu &gpu : plan.target.gpus)
    gpus.push_back({{"arch", gpu.arch}, {"memory", gpu.memory}});
  json memory = json::array();
  for (const DeviceMemory &device : plan.memory) {
    json entry = {{"device", device.device},   {"weights", device.weights},
                  {"kv_cache", device.kvCache}, {"activations", device.activations},
                  {"staging", device.staging},  {"total", device.total}};
    if (device.budget)
      entry["budget"] = *device.budget;
    if (device.expertCache)
      entry["expert_cache"] = device.expertCache;
    memory.push_back(entry);
  }
  json ops = json::array();
  for (const Op &op : plan.ops)
    ops.push_back(opToJson(op));
  json buffers = json::array();
  for (const Buffer &buffer : plan.buffers)
    buffers.push_back({{"value", buffer.value},
                       {"dtype", buffer.dtype},
                       {"width", buffer.width},
                       {"prefill_device", buffer.prefillDevice},
                       {"decode_device", buffer.decodeDevice}});
  json kernels = json::array();
  for (const KernelSpecialization &kernel : plan.kernelSpecializations)
    kernels.push_back({{"entry", kernel.entry},
                       {"file", kernel.file},
                       {"defines", kernel.defines},
                       {"arch", kernel.arch},
                       {"cache_key", kernel.cacheKey},
                       {"used_by", kernel.usedBy}});

  json root = {
      {"format", kPlanFormatName},
      {"version", plan.version},
      {"compiler", plan.compiler},
      {"model",
       {{"path", plan.model.path},
        {"architecture", plan.model.architecture},
        {"name", plan.model.name},
        {"files", filesJson(plan.model.files)},
        {"tensor_bytes", plan.model.tensorBytes},
        {"fingerprint", plan.model.fingerprint}}},
      {"target",
       {{"cpu", plan.target.cpu},
        {"cpu_features", plan.target.cpuFeatures},
        {"cores", plan.target.cores},
        {"numa_nodes", plan.target.numaNodes},
        {"gpus", gpus}}},
      {"memory", memory},
      {"runtime", {{"cache_lens", plan.defaults.cacheLens}, {"chunk_size", plan.defaults.chunkSize}}},
      {"ops", ops},
      {"buffers", buffers},
      {"kernel_specializations", kernels},
      {"output_value", plan.outputValue},
  };
  if (plan.model.fp8) {
    root["model"]["fp8_checkpoint"] = {{"path", plan.model.fp8->path},
                                       {"files", filesJson(plan.model.fp8->files)},
                                       {"fingerprint", plan.model.fp8->fingerprint}};
  }
  if (plan.cpuCode) {
    const CpuCode &code = *plan.cpuCode;
    json codeKernels = json::array();
    for (const CpuCodeKernel &kernel : code.kernels)
      codeKernels.push_back({{"type", kernel.type},
                             {"cols", kernel.cols},
                             {"symbol", kernel.symbol},
                             {"input", kernel.input}});
    root["cpu_code"] = {{"file", code.file},         {"size", code.size},
                        {"hash", code.hash},         {"cpu", code.cpu},
                        {"features", code.features}, {"vector_bits", code.vectorBits},
                        {"kernels", codeKernels}};
  }
  // One key per line, so plans diff well; replace rather than throw on bad UTF-8.
  return root.dump(1, ' ', false, json::error_handler_t::replace) + "\n";
}

Status writePlan(const Plan &plan, const std::string &path) {
  return writeFileAtomically(path, planToJson(plan), "the plan");
}

StatusOr<Plan> planFromJson(const std::string &text, const std::string &displayName) {
  json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded())
    return Status::error(displayName + ": not a plan file (not valid JSON); plans are written "
                                       "by `ktc compile`");
  if (!root.is_object() || root.value("format", std::string()) != kPlanFormatName)
    return Status::error(displayName + ": not a plan file (no \"format\": \"" +
                         std::string(kPlanFormatName) + "\"); plans are written by `ktc compile`");
  if (!root.contains("version") || !root["version"].is_number_integer())
    return Status::error(displayName + ": the plan has no format version; recompile it with "
                                       "`ktc compile`");
  int version = root["version"].get<int>();
  if (version != kPlanFormatVersion)
    return Status::error(displayName + ": the plan has format version " +
                         std::to_string(version) + " but this runtime reads version " +
                         std::to_string(kPlanFormatVersion) +
                         "; recompile it with this version's `ktc compile`");

  Reader r(displayName);
  Plan plan;
  plan.version = version;
  r.read(root, "compiler", "", plan.compiler);
  if (const json *model = r.field(root, "model", "")) {
    r.read(*model, "path", "model", plan.model.path);
    r.read(*model, "architecture", "model", plan.model.architecture);
    r.read(*model, "name", "model", plan.model.name);
    r.read(*model, "tensor_bytes", "model", plan.model.tensorBytes);
    r.read(*model, "fingerprint", "model", plan.model.fingerprint);
    if (model->contains("fp8_checkpoint")) {
      Fp8Checkpoint fp8;
      if (const json *entry = r.field(*model, "fp8_checkpoint", "model")) {
        r.read(*entry, "path", "model.fp8_checkpoint", fp8.path);
        r.read(*entry, "fingerprint", "model.fp8_checkpoint", fp8.fingerprint);
        r.readFiles(*entry, "files", "model.fp8_checkpoint", fp8.files);
      }
      plan.model.fp8 = std::move(fp8);
    }
    r.readFiles(*model, "files", "model", plan.model.files);
  }
  if (const json *target = r.field(root, "target", "")) {
    r.read(*target, "cpu", "target", plan.target.cpu);
    r.read(*target, "cpu_features", "target", plan.target.cpuFeatures);
    r.read(*target, "cores", "target", plan.target.cores);
    r.read(*target, "numa_nodes", "target", plan.target.numaNodes);
    if (const json *gpus = r.array(*target, "gpus", "target"))
      for (size_t i = 0; i < gpus->size(); ++i) {
        std::string where = "target.gpus[" + std::to_string(i) + "]";
        Gpu gpu;
        r.read((*gpus)[i], "arch", where, gpu.arch);
        r.read((*gpus)[i], "memory", where, gpu.memory);
        plan.target.gpus.push_back(gpu);
      }
  }
  if (const json *memory = r.array(root, "memory", ""))
    for (size_t i = 0; i < memory->size(); ++i) {
      std::string where = "memory[" + std::to_string(i) + "]";
      const json &entry = (*memory)[i];
      DeviceMemory device;
      r.read(entry, "device", where, device.device);
      r.read(entry, "weights", where, device.weights);
      r.read(entry, "kv_cache", where, device.kvCache);
      r.read(entry, "activations", where, device.activations);
      r.read(entry, "staging", where, device.staging);
      r.read(entry, "total", where, device.total);
      r.readOptional(entry, "budget", where, device.budget);
      std::optional<uint64_t> expertCache;
      r.readOptional(entry, "expert_cache", where, expertCache);
      device.expertCache = expertCache.value_or(0);
      plan.memory.push_back(device);
    }
  if (const json *runtime = r.field(root, "runtime", "")) {
    r.read(*runtime, "cache_lens", "runtime", plan.defaults.cacheLens);
    r.read(*runtime, "chunk_size", "runtime", plan.defaults.chunkSize);
  }
  r.read(root, "output_value", "", plan.outputValue);
  if (const json *buffers = r.array(root, "buffers", ""))
    for (size_t i = 0; i < buffers->size(); ++i) {
      std::string where = "buffers[" + std::to_string(i) + "]";
      Buffer buffer;
      r.read((*buffers)[i], "value", where, buffer.value);
      r.read((*buffers)[i], "dtype", where, buffer.dtype);
      r.read((*buffers)[i], "width", where, buffer.width);
      r.read((*buffers)[i], "prefill_device", where, buffer.prefillDevice);
      r.read((*buffers)[i], "decode_device", where, buffer.decodeDevice);
      plan.buffers.push_back(buffer);
    }
  if (const json *kernels = r.array(root, "kernel_specializations", ""))
    for (size_t i = 0; i < kernels->size(); ++i) {
      std::string where = "kernel_specializations[" + std::to_string(i) + "]";
      const json &entry = (*kernels)[i];
      KernelSpecialization kernel;
      r.read(entry, "entry", where, kernel.entry);
      r.read(entry, "file", where, kernel.file);
      r.read(entry, "arch", where, kernel.arch);
      r.read(entry, "cache_key", where, kernel.cacheKey);
      r.read(entry, "used_by", where, kernel.usedBy);
      r.readStringMap(entry, "defines", where, kernel.defines);
      plan.kernelSpecializations.push_back(std::move(kernel));
    }
  if (root.contains("cpu_code")) {
    CpuCode code;
    if (const json *entry = r.field(root, "cpu_code", "")) {
      r.read(*entry, "file", "cpu_code", code.file);
      r.read(*entry, "size", "cpu_code", code.size);
      r.read(*entry, "hash", "cpu_code", code.hash);
      r.read(*entry, "cpu", "cpu_code", code.cpu);
      r.read(*entry, "features", "cpu_code", code.features);
      r.read(*entry, "vector_bits", "cpu_code", code.vectorBits);
      if (const json *kernels = r.array(*entry, "kernels", "cpu_code"))
        for (size_t i = 0; i < kernels->size(); ++i) {
          std::string where = "cpu_code.kernels[" + std::to_string(i) + "]";
          CpuCodeKernel kernel;
          r.read((*kernels)[i], "type", where, kernel.type);
          r.read((*kernels)[i], "cols", where, kernel.cols);
          r.read((*kernels)[i], "symbol", where, kernel.symbol);
          r.read((*kernels)[i], "input", where, kernel.input);
          code.kernels.push_back(std::move(kernel));
        }
    }
    plan.cpuCode = std::move(code);
  }
  if (const json *ops = r.array(root, "ops", ""))
    for (size_t i = 0; i < ops->size() && r.error().empty(); ++i) {
      std::string where = "ops[" + std::to_string(i) + "]";
      const json &entry = (*ops)[i];
      Op op;
      r.read(entry, "kind", where, op.kind);
      r.read(entry, "path", where, op.path);
      r.read(entry, "inputs", where, op.inputs);
      r.read(entry, "outputs", where, op.outputs);
      r.read(entry, "prefill_device", where, op.prefillDevice);
      r.read(entry, "decode_device", where, op.decodeDevice);
      r.read(entry, "out_device", where, op.outDevice);
      r.read(entry, "op", where, op.op);
      r.read(entry, "rule", where, op.rule);
      r.readStringMap(entry, "kernels", where, op.kernels);
      if (const json *weights = r.array(entry, "weights", where))
        for (size_t w = 0; w < weights->size(); ++w) {
          std::string at = where + ".weights[" + std::to_string(w) + "]";
          Weight weight;
          r.read((*weights)[w], "role", at, weight.role);
          r.read((*weights)[w], "tensor", at, weight.tensor);
          r.read((*weights)[w], "type", at, weight.type);
          r.read((*weights)[w], "shape", at, weight.shape);
          r.read((*weights)[w], "bytes", at, weight.bytes);
          op.weights.push_back(weight);
        }
      if (const json *params = r.field(entry, "params", where)) {
        if (!params->is_object())
          r.fail("field '" + where + ".params' is not an object");
        else
          for (const auto &[key, value] : params->items()) {
            if (value.is_boolean())
              op.params[key] = value.get<bool>();
            else if (value.is_number_integer())
              op.params[key] = value.get<int64_t>();
            else if (value.is_number())
              op.params[key] = value.get<double>();
            else if (value.is_string())
              op.params[key] = value.get<std::string>();
            else
              r.fail("field '" + where + ".params." + key + "' is not a scalar");
          }
      }
      plan.ops.push_back(std::move(op));
    }
  if (!r.error().empty())
    return Status::error(r.error());

  // Values must be defined before use: value 0 is the token ids.
  int values = 1;
  for (size_t i = 0; i < plan.ops.size(); ++i) {
    for (int input : plan.ops[i].inputs)
      if (input < 0 || input >= values)
        return Status::error(displayName + ": ops[" + std::to_string(i) + "] (" +
                             plan.ops[i].path + ") reads value " + std::to_string(input) +
                             " before it is defined; the plan file is damaged: recompile it");
    for (int output : plan.ops[i].outputs)
      if (output != values++)
        return Status::error(displayName + ": ops[" + std::to_string(i) +
                             "] defines values out of order; the plan file is damaged: "
                             "recompile it");
  }
  bool buffersMatch = static_cast<int>(plan.buffers.size()) == values;
  for (size_t i = 0; buffersMatch && i < plan.buffers.size(); ++i)
    buffersMatch = plan.buffers[i].value == static_cast<int>(i);
  if (!buffersMatch)
    return Status::error(displayName + ": the plan's buffers do not match its values (one per "
                                       "value, in order); the plan file is damaged: recompile it");
  if (plan.outputValue < 0 || plan.outputValue >= values)
    return Status::error(displayName + ": the plan's output value is not defined; the plan "
                                       "file is damaged: recompile it");
  return plan;
}

StatusOr<Plan> readPlan(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return Status::error(path + ": cannot open the plan file; create one with `ktc compile "
                                "--gguf-path MODEL --optimize-config-path RULES.yaml -o " +
                         path + "`");
  std::stringstream text;
  text << in.rdbuf();
  StatusOr<Plan> plan = planFromJson(text.str(), path);
  if (plan)
    plan->sourcePath = path;
  return plan;
}

namespace {
std::vector<ModelFile> modelFiles(const gguf::GgufModel &model) {
  std::vector<ModelFile> files;
  if (const gguf::ModelView *view = model.view())
    for (const auto &[path, size] : view->files)
      files.push_back({path, size});
  for (const auto &file : model.files())
    files.push_back({file->path(), file->fileSize()});
  return files;
}
} // namespace

StatusOr<std::string> modelFingerprint(const gguf::GgufModel &model) {
  if (const gguf::ModelView *view = model.view())
    return view->fingerprint;
  XXH3_state_t *state = XXH3_createState();
  if (!state)
    return Status::error("out of memory while fingerprinting the model");
  XXH3_128bits_reset(state);
  for (const auto &file : model.files()) {
    uint64_t size = file->fileSize();
    XXH3_128bits_update(state, &size, sizeof size);
    // The header: metadata and tensor table, everything before the data.
    std::ifstream in(file->path(), std::ios::binary);
    std::vector<char> header(static_cast<size_t>(file->dataOffset()));
    if (!in.read(header.data(), static_cast<std::streamsize>(header.size()))) {
      XXH3_freeState(state);
      return Status::error(file->path() + ": cannot read the file to fingerprint it");
    }
    XXH3_128bits_update(state, header.data(), header.size());
    // And evenly spaced samples of the tensor data, so that other weights
    // under the same header (another seed, a re-upload) change it too,
    // without reading hundreds of gigabytes.
    uint64_t dataBytes = size > file->dataOffset() ? size - file->dataOffset() : 0;
    std::vector<char> sample(kFingerprintSampleBytes);
    for (uint64_t i = 0; i < kFingerprintSamples && dataBytes > 0; ++i) {
      uint64_t length = std::min<uint64_t>(kFingerprintSampleBytes, dataBytes);
      uint64_t offset = file->dataOffset() + (dataBytes - length) * i / (kFingerprintSamples - 1);
      in.seekg(static_cast<std::streamoff>(offset));
      if (!in.read(sample.data(), static_cast<std::streamsize>(length))) {
        XXH3_freeState(state);
        return Status::error(file->path() + ": cannot read the file to fingerprint it");
      }
      XXH3_128bits_update(state, sample.data(), length);
    }
  }
  XXH128_hash_t hash = XXH3_128bits_digest(state);
  XXH3_freeState(state);
  char text[33];
  std::snprintf(text, sizeof text, "%016llx%016llx", static_cast<unsigned long long>(hash.high64),
                static_cast<unsigned long long>(hash.low64));
  return std::string(text);
}

ModelSource describeModel(const gguf::GgufModel &model, const std::string &path) {
  ModelSource source;
  source.path = path;
  source.architecture = model.architecture();
  if (const gguf::Value *name = model.find("general.name"); name && name->type == gguf::ValueType::String)
    source.name = name->s;
  source.files = modelFiles(model);
  source.tensorBytes = model.totalTensorBytes();
  return source;
}

Status checkModelMatches(const Plan &plan, const gguf::GgufModel &model) {
  StatusOr<std::string> fingerprint = modelFingerprint(model);
  if (!fingerprint)
    return fingerprint.status();
  if (*fingerprint == plan.model.fingerprint)
    return Status::success();
  std::string what = "its files differ";
  const std::vector<ModelFile> files = modelFiles(model);
  if (files.size() != plan.model.files.size())
    what = "it has " + std::to_string(files.size()) + " files, the plan's model had " +
           std::to_string(plan.model.files.size());
  else
    for (size_t i = 0; i < plan.model.files.size(); ++i)
      if (files[i].size != plan.model.files[i].size) {
        what = files[i].path + " is " + std::to_string(files[i].size) +
               " bytes, the plan's was " + std::to_string(plan.model.files[i].size);
        break;
      }
  return Status::error("the model is not the one the plan was compiled for (" + what +
                       "); recompile the plan with `ktc compile` for this model");
}

bool usesGpu(const Plan &plan) {
  for (const Op &op : plan.ops)
    for (const std::string *device : {&op.prefillDevice, &op.decodeDevice, &op.outDevice})
      if (device->rfind("cuda:", 0) == 0)
        return true;
  return false;
}

} // namespace kt::plan
