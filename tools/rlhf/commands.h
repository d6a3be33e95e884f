// The subcommands that live in their own files (tools/rlhf/cmd_*.cpp); main.cpp registers them.
#pragma once
#include <CLI/CLI.hpp>

namespace rlhf::cli {

}  // namespace rlhf::cli
