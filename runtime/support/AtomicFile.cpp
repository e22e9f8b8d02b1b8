#include "runtime/support/AtomicFile.h"

#include <filesystem>
#include <fstream>
#include <unistd.h>

namespace kt {

Status writeFileAtomically(const std::string &path, const std::string &contents,
                           const std::string &what) {
  const std::string temporary = path + ".tmp-" + std::to_string(getpid());
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out << contents;
    out.flush();
    if (!out) {
      std::error_code ignored;
      std::filesystem::remove(temporary, ignored);
      return Status::error(path + ": cannot write " + what + " (disk full or no permission?)");
    }
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::filesystem::remove(temporary, error);
    return Status::error(path + ": cannot write " + what + ": " + error.message());
  }
  return Status::success();
}

} // namespace kt
