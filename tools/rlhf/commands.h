// The subcommands that live in their own files (tools/rlhf/cmd_*.cpp); main.cpp registers them.
#pragma once
#include <CLI/CLI.hpp>

namespace rlhf::cli {

// rlhf cot, rlhf pal, rlhf sandbox run (cmd_reason.cpp)
void add_reason_commands(CLI::App& app);

}  // namespace rlhf::cli
