// Tic-tac-toe: the board and its rules, perfect play (the game value of every reachable
// position, solved once by minimax), the opponents an agent meets (random, perfect, perfect
// with blunders), the game as an Env for one side, and exact evaluation of a deterministic
// policy against the random and the perfect player: every game the opponent can make is
// enumerated, so the figures are not samples.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "rl/env.h"

namespace rlhf::tictactoe {

// Cell contents and players. X moves first.
enum Mark : int8_t { kEmpty = 0, kX = 1, kO = 2 };
const char* mark_name(Mark p);  // "X", "O", "-"

// Cells are numbered 0..8 row by row: cell = 3 * row + column.
class Board {
 public:
  Board() = default;
  // From 9 characters 'X', 'O' and '.' (or '-'), row by row, e.g. "XX.OO...."; an Error unless
  // the position can arise in a game (X moved first, players alternated, play stopped at a win).
  static Board parse(const std::string& cells);

  Mark at(int cell) const { return static_cast<Mark>(cells_[cell]); }
  Mark to_move() const;          // X when both have moved as often, else O
  Mark winner() const;           // the mark with three in a row, kEmpty if none
  bool over() const;             // a win or a full board
  bool legal(int cell) const;    // on the board, empty, and the game not over
  std::vector<int> legal_moves() const;  // in cell order
  // The player to move marks `cell`; an Error when the move is illegal.
  void play(int cell);
  // A number of its own per position (base 3 over the cells), < 3^9.
  int32_t key() const;
  std::string str() const;  // as parse() reads it
  // The board under one of its 8 symmetries (symmetric_cell): the same position, turned or mirrored.
  Board transformed(int symmetry) const;

 private:
  std::array<int8_t, 9> cells_{};
};

// Every position that arises in a game and is not over (4,520 of them), in key order.
const std::vector<Board>& positions_to_play();

// The 8 symmetries of the board, 0..7: rotations by 0, 90, 180, 270 degrees, then the same
// after a mirror. Where cell `cell` goes under `symmetry`, and back.
int symmetric_cell(int symmetry, int cell);
int inverse_symmetric_cell(int symmetry, int cell);

// The game value for the player to move under perfect play by both: +1 a win, 0 a draw, -1 a
// loss (a finished game: -1 if the previous player won, else 0).
int value(const Board& b);
// The moves a perfect player may choose: every legal move that keeps the value, in cell order.
std::vector<int> perfect_moves(const Board& b);

// An opponent picks a legal move in a position where it is to move, with its own randomness.
using Opponent = std::function<int(const Board&, std::mt19937_64&)>;
int random_move(const Board& b, std::mt19937_64& rng);   // uniform over the legal moves
int perfect_move(const Board& b, std::mt19937_64& rng);  // uniform over perfect_moves
// A perfect player that blunders: each move is random_move with probability blunder_rate, else
// perfect_move (0: perfect, 1: random).
Opponent perfect_with_blunders(double blunder_rate);

// What the agent sees when it is to move: (27) float32, its own marks (cells 0..8), the
// opponent's (9..17) and the empty cells (18..26). Relative to the mover, so one network plays
// both sides.
torch::Tensor observe(const Board& b);
// (9) bool, true on the cells the player to move may take.
torch::Tensor legal_mask(const Board& b);

// The game from one side: the agent plays `agent` (kX or kO) and `opponent` answers each move
// inside step() (and opens the game in reset() when the agent plays O). Reward at the end
// only: +1 win, -1 loss, 0 draw. With random_orientation the agent sees each game under one
// of the board's symmetries, drawn per game (and its actions are mapped back): what it learns
// in one corner it learns in all four, as AlphaGo Zero augmented its positions.
class TicTacToeEnv final : public Env {
 public:
  TicTacToeEnv(Mark agent, Opponent opponent, uint64_t seed, bool random_orientation = false);
  int64_t observation_size() const override { return 27; }
  int64_t num_actions() const override { return 9; }
  void reset() override;
  torch::Tensor observation() const override { return observe(board_.transformed(symmetry_)); }
  torch::Tensor legal_actions() const override { return legal_mask(board_.transformed(symmetry_)); }
  StepResult step(int64_t action) override;
  const Board& board() const { return board_; }  // as played, not as the agent sees it

 private:
  double result() const;  // +1 / -1 / 0 for the agent, the game over
  Board board_;
  Mark agent_;
  Opponent opponent_;
  std::mt19937_64 rng_;
  bool random_orientation_;
  int symmetry_ = 0;  // of this game
  bool done_ = true;
};

// A deterministic policy: the cell it plays where it is to move (a greedy network, a solver).
using Policy = std::function<int(const Board&)>;

// The games a deterministic policy can have against an opponent, all of them enumerated.
struct Outcomes {
  int64_t games = 0;                // distinct games (lines of play)
  int64_t wins = 0, draws = 0, losses = 0;  // games of each result
  double p_win = 0, p_draw = 0, p_loss = 0;  // probability of each result when the opponent draws its choices uniformly
};

// `policy` playing `side` against random_move: exact win/draw/loss probabilities.
Outcomes vs_random(const Policy& policy, Mark side);
// `policy` playing `side` against perfect play, each of its tie-breaks followed: `losses` is
// the number of games a perfect player can beat the policy in (0: it never loses).
Outcomes vs_perfect(const Policy& policy, Mark side);

}  // namespace rlhf::tictactoe
