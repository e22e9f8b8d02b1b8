#include "runtime/exec/ExpertProfile.h"

#include "runtime/support/AtomicFile.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace kt::exec {

using nlohmann::json;

namespace {
constexpr const char *kKind = "ktc-expert-profile";
constexpr int kVersion = 1;
} // namespace

Status writeExpertProfile(const std::string &path, const std::vector<RoutingStats> &layers) {
  json entries = json::array();
  for (const RoutingStats &layer : layers)
    entries.push_back({{"gate", layer.path}, {"selections", layer.selections}});
  const json root = {{"kind", kKind}, {"version", kVersion}, {"layers", entries}};
  return writeFileAtomically(path, root.dump(1) + "\n", "the expert profile");
}

StatusOr<std::vector<RoutingStats>> readExpertProfile(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return Status::error(path + ": cannot read the expert profile (no such file?); write one "
                                "with ktrun --save-expert-profile.");
  std::stringstream text;
  text << in.rdbuf();
  const json root = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  const std::string notProfile = path + ": not an expert profile (";
  const std::string remedy = "); write one with ktrun --save-expert-profile.";
  if (root.is_discarded() || !root.is_object())
    return Status::error(notProfile + "not a JSON object" + remedy);
  if (root.value("kind", std::string()) != kKind)
    return Status::error(notProfile + "its \"kind\" is not \"" + kKind + "\"" + remedy);
  if (!root.contains("version") || !root["version"].is_number_integer() ||
      root["version"].get<int>() != kVersion)
    return Status::error(path +
                         ": an expert profile of another version (this ktrun reads version " +
                         std::to_string(kVersion) + "); save it again with this ktrun.");
  if (!root.contains("layers") || !root["layers"].is_array())
    return Status::error(notProfile + "no \"layers\" array" + remedy);
  std::vector<RoutingStats> layers;
  for (size_t i = 0; i < root["layers"].size(); ++i) {
    const json &entry = root["layers"][i];
    const std::string where = "layers[" + std::to_string(i) + "]";
    if (!entry.is_object() || !entry.contains("gate") || !entry["gate"].is_string() ||
        !entry.contains("selections") || !entry["selections"].is_array())
      return Status::error(notProfile + where +
                           " needs \"gate\" (a module path) and "
                           "\"selections\" (counts)" +
                           remedy);
    RoutingStats layer;
    layer.path = entry["gate"].get<std::string>();
    for (const json &count : entry["selections"]) {
      if (!count.is_number_unsigned() && !(count.is_number_integer() && count.get<int64_t>() >= 0))
        return Status::error(notProfile + where +
                             " has a selection count that is not a "
                             "non-negative integer" +
                             remedy);
      layer.selections.push_back(count.get<uint64_t>());
    }
    layers.push_back(std::move(layer));
  }
  return layers;
}

} // namespace kt::exec
