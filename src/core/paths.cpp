#include "core/paths.h"

#include <cstdlib>
#include <optional>

#include "core/error.h"

namespace rlhf {

namespace {

const char* rlhf_data_env() {
  const char* d = std::getenv("RLHF_DATA");
  return d && *d ? d : nullptr;
}

// The part after a data-folder prefix, or nothing when `path` has none.
std::optional<std::string> after_data_prefix(const std::string& path) {
  for (const std::string prefix : {"data:", "${RLHF_DATA}", "$RLHF_DATA"})
    if (path.rfind(prefix, 0) == 0) {
      std::string rest = path.substr(prefix.size());
      while (!rest.empty() && rest.front() == '/') rest.erase(0, 1);
      return rest;
    }
  return std::nullopt;
}

}  // namespace

std::filesystem::path data_dir() {
  if (const char* d = rlhf_data_env()) return d;
  return RLHF_CONFIGURED_DATA_DIR;
}

std::string expand_data_path(const std::string& path) {
  const auto rest = after_data_prefix(path);
  if (!rest) return path;
  const auto dir = data_dir();
  const auto full = dir / *rest;
  check(std::filesystem::exists(full),
        full.string() + ": no such file in the data folder " + dir.string() +
            (rlhf_data_env() ? " (from RLHF_DATA)" : " (RLHF_DATA is not set; this is the build's default)") +
            ". Fetch the default files with `scripts/get_data.sh DIR` and set RLHF_DATA=DIR, or point RLHF_DATA at a "
            "folder that has them (README.md, section Data, says where each file is published)");
  return full.string();
}

}  // namespace rlhf
