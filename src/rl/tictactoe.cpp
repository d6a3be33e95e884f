#include "rl/tictactoe.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include "core/error.h"

namespace rlhf::tictactoe {

namespace {

constexpr int kLines[8][3] = {{0, 1, 2}, {3, 4, 5}, {6, 7, 8}, {0, 3, 6}, {1, 4, 7}, {2, 5, 8}, {0, 4, 8}, {2, 4, 6}};
constexpr int32_t kPositions = 19683;  // 3^9
constexpr int8_t kUnreachable = 2;     // not a value: the position never arises in a game

// Negamax over the whole game from `b`, filling `table` (indexed by key) for every position reached.
int8_t solve(Board& b, std::vector<int8_t>& table) {
  int8_t& v = table[b.key()];
  if (v != kUnreachable) return v;
  if (b.winner() != kEmpty) return v = -1;  // the player who just moved has won
  const auto moves = b.legal_moves();
  if (moves.empty()) return v = 0;
  int8_t best = -1;
  for (int m : moves) {
    Board child = b;
    child.play(m);
    best = std::max<int8_t>(best, static_cast<int8_t>(-solve(child, table)));
  }
  return v = best;
}

// The value of every position reachable from the empty board (5,478 of the 3^9 keys), solved
// on first use: the whole game is a few hundred thousand nodes, well under a second.
const std::vector<int8_t>& value_table() {
  static const std::vector<int8_t> table = [] {
    std::vector<int8_t> t(kPositions, kUnreachable);
    Board empty;
    solve(empty, t);
    return t;
  }();
  return table;
}

void count_end(const Board& b, Mark side, double p, Outcomes& out) {
  ++out.games;
  const Mark w = b.winner();
  if (w == side) ++out.wins, out.p_win += p;
  else if (w == kEmpty) ++out.draws, out.p_draw += p;
  else ++out.losses, out.p_loss += p;
}

// Every game from `b` with `policy` moving for `side` and the opponent choosing each of
// `choices(b)` with equal probability; `p` is the probability of reaching `b`.
void enumerate(const Board& b, Mark side, const Policy& policy,
               const std::function<std::vector<int>(const Board&)>& choices, double p, Outcomes& out) {
  if (b.over()) return count_end(b, side, p, out);
  if (b.to_move() == side) {
    const int cell = policy(b);
    check(b.legal(cell), "tic-tac-toe: the policy chose cell " + std::to_string(cell) + ", not a legal move in " + b.str());
    Board next = b;
    next.play(cell);
    return enumerate(next, side, policy, choices, p, out);
  }
  const auto moves = choices(b);
  for (int m : moves) {
    Board next = b;
    next.play(m);
    enumerate(next, side, policy, choices, p / static_cast<double>(moves.size()), out);
  }
}

Outcomes enumerate_from_start(const Policy& policy, Mark side,
                              const std::function<std::vector<int>(const Board&)>& choices) {
  check(side == kX || side == kO, "tic-tac-toe: the agent plays X or O");
  Outcomes out;
  enumerate(Board{}, side, policy, choices, 1.0, out);
  return out;
}

}  // namespace

const char* mark_name(Mark p) { return p == kX ? "X" : p == kO ? "O" : "-"; }

Board Board::parse(const std::string& cells) {
  check(cells.size() == 9, "tic-tac-toe board '" + cells + "': expected 9 cells (X, O or .), got " +
                               std::to_string(cells.size()));
  Board b;
  int x = 0, o = 0;
  for (int i = 0; i < 9; ++i) {
    const char c = cells[i];
    check(c == 'X' || c == 'O' || c == '.' || c == '-',
          "tic-tac-toe board '" + cells + "': cell " + std::to_string(i) + " is '" + std::string(1, c) +
              "', expected X, O or .");
    b.cells_[i] = c == 'X' ? kX : c == 'O' ? kO : kEmpty;
    x += c == 'X';
    o += c == 'O';
  }
  check(x == o || x == o + 1, "tic-tac-toe board '" + cells + "': X moves first and the players alternate, so X has as "
                                  "many marks as O or one more (X " + std::to_string(x) + ", O " + std::to_string(o) + ")");
  check(value_table()[b.key()] != kUnreachable,
        "tic-tac-toe board '" + cells + "': no game reaches it (play stops at the first three in a row)");
  return b;
}

Mark Board::to_move() const {
  int x = 0, o = 0;
  for (int8_t c : cells_) x += c == kX, o += c == kO;
  return x == o ? kX : kO;
}

Mark Board::winner() const {
  for (const auto& l : kLines)
    if (cells_[l[0]] != kEmpty && cells_[l[0]] == cells_[l[1]] && cells_[l[1]] == cells_[l[2]])
      return static_cast<Mark>(cells_[l[0]]);
  return kEmpty;
}

bool Board::over() const {
  return winner() != kEmpty || std::none_of(cells_.begin(), cells_.end(), [](int8_t c) { return c == kEmpty; });
}

bool Board::legal(int cell) const { return cell >= 0 && cell < 9 && cells_[cell] == kEmpty && !over(); }

std::vector<int> Board::legal_moves() const {
  std::vector<int> out;
  if (winner() != kEmpty) return out;
  for (int i = 0; i < 9; ++i)
    if (cells_[i] == kEmpty) out.push_back(i);
  return out;
}

void Board::play(int cell) {
  check(cell >= 0 && cell < 9, "tic-tac-toe: cell " + std::to_string(cell) + " is off the board (0..8)");
  check(!over(), "tic-tac-toe: the game " + str() + " is over, no more moves");
  check(cells_[cell] == kEmpty, "tic-tac-toe: cell " + std::to_string(cell) + " of " + str() + " is taken");
  cells_[cell] = to_move();
}

int32_t Board::key() const {
  int32_t k = 0;
  for (int i = 8; i >= 0; --i) k = 3 * k + cells_[i];
  return k;
}

std::string Board::str() const {
  std::string s;
  for (int8_t c : cells_) s += c == kX ? 'X' : c == kO ? 'O' : '.';
  return s;
}

const std::vector<Board>& positions_to_play() {
  static const std::vector<Board> positions = [] {
    std::vector<Board> out;
    for (int32_t key = 0; key < kPositions; ++key) {
      if (value_table()[key] == kUnreachable) continue;
      std::string cells(9, '.');
      for (int32_t i = 0, k = key; i < 9; ++i, k /= 3) cells[i] = ".XO"[k % 3];
      Board b = Board::parse(cells);
      if (!b.over()) out.push_back(b);
    }
    return out;
  }();
  return positions;
}

Board Board::transformed(int symmetry) const {
  Board out;
  for (int c = 0; c < 9; ++c) out.cells_[symmetric_cell(symmetry, c)] = cells_[c];
  return out;
}

int symmetric_cell(int symmetry, int cell) {
  check(symmetry >= 0 && symmetry < 8 && cell >= 0 && cell < 9,
        "tic-tac-toe: symmetry " + std::to_string(symmetry) + " (0..7) of cell " + std::to_string(cell) + " (0..8)");
  int r = cell / 3, c = cell % 3;
  if (symmetry >= 4) c = 2 - c;  // mirror left-right
  for (int k = 0; k < symmetry % 4; ++k) std::tie(r, c) = std::pair(c, 2 - r);  // a quarter turn clockwise
  return 3 * r + c;
}

int inverse_symmetric_cell(int symmetry, int cell) {
  for (int c = 0; c < 9; ++c)
    if (symmetric_cell(symmetry, c) == cell) return c;
  throw Error("tic-tac-toe: cell " + std::to_string(cell) + " is off the board (0..8)");
}

int value(const Board& b) {
  const int8_t v = value_table()[b.key()];
  check(v != kUnreachable, "tic-tac-toe board '" + b.str() + "': no game reaches it");
  return v;
}

std::vector<int> perfect_moves(const Board& b) {
  const int best = value(b);
  std::vector<int> out;
  for (int m : b.legal_moves()) {
    Board child = b;
    child.play(m);
    if (-value(child) == best) out.push_back(m);
  }
  return out;
}

// mt19937_64's output is fixed by the standard (a distribution's is not): the same games everywhere.
int random_move(const Board& b, std::mt19937_64& rng) {
  const auto moves = b.legal_moves();
  check(!moves.empty(), "tic-tac-toe: no move in the finished game " + b.str());
  return moves[rng() % moves.size()];
}

int perfect_move(const Board& b, std::mt19937_64& rng) {
  const auto moves = perfect_moves(b);
  check(!moves.empty(), "tic-tac-toe: no move in the finished game " + b.str());
  return moves[rng() % moves.size()];
}

Opponent perfect_with_blunders(double blunder_rate) {
  check(blunder_rate >= 0 && blunder_rate <= 1, "tic-tac-toe: a blunder rate is a probability, got " +
                                                     std::to_string(blunder_rate));
  return [blunder_rate](const Board& b, std::mt19937_64& rng) {
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;  // uniform in [0, 1), 53 bits
    return u < blunder_rate ? random_move(b, rng) : perfect_move(b, rng);
  };
}

torch::Tensor observe(const Board& b) {
  auto obs = torch::zeros({27}, torch::kFloat32);
  auto o = obs.accessor<float, 1>();
  const Mark me = b.to_move();
  for (int i = 0; i < 9; ++i) {
    const Mark c = b.at(i);
    o[c == kEmpty ? 18 + i : c == me ? i : 9 + i] = 1.0f;
  }
  return obs;
}

torch::Tensor legal_mask(const Board& b) {
  auto legal = torch::zeros({9}, torch::kBool);
  auto l = legal.accessor<bool, 1>();
  for (int m : b.legal_moves()) l[m] = true;
  return legal;
}

TicTacToeEnv::TicTacToeEnv(Mark agent, Opponent opponent, uint64_t seed, bool random_orientation)
    : agent_(agent), opponent_(std::move(opponent)), rng_(seed), random_orientation_(random_orientation) {
  check(agent == kX || agent == kO, "TicTacToeEnv: the agent plays X or O");
  check(static_cast<bool>(opponent_), "TicTacToeEnv: no opponent");
}

void TicTacToeEnv::reset() {
  board_ = Board{};
  done_ = false;
  symmetry_ = random_orientation_ ? static_cast<int>(rng_() % 8) : 0;
  if (agent_ == kO) board_.play(opponent_(board_, rng_));
}

double TicTacToeEnv::result() const {
  const Mark w = board_.winner();
  return w == kEmpty ? 0.0 : w == agent_ ? 1.0 : -1.0;
}

StepResult TicTacToeEnv::step(int64_t action) {
  check(!done_, "TicTacToeEnv: step after the game ended (reset first)");
  const Board seen = board_.transformed(symmetry_);
  check(action >= 0 && action < 9 && seen.legal(static_cast<int>(action)),
        "TicTacToeEnv: cell " + std::to_string(action) + " is not a legal move in " + seen.str());
  board_.play(inverse_symmetric_cell(symmetry_, static_cast<int>(action)));
  if (!board_.over()) board_.play(opponent_(board_, rng_));
  done_ = board_.over();
  return {done_ ? result() : 0.0, done_};
}

Outcomes vs_random(const Policy& policy, Mark side) {
  return enumerate_from_start(policy, side, [](const Board& b) { return b.legal_moves(); });
}

Outcomes vs_perfect(const Policy& policy, Mark side) {
  return enumerate_from_start(policy, side, perfect_moves);
}

}  // namespace rlhf::tictactoe
