// Writing a whole file so that readers see the old contents or the new ones,
// never a half-written file: a temporary next to it, then a rename.
#pragma once

#include "runtime/support/Status.h"

#include <string>

namespace kt {

// `what` names the contents in messages ("the plan").
Status writeFileAtomically(const std::string &path, const std::string &contents,
                           const std::string &what);

} // namespace kt
