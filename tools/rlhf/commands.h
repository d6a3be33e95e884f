// The subcommands that live in their own files (tools/rlhf/cmd_*.cpp); main.cpp registers them.
#pragma once
#include <CLI/CLI.hpp>

namespace rlhf::cli {

void add_serve(CLI::App& app);  // cmd_serve.cpp

}  // namespace rlhf::cli
