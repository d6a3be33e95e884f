// rlhf tictactoe: the tic-tac-toe example (examples/tictactoe, src/rl/tictactoe_train.h).
// PPO against random and perfect opponents; prints before/after win/draw/loss and how many
// games it took to stop losing to perfect play.
#include <iostream>
#include <memory>

#include "commands.h"
#include "core/io.h"
#include "core/utf8.h"
#include "rl/tictactoe_train.h"
#include "train/config_fields.h"

namespace rlhf::cli {

void add_tictactoe(CLI::App& app) {
  auto cfg = std::make_shared<TicTacToeConfig>();
  auto config_path = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand(
      "tictactoe", "Example: learn tic-tac-toe with PPO; win/draw/loss against random and perfect play, before and after");
  add_config_options(*cmd, *cfg, *config_path);
  cmd->add_option("--out,-o", *out, "JSON file with the config, both evaluations, the training curve");
  cmd->callback([cfg, out] {
    // The network is tiny: handing its products to other threads costs more than they take, and
    // one thread gives the same numbers on every machine.
    torch::set_num_threads(1);
    const auto results = train_tictactoe(*cfg, &std::cerr);
    if (!out->empty()) write_file_atomic(*out, dump_json(results, 2) + "\n");
    std::cout << tictactoe_markdown(results);
  });
}

}  // namespace rlhf::cli
