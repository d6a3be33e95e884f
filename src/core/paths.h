// The data folder and paths into it. Configs and flags name files in the data folder as
// "data:stories260K/stories260K.gguf" or "${RLHF_DATA}/stories260K/stories260K.gguf"; both
// resolve the folder the way the tests do: $RLHF_DATA, else the folder this build was
// configured with (the source tree's ../shared/data).
#pragma once
#include <filesystem>
#include <string>

namespace rlhf {

std::filesystem::path data_dir();

// Expands a leading "data:" or "${RLHF_DATA}" (other paths come back unchanged). An expanded
// path that does not exist is an Error saying where the data folder was looked for and how
// to get the files (scripts/get_data.sh, or RLHF_DATA).
std::string expand_data_path(const std::string& path);

}  // namespace rlhf
