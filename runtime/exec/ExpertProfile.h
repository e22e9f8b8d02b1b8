// A routing profile on disk: how often each MoE layer chose each of its
// experts (ktrun --save-expert-profile), from which a later run fills the
// GPU expert cache at load (--expert-profile) instead of after its first
// prefill.
#pragma once

#include "runtime/exec/Executor.h"
#include "runtime/support/Status.h"

#include <string>
#include <vector>

namespace kt::exec {

Status writeExpertProfile(const std::string &path, const std::vector<RoutingStats> &layers);
StatusOr<std::vector<RoutingStats>> readExpertProfile(const std::string &path);

} // namespace kt::exec
