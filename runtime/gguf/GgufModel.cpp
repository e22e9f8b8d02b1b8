// Opening a model given as one file, as any part of a split model
// (llama.cpp's gguf-split naming "<prefix>-00001-of-00003.gguf" with the keys
// split.no (0-based), split.count and split.tensors.count), or as a directory
// that holds exactly one such model.
#include "runtime/gguf/GgufFile.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <functional>
#include <map>
#include <system_error>
#include <unordered_set>

namespace kt::gguf {
namespace fs = std::filesystem;

namespace {

constexpr std::string_view kExtension = ".gguf";
constexpr int kMaxSearchDepth = 3; // directory levels below a model directory

std::string quoted(const std::string &text) { return "'" + text + "'"; }

bool endsWith(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

// A file name of the form "<prefix>-<part>-of-<count>.gguf".
struct SplitName {
  std::string prefix;
  int part = 0;
  int count = 0;
  std::string partDigits;  // as written, to rebuild sibling names with the same width
  std::string countDigits;

  std::string partFileName(int k) const {
    std::string digits = std::to_string(k);
    if (digits.size() < partDigits.size())
      digits.insert(0, partDigits.size() - digits.size(), '0');
    return prefix + "-" + digits + "-of-" + countDigits + std::string(kExtension);
  }
};

bool parseNumber(std::string_view digits, int &out) {
  if (digits.empty() || digits.size() > 9)
    return false;
  out = 0;
  for (char c : digits) {
    if (!std::isdigit(static_cast<unsigned char>(c)))
      return false;
    out = out * 10 + (c - '0');
  }
  return true;
}

std::optional<SplitName> parseSplitName(const std::string &fileName) {
  if (!endsWith(fileName, kExtension))
    return std::nullopt;
  std::string_view stem(fileName.data(), fileName.size() - kExtension.size());
  size_t of = stem.rfind("-of-");
  if (of == std::string_view::npos)
    return std::nullopt;
  std::string_view countDigits = stem.substr(of + 4);
  size_t dash = stem.rfind('-', of == 0 ? 0 : of - 1);
  if (of == 0 || dash == std::string_view::npos || dash == 0)
    return std::nullopt;
  std::string_view partDigits = stem.substr(dash + 1, of - dash - 1);
  // gguf-split writes five digits; accept at least that many.
  SplitName name;
  if (partDigits.size() < 5 || countDigits.size() < 5 || !parseNumber(partDigits, name.part) ||
      !parseNumber(countDigits, name.count) || name.part < 1 || name.count < 1 ||
      name.part > name.count)
    return std::nullopt;
  name.prefix = std::string(stem.substr(0, dash));
  name.partDigits = std::string(partDigits);
  name.countDigits = std::string(countDigits);
  return name;
}

std::optional<uint64_t> unsignedKey(const GgufFile &file, std::string_view key) {
  const Value *value = file.find(key);
  if (!value || !value->isInteger())
    return std::nullopt;
  return value->asUInt();
}

std::string directoryNote(const std::string &path) {
  if (!endsWith(path, kExtension) && !endsWith(path, std::string(kExtension) + "/"))
    return "";
  return quoted(path) + " is a directory, not a GGUF file, although its name ends in "
                        ".gguf. ";
}

// Opens every part of the split model named by `name` in `directory`.
StatusOr<std::vector<std::unique_ptr<GgufFile>>> openSplitParts(const fs::path &directory,
                                                                const SplitName &name) {
  std::vector<std::string> missing;
  std::vector<fs::path> parts;
  for (int k = 1; k <= name.count; ++k) {
    fs::path part = directory / name.partFileName(k);
    std::error_code error;
    if (!fs::is_regular_file(part, error))
      missing.push_back(name.partFileName(k));
    parts.push_back(part);
  }
  if (!missing.empty()) {
    std::string list;
    for (const std::string &file : missing)
      list += (list.empty() ? "" : ", ") + quoted(file);
    return Status::error("The split model " + quoted(name.prefix) + " has " +
                         std::to_string(name.count) + " parts, but " +
                         std::to_string(missing.size()) + " of them " +
                         (missing.size() == 1 ? "is" : "are") + " missing from " +
                         quoted(directory.string()) + ": " + list +
                         ". Download the missing part" + (missing.size() == 1 ? "" : "s") +
                         " into the same directory as the others.");
  }

  std::vector<std::unique_ptr<GgufFile>> files;
  for (int k = 1; k <= name.count; ++k) {
    StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::open(parts[k - 1].string());
    if (!file.ok())
      return file.status();
    const GgufFile &part = **file;
    std::optional<uint64_t> splitNo = unsignedKey(part, "split.no");
    std::optional<uint64_t> splitCount = unsignedKey(part, "split.count");
    if (name.count > 1 && (!splitNo || !splitCount))
      return Status::error("The GGUF file " + quoted(part.path()) + " is named as part " +
                           std::to_string(k) + " of " + std::to_string(name.count) +
                           " of a split model, but it lacks the integer keys split.no and "
                           "split.count that gguf-split writes. Split the model again with "
                           "llama.cpp's gguf-split, or download all of its parts again.");
    if (splitCount && *splitCount != static_cast<uint64_t>(name.count))
      return Status::error("The GGUF file " + quoted(part.path()) + " says split.count = " +
                           std::to_string(*splitCount) + ", but its name says the model has " +
                           std::to_string(name.count) +
                           " parts. The parts come from different splits of the model; "
                           "download all parts of one release again.");
    if (splitNo && *splitNo != static_cast<uint64_t>(k - 1))
      return Status::error("The GGUF file " + quoted(part.path()) + " says split.no = " +
                           std::to_string(*splitNo) + " (part " + std::to_string(*splitNo + 1) +
                           "), but its name says it is part " + std::to_string(k) + " of " +
                           std::to_string(name.count) +
                           ". Rename the parts to match their split.no, or download them "
                           "again.");
    files.push_back(std::move(*file));
  }
  return files;
}

StatusOr<std::unique_ptr<GgufModel>> openFilePath(const fs::path &path,
                                                  const std::function<StatusOr<
                                                      std::unique_ptr<GgufModel>>(
                                                      std::vector<std::unique_ptr<GgufFile>>)>
                                                      &assemble) {
  std::optional<SplitName> split = parseSplitName(path.filename().string());
  if (split && split->count > 1) {
    StatusOr<std::vector<std::unique_ptr<GgufFile>>> parts =
        openSplitParts(path.parent_path().empty() ? fs::path(".") : path.parent_path(), *split);
    if (!parts.ok())
      return parts.status();
    return assemble(std::move(*parts));
  }
  StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::open(path.string());
  if (!file.ok())
    return file.status();
  std::optional<uint64_t> splitCount = unsignedKey(**file, "split.count");
  if (splitCount && *splitCount > 1) {
    std::optional<uint64_t> splitNo = unsignedKey(**file, "split.no");
    return Status::error(
        "The GGUF file " + quoted(path.string()) + " is part " +
        (splitNo ? std::to_string(*splitNo + 1) : std::string("?")) + " of " +
        std::to_string(*splitCount) +
        " of a split model, but its name does not follow the '<prefix>-00001-of-" +
        std::string(5 - std::min<size_t>(5, std::to_string(*splitCount).size()), '0') +
        std::to_string(*splitCount) +
        ".gguf' naming, so the other parts cannot be found. Rename the parts to that "
        "pattern (as gguf-split names them) and open any one of them.");
  }
  std::vector<std::unique_ptr<GgufFile>> files;
  files.push_back(std::move(*file));
  return assemble(std::move(files));
}

// One model found in a directory: a single file or the parts of a split.
struct FoundModel {
  fs::path directory;
  std::optional<SplitName> split; // set for split models (count > 1)
  fs::path file;                  // the file, or the first part found
  int partsFound = 0;

  std::string describe(const fs::path &root) const {
    fs::path relative = (split ? directory / split->partFileName(1) : file).lexically_relative(root);
    if (!split)
      return quoted(relative.string());
    return quoted(relative.string()) + " (split into " + std::to_string(split->count) +
           " parts, " + std::to_string(partsFound) + " present)";
  }
};

} // namespace

StatusOr<std::unique_ptr<GgufModel>>
GgufModel::fromFiles(std::vector<std::unique_ptr<GgufFile>> files) {
  std::unique_ptr<GgufModel> model(new GgufModel());
  size_t total = 0;
  for (const std::unique_ptr<GgufFile> &file : files)
    total += file->tensors().size();
  model->tensors_.reserve(total);
  for (size_t index = 0; index < files.size(); ++index)
    for (TensorInfo tensor : files[index]->tensors()) {
      tensor.fileIndex = static_cast<int>(index);
      model->tensors_.push_back(std::move(tensor));
    }

  if (files.size() > 1) {
    const GgufFile &first = *files.front();
    std::optional<uint64_t> expected = unsignedKey(first, "split.tensors.count");
    if (!expected)
      return Status::error("The first part " + quoted(first.path()) +
                           " of the split model lacks the integer key split.tensors.count "
                           "that gguf-split writes. Split the model again with llama.cpp's "
                           "gguf-split, or download its parts again.");
    if (*expected != total)
      return Status::error("The split model starting at " + quoted(first.path()) + " says it has " +
                           std::to_string(*expected) + " tensors (split.tensors.count), but its " +
                           std::to_string(files.size()) + " parts hold " +
                           std::to_string(total) +
                           ". The parts come from different splits or are damaged; download "
                           "all parts of one release again.");
  }

  for (size_t index = 0; index < model->tensors_.size(); ++index) {
    const TensorInfo &tensor = model->tensors_[index];
    auto [where, inserted] = model->tensorIndex_.emplace(tensor.name, index);
    if (!inserted)
      return Status::error(
          "The tensor " + quoted(tensor.name) + " appears in both " +
          quoted(files[model->tensors_[where->second].fileIndex]->path()) + " and " +
          quoted(files[tensor.fileIndex]->path()) +
          ". The parts come from different models or splits; download all parts of one "
          "release again.");
  }
  model->files_ = std::move(files);
  return model;
}

StatusOr<std::unique_ptr<GgufModel>> GgufModel::open(const std::string &path) {
  auto assemble = [](std::vector<std::unique_ptr<GgufFile>> files) {
    return fromFiles(std::move(files));
  };
  std::error_code error;
  fs::file_status status = fs::status(path, error);
  if (error && error != std::errc::no_such_file_or_directory)
    return Status::error("Cannot access the model path " + quoted(path) + ": " +
                         error.message() + ". Check the path and its permissions.");
  if (!fs::exists(status)) {
    fs::path missing(path);
    fs::path parent = missing.parent_path().empty() ? fs::path(".") : missing.parent_path();
    std::error_code parentError;
    bool parentExists = fs::is_directory(parent, parentError);
    // A missing part of a split model: report every missing part at once.
    std::optional<SplitName> missingSplit = parseSplitName(missing.filename().string());
    if (missingSplit && missingSplit->count > 1 && parentExists)
      return openFilePath(missing, assemble);
    // "model.gguf" may have been published as "model-00001-of-0000N.gguf".
    std::string hint;
    if (endsWith(path, kExtension) && parentExists) {
      std::string stem = missing.stem().string();
      for (fs::directory_iterator it(parent, parentError), end; !parentError && it != end;
           it.increment(parentError)) {
        std::optional<SplitName> split = parseSplitName(it->path().filename().string());
        if (split && split->prefix == stem && split->part == 1) {
          hint = " A split model with that prefix exists: pass " +
                 quoted((parent / it->path().filename()).string()) + ".";
          break;
        }
      }
    }
    return Status::error("The model path " + quoted(path) +
                         " does not exist. Pass a .gguf file, or a directory that holds one "
                         "model's .gguf file(s)." +
                         hint);
  }

  if (!fs::is_directory(status))
    return openFilePath(fs::path(path), assemble);

  // A directory: gather its .gguf files (subdirectories too, as --gguf-path
  // loaders do) and group the parts of split models.
  fs::path root(path);
  std::map<std::string, FoundModel> models;
  for (fs::recursive_directory_iterator
           it(root, fs::directory_options::skip_permission_denied, error),
       end;
       !error && it != end; it.increment(error)) {
    // Deep enough for "model/quant/part.gguf" layouts, bounded in case the
    // path is a large tree such as a home directory.
    if (it.depth() >= kMaxSearchDepth)
      it.disable_recursion_pending();
    std::string fileName = it->path().filename().string();
    std::error_code fileError;
    if (!endsWith(fileName, kExtension) || !fs::is_regular_file(it->path(), fileError))
      continue;
    std::optional<SplitName> split = parseSplitName(fileName);
    if (split && split->count > 1) {
      std::string key = (it->path().parent_path() / split->partFileName(1)).string() + "#" +
                        split->countDigits;
      FoundModel &model = models[key];
      model.file = it->path(); // any part finds the others
      model.directory = it->path().parent_path();
      model.split = split;
      ++model.partsFound;
    } else {
      FoundModel &model = models[it->path().string()];
      model.directory = it->path().parent_path();
      model.file = it->path();
      model.partsFound = 1;
    }
  }
  if (error)
    return Status::error("Cannot list the model directory " + quoted(path) + ": " +
                         error.message() + ".");

  if (models.empty())
    return Status::error(directoryNote(path) + "The directory " + quoted(path) +
                         " holds no .gguf files. Pass the directory that holds the model's "
                         ".gguf file(s), or the .gguf file itself.");
  if (models.size() > 1) {
    std::string list;
    for (const auto &[key, model] : models)
      list += "\n  " + model.describe(root);
    return Status::error(directoryNote(path) + "The directory " + quoted(path) + " holds " +
                         std::to_string(models.size()) +
                         " models, so it is unclear which one to load:" + list +
                         "\nPass one .gguf file (any part of a split model), or a directory "
                         "that holds only one model.");
  }
  return openFilePath(models.begin()->second.file, assemble);
}

StatusOr<std::unique_ptr<GgufModel>> GgufModel::fromView(std::string path,
                                                          std::vector<KeyValue> metadata,
                                                          std::vector<TensorInfo> tensors,
                                                          ModelView view) {
  std::unique_ptr<GgufModel> model(new GgufModel());
  model->viewPath_ = std::move(path);
  model->viewMetadata_ = std::move(metadata);
  model->tensors_ = std::move(tensors);
  model->view_ = std::move(view);
  for (size_t index = 0; index < model->tensors_.size(); ++index)
    if (!model->tensorIndex_.emplace(model->tensors_[index].name, index).second)
      return Status::error(model->viewPath_ + ": two tensors map to " +
                           "'" + model->tensors_[index].name + "'" + "; the model lists it twice.");
  return model;
}

const std::string &GgufModel::sourcePath() const {
  return files_.empty() ? viewPath_ : files_.front()->path();
}

const std::vector<KeyValue> &GgufModel::metadata() const {
  return files_.empty() ? viewMetadata_ : files_.front()->metadata();
}

const Value *GgufModel::find(std::string_view key) const {
  if (!files_.empty())
    return files_.front()->find(key);
  for (const KeyValue &entry : viewMetadata_)
    if (entry.key == key)
      return &entry.value;
  return nullptr;
}

const TensorInfo *GgufModel::findTensor(std::string_view name) const {
  auto it = tensorIndex_.find(name);
  return it == tensorIndex_.end() ? nullptr : &tensors_[it->second];
}

std::string GgufModel::architecture() const {
  const Value *value = find("general.architecture");
  return value && value->type == ValueType::String ? value->s : std::string();
}

uint64_t GgufModel::totalTensorBytes() const {
  uint64_t total = 0;
  for (const TensorInfo &tensor : tensors_)
    total += tensor.nbytes;
  return total;
}

} // namespace kt::gguf
