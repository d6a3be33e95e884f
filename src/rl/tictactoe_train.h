// The tic-tac-toe example (examples/tictactoe): a policy/value network learns the game with PPO
// (env_ppo.h, the language-model trainer's math) from games against the perfect player, half of
// them against one that blunders now and then, playing X in half the games and O in the other
// half; its greedy play is evaluated exactly (tictactoe.h) before and after, and against
// perfect play after every update, which gives the number of training games it took to stop
// losing.
//
// Why this opponent mix: the target is play that never loses, which is what a perfect opponent
// rewards; a random opponent in the mix would reward gambles that beat it often and lose to
// perfect play (the network cannot tell whom it is playing). The blundering games show it the
// positions a perfect player never allows, where it has to take a win.
//
// Results (`rlhf tictactoe --out FILE`):
//   {"config": {field: value}, "before": evaluation, "after": evaluation,
//    "training": {"games", "updates", "seconds", "first_unbeaten_games", "unbeaten_since_games"},
//    "curve": [{"games", "losses_vs_perfect": {"X", "O"}, "mean_return", "entropy",
//               "explained_variance", "approxkl"}]}
// where an evaluation is {"random": {"X": outcomes, "O": outcomes}, "perfect": {...}} and
// outcomes are {"games", "wins", "draws", "losses", "p_win", "p_draw", "p_loss"} (Outcomes).
// first_unbeaten_games: training games played when the greedy policy first had no losing game
// against perfect play on either side; unbeaten_since_games: the games after which it never
// lost again up to the end (null when it still loses at the end). The curve's first entry is
// the untrained network (games 0).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>

#include "rl/env_ppo.h"
#include "rl/tictactoe.h"

namespace rlhf {

struct TicTacToeConfig {
  int64_t games = 32768;
  int64_t seed = 0;
  double perfect_share = 0.5;
  double blunder_rate = 0.3;
  bool random_orientation = true;
  EnvPpoConfig ppo;

  template <class V>
  void visit(V&& v) {
    v("games", games, "Training games (rounded up to whole updates of episodes_per_update)");
    v("seed", seed, "Seed of the network's initialisation, the sampling and the opponents");
    v("perfect_share", perfect_share, "Share of training games against the perfect player");
    v("blunder_rate", blunder_rate,
      "In the other games the perfect player makes a random move with this probability (1: a random player)");
    v("random_orientation", random_orientation,
      "Show each training game to the network under one of the board's 8 symmetries, drawn per game");
    ppo.visit(v);
  }
};

// The network's greedy play (its most likely legal move; ties: the lowest cell) as it is now: a
// policy that looks up the moves of one batched forward pass over every position.
tictactoe::Policy greedy_policy(PolicyValueNet& net);

// Exact outcomes of `policy` against the random and the perfect opponent, as X and as O.
nlohmann::json evaluate_tictactoe(const tictactoe::Policy& policy);

// Trains as the config says and returns the results above; a line every few updates on `log`.
nlohmann::json train_tictactoe(TicTacToeConfig cfg, std::ostream* log = nullptr);

// The results as a markdown table (before and after, per opponent and side) and a line on
// how many games training took to stop losing to perfect play.
std::string tictactoe_markdown(const nlohmann::json& results);

}  // namespace rlhf
