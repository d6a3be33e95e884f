// The subcommands that live in their own files (tools/rlhf/cmd_*.cpp); main.cpp registers them.
#pragma once
#include <CLI/CLI.hpp>

namespace rlhf::cli {

void add_serve(CLI::App& app);  // cmd_serve.cpp
void add_rag(CLI::App& app);    // cmd_rag.cpp: rlhf rag index|search|ask
void add_react(CLI::App& app);  // cmd_rag.cpp: rlhf react
// rlhf cot, rlhf pal, rlhf sandbox run (cmd_reason.cpp)
void add_reason_commands(CLI::App& app);
void add_cai(CLI::App& app);    // cmd_cai.cpp: rlhf cai revise
void add_rlaif(CLI::App& app);  // cmd_rlaif.cpp: rlhf rlaif label|agreement
void add_redteam(CLI::App& app);  // cmd_redteam.cpp: rlhf redteam eval
void add_lora(CLI::App& app);     // cmd_lora.cpp: rlhf lora merge
void add_tictactoe(CLI::App& app);  // cmd_tictactoe.cpp: the tic-tac-toe example

}  // namespace rlhf::cli
