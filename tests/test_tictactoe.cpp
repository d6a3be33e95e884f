// Tic-tac-toe (src/rl/tictactoe.h): the rules, the environment's rewards, perfect play by
// minimax, and the exact evaluation; then PPO on an environment (src/rl/env_ppo.h): the
// rollout's padding and rewards, and an update that moves the policy the right way.
#include <gtest/gtest.h>

#include "core/error.h"
#include "test_util.h"
#include <set>

#include "rl/env_ppo.h"
#include "rl/tictactoe.h"
#include "rl/tictactoe_train.h"
#include "trainers/trainer_util.h"

using namespace rlhf;
using namespace rlhf::tictactoe;

namespace {

Board played(std::initializer_list<int> moves) {
  Board b;
  for (int m : moves) b.play(m);
  return b;
}

// Opponent and policy that take the lowest free cell: predictable, and easy to beat.
int lowest_cell(const Board& b, std::mt19937_64&) { return b.legal_moves().front(); }
int lowest_cell_policy(const Board& b) { return b.legal_moves().front(); }
int perfect_policy(const Board& b) { return perfect_moves(b).front(); }

}  // namespace

TEST(TicTacToe, EveryRowColumnAndDiagonalWins) {
  const int lines[8][3] = {{0, 1, 2}, {3, 4, 5}, {6, 7, 8}, {0, 3, 6}, {1, 4, 7}, {2, 5, 8}, {0, 4, 8}, {2, 4, 6}};
  for (const auto& l : lines) {
    // X takes the line; O answers in cells off it that make no line of their own.
    std::vector<int> others;
    for (int c = 0; c < 9 && others.size() < 2; ++c)
      if (c != l[0] && c != l[1] && c != l[2]) others.push_back(c);
    Board b = played({l[0], others[0], l[1], others[1]});
    EXPECT_EQ(b.winner(), kEmpty);
    EXPECT_FALSE(b.over());
    b.play(l[2]);
    EXPECT_EQ(b.winner(), kX) << b.str();
    EXPECT_TRUE(b.over());
    EXPECT_TRUE(b.legal_moves().empty());
  }
  // O wins too: X 0 3 8, O 1 4 7 (the middle column).
  EXPECT_EQ(played({0, 1, 3, 4, 8, 7}).winner(), kO);
}

TEST(TicTacToe, AFullBoardWithoutALineIsADraw) {
  const Board b = played({0, 1, 2, 4, 3, 5, 7, 6, 8});  // XOX / XOO / OXX
  EXPECT_EQ(b.str(), "XOXXOOOXX");
  EXPECT_EQ(b.winner(), kEmpty);
  EXPECT_TRUE(b.over());
  EXPECT_TRUE(b.legal_moves().empty());
}

TEST(TicTacToe, IllegalMovesAreRejected) {
  Board b = played({4});
  EXPECT_EQ(b.to_move(), kO);
  EXPECT_THROW(b.play(4), Error);   // taken
  EXPECT_THROW(b.play(-1), Error);  // off the board
  EXPECT_THROW(b.play(9), Error);
  EXPECT_EQ(b.str(), "....X....");  // a rejected move changes nothing
  EXPECT_FALSE(b.legal(4));
  EXPECT_TRUE(b.legal(0));
  Board won = played({0, 3, 1, 4, 2});
  EXPECT_FALSE(won.legal(5));
  EXPECT_THROW(won.play(5), Error);  // the game is over

  EXPECT_EQ(Board::parse("XX.OO....").str(), "XX.OO....");
  EXPECT_THROW(Board::parse("XX.OO..."), Error);   // 8 cells
  EXPECT_THROW(Board::parse("XX.OO...Z"), Error);  // not a mark
  EXPECT_THROW(Board::parse("XXX......"), Error);  // O never moved
  EXPECT_THROW(Board::parse("O........"), Error);  // O moved first
  EXPECT_THROW(Board::parse("XXXOOO..."), Error);  // play goes on after a win
}

TEST(TicTacToe, TheEnvironmentRewardsTheAgentAtTheEnd) {
  TicTacToeEnv env(kX, lowest_cell, 0);
  env.reset();
  EXPECT_EQ(env.observation().sum().item<float>(), 9.0f);  // all empty
  EXPECT_EQ(env.legal_actions().sum().item<int64_t>(), 9);
  // X 4, O 0; X 2, O 1; X 6 completes the diagonal 2-4-6.
  StepResult r = env.step(4);
  EXPECT_EQ(r.reward, 0.0);
  EXPECT_FALSE(r.done);
  EXPECT_EQ(env.board().str(), "O...X....");
  EXPECT_THROW(env.step(0), Error);  // the opponent's cell
  r = env.step(2);
  EXPECT_FALSE(r.done);
  r = env.step(6);
  EXPECT_TRUE(r.done);
  EXPECT_EQ(r.reward, 1.0);
  EXPECT_THROW(env.step(3), Error);  // after the end

  // As O the opponent opens, and the observation is the agent's view: its marks first.
  TicTacToeEnv as_o(kO, lowest_cell, 0);
  as_o.reset();
  EXPECT_EQ(as_o.board().str(), "X........");
  auto obs = as_o.observation();
  EXPECT_EQ(obs[9].item<float>(), 1.0f);   // the opponent's X in cell 0
  EXPECT_EQ(obs[18].item<float>(), 0.0f);  // cell 0 not empty
  EXPECT_FALSE(as_o.legal_actions()[0].item<bool>());
  // O 8, X 1; O 7, X 2: the top row, the agent lost.
  EXPECT_EQ(as_o.step(8).reward, 0.0);
  r = as_o.step(7);
  EXPECT_TRUE(r.done);
  EXPECT_EQ(r.reward, -1.0);
  EXPECT_EQ(as_o.board().winner(), kX);
}

TEST(TicTacToe, MinimaxDrawsTheEmptyBoardTakesWinsAndBlocks) {
  EXPECT_EQ(value(Board{}), 0);
  EXPECT_EQ(perfect_moves(Board{}).size(), 9u);  // every opening draws
  // X to move with two in the top row: the win is cell 2, and anything else loses to O's row.
  const Board win = Board::parse("XX.OO....");
  EXPECT_EQ(value(win), 1);
  EXPECT_EQ(perfect_moves(win), std::vector<int>({2}));
  // O to move against X's two in a row: only blocking at 2 keeps the draw.
  const Board block = Board::parse("XX..O....");
  EXPECT_EQ(value(block), 0);
  EXPECT_EQ(perfect_moves(block), std::vector<int>({2}));
  // Against a corner opening only the centre holds (every other reply loses).
  EXPECT_EQ(perfect_moves(Board::parse("X........")), std::vector<int>({4}));
  // A finished game: the player to move has lost, or drawn.
  EXPECT_EQ(value(played({0, 3, 1, 4, 2})), -1);
  EXPECT_EQ(value(played({0, 1, 2, 4, 3, 5, 7, 6, 8})), 0);
  std::mt19937_64 rng(0);
  EXPECT_EQ(perfect_move(win, rng), 2);
}

TEST(TicTacToe, EvaluationEnumeratesEveryGame) {
  // Perfect play against perfect play: only draws, on both sides.
  for (Mark side : {kX, kO}) {
    const Outcomes o = vs_perfect(perfect_policy, side);
    EXPECT_GT(o.games, 1);  // the opponent's tie-breaks branch
    EXPECT_EQ(o.draws, o.games) << mark_name(side);
    EXPECT_DOUBLE_EQ(o.p_draw, 1.0);
    const Outcomes r = vs_random(perfect_policy, side);
    EXPECT_EQ(r.losses, 0);
    EXPECT_NEAR(r.p_win + r.p_draw + r.p_loss, 1.0, 1e-12);
    EXPECT_EQ(r.wins + r.draws + r.losses, r.games);
  }
  EXPECT_GT(vs_random(perfect_policy, kX).p_win, 0.95);
  // Taking the lowest free cell loses every game to perfect play as X (0, then 1 into O's
  // centre and block), and some as O.
  EXPECT_EQ(vs_perfect(lowest_cell_policy, kX).losses, vs_perfect(lowest_cell_policy, kX).games);
  EXPECT_GT(vs_perfect(lowest_cell_policy, kO).losses, 0);
  // Against random play it wins the top row on its third move unless O's first reply took 1 or
  // 2 (2 of 8 cells) or its second took 2 (1 of the 6 left): probability 6/8 * 5/6.
  const Outcomes lc = vs_random(lowest_cell_policy, kX);
  EXPECT_GT(lc.p_win, 6.0 / 8.0 * 5.0 / 6.0 - 1e-12);
}

TEST(TicTacToe, SymmetriesTurnAndMirrorTheBoard) {
  std::set<std::vector<int>> perms;
  for (int s = 0; s < 8; ++s) {
    std::vector<int> p;
    for (int c = 0; c < 9; ++c) {
      p.push_back(symmetric_cell(s, c));
      EXPECT_EQ(inverse_symmetric_cell(s, symmetric_cell(s, c)), c);
    }
    EXPECT_EQ(p[4], 4);  // the centre stays
    for (int corner : {0, 2, 6, 8}) EXPECT_EQ(p[corner] % 2, 0) << "a corner goes to a corner";
    perms.insert(p);
  }
  EXPECT_EQ(perms.size(), 8u);  // eight different symmetries
  EXPECT_EQ(symmetric_cell(1, 0), 2);  // a quarter turn clockwise takes the top-left corner to the top-right
  EXPECT_EQ(symmetric_cell(4, 0), 2);  // the mirror too
  EXPECT_EQ(symmetric_cell(4, 3), 5);
  // The same position under each: same winner, same value, perfect moves mapped along.
  const Board b = Board::parse("XX.OO....");
  for (int s = 0; s < 8; ++s) {
    const Board t = b.transformed(s);
    EXPECT_EQ(value(t), value(b));
    EXPECT_EQ(perfect_moves(t), std::vector<int>({symmetric_cell(s, 2)}));
  }
}

TEST(TicTacToe, PositionsToPlayAreEveryReachableUnfinishedPosition) {
  // 5,478 positions arise in games, 958 of them finished.
  const auto& positions = positions_to_play();
  EXPECT_EQ(positions.size(), 4520u);
  std::set<int32_t> keys;
  for (const Board& b : positions) {
    EXPECT_FALSE(b.over());
    keys.insert(b.key());
  }
  EXPECT_EQ(keys.size(), positions.size());
  EXPECT_TRUE(keys.contains(Board{}.key()));
}

TEST(TicTacToe, ABlunderingPerfectPlayerBlundersAtItsRate) {
  const Board b = Board::parse("XX.OO....");  // X to move: only cell 2 keeps the win
  std::mt19937_64 rng(0);
  const Opponent perfect = perfect_with_blunders(0.0), random = perfect_with_blunders(1.0),
                 sometimes = perfect_with_blunders(0.5);
  int off_perfect = 0, off_sometimes = 0;
  for (int i = 0; i < 1000; ++i) {
    EXPECT_EQ(perfect(b, rng), 2);
    off_perfect += random(b, rng) != 2;
    off_sometimes += sometimes(b, rng) != 2;
  }
  // A random move misses cell 2 with probability 4/5 (5 free cells); half of the time that is 2/5.
  EXPECT_NEAR(off_perfect / 1000.0, 0.8, 0.05);
  EXPECT_NEAR(off_sometimes / 1000.0, 0.4, 0.05);
  EXPECT_THROW(perfect_with_blunders(1.5), Error);
}

TEST(TicTacToe, ARandomOrientationShowsTheBoardTurnedAndMapsMovesBack) {
  // The agent always takes what it sees as the top-left corner: on the real board that is each
  // of the four corners in turn, never an edge or the centre.
  std::set<int> corners_used;
  TicTacToeEnv env(kX, lowest_cell, 7, /*random_orientation=*/true);
  for (int game = 0; game < 64; ++game) {
    env.reset();
    env.step(0);  // the opponent replies inside step()
    const Board& real = env.board();
    std::vector<int> x_cells;
    for (int c = 0; c < 9; ++c)
      if (real.at(c) == kX) x_cells.push_back(c);
    ASSERT_EQ(x_cells.size(), 1u) << real.str();
    EXPECT_TRUE(x_cells[0] == 0 || x_cells[0] == 2 || x_cells[0] == 6 || x_cells[0] == 8) << real.str();
    corners_used.insert(x_cells[0]);
    // The agent sees the board the way it saw it before: its mark in its top-left corner.
    EXPECT_EQ(env.observation()[0].item<float>(), 1.0f);
  }
  EXPECT_EQ(corners_used.size(), 4u);
}

TEST(TicTacToe, TheGreedyPolicyIsTheNetworksMostLikelyMove) {
  torch::manual_seed(3);
  PolicyValueNet net(27, 9, 16, 1);
  {
    torch::NoGradGuard no_grad;  // logits of an order that differs from position to position
    for (auto& p : net->policy_head->parameters()) p.normal_(0, 1);
  }
  const Policy greedy = greedy_policy(net);
  for (const std::string s : {".........", "X........", "XO..X....", "XOXOX.O..", "XX.OO...."}) {
    const Board b = Board::parse(s);
    torch::NoGradGuard no_grad;
    const auto logits = net->forward(observe(b), legal_mask(b)).logits;
    EXPECT_EQ(greedy(b), logits.argmax().item<int64_t>()) << s;
    EXPECT_TRUE(b.legal(greedy(b)));
  }
}

// A one-step environment: three actions, the last one illegal, reward 1 for action 1.
struct BanditEnv final : Env {
  int64_t observation_size() const override { return 2; }
  int64_t num_actions() const override { return 3; }
  void reset() override { done = false; }
  torch::Tensor observation() const override { return torch::tensor({1.0f, 0.0f}); }
  torch::Tensor legal_actions() const override { return torch::tensor({true, true, false}); }
  StepResult step(int64_t a) override {
    check(!done && a >= 0 && a < 2, "BanditEnv: illegal action");
    done = true;
    return {a == 1 ? 1.0 : 0.0, true};
  }
  bool done = true;
};

TEST(EnvPpo, RolloutsArePaddedLikeResponsesWithTheRewardOnTheLastStep) {
  torch::manual_seed(0);
  PolicyValueNet net(27, 9, 16, 1);
  std::vector<std::unique_ptr<TicTacToeEnv>> envs;
  std::vector<Env*> ptrs;
  for (int b = 0; b < 6; ++b) {
    envs.push_back(std::make_unique<TicTacToeEnv>(b % 2 ? kO : kX, Opponent(random_move), b));
    ptrs.push_back(envs.back().get());
  }
  std::mt19937_64 rng(1);
  const Rollout r = collect_episodes(ptrs, net, rng);
  const int64_t T = r.mask.size(1);
  EXPECT_LE(T, 5);  // X moves at most 5 times
  EXPECT_EQ(r.observations.sizes(), (std::vector<int64_t>{6, T, 27}));
  for (int b = 0; b < 6; ++b) {
    const int64_t len = r.mask[b].sum().item<int64_t>();
    ASSERT_GE(len, 3);  // nobody wins before their third move
    const double result = r.episode_returns[b].item<double>();
    EXPECT_EQ(result, envs[b]->board().winner() == kEmpty ? 0.0 : envs[b]->board().winner() == (b % 2 ? kO : kX) ? 1.0 : -1.0);
    EXPECT_EQ(r.rewards[b][len - 1].item<double>(), result);
    EXPECT_EQ(r.rewards[b].abs().sum().item<double>(), std::abs(result));  // nothing before the end
    for (int64_t t = 0; t < T; ++t) {
      const auto a = r.actions[b][t].item<int64_t>();
      if (t < len) {
        EXPECT_TRUE(r.legal[b][t][a].item<bool>());
        EXPECT_EQ(r.observations[b][t][18 + a].item<float>(), 1.0f);  // the chosen cell was empty
      } else {
        EXPECT_EQ(r.mask[b][t].item<float>(), 0.0f);
      }
    }
  }
  // The stored log-probabilities and values are the network's at those observations.
  torch::NoGradGuard no_grad;
  auto out = net->forward(r.observations, r.legal);
  auto logp = torch::log_softmax(out.logits, -1).gather(-1, r.actions.unsqueeze(-1)).squeeze(-1);
  EXPECT_TRUE(torch::allclose(logp * r.mask, r.logprobs * r.mask, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(out.values * r.mask, r.values * r.mask, 1e-5, 1e-6));
}

TEST(EnvPpo, UpdatesMoveThePolicyTowardTheRewardedActionAndNeverToAnIllegalOne) {
  torch::manual_seed(0);
  EnvPpoConfig cfg;
  cfg.episodes_per_update = 32;
  cfg.hidden = 16;
  cfg.layers = 1;
  cfg.ent_coef = cfg.ent_coef_end = 0.01;
  PolicyValueNet net(2, 3, cfg.hidden, cfg.layers);
  AdamW opt(named_trainable(*net), AdamWOptions{});
  std::vector<BanditEnv> envs(cfg.episodes_per_update);
  std::vector<Env*> ptrs;
  for (auto& e : envs) ptrs.push_back(&e);
  auto p_action = [&](int64_t a) {
    torch::NoGradGuard no_grad;
    return torch::softmax(net->forward(torch::tensor({1.0f, 0.0f}), torch::tensor({true, true, false})).logits, -1)[a]
        .item<double>();
  };
  EXPECT_NEAR(p_action(1), 0.5, 0.05);  // starts near uniform over the legal two
  std::mt19937_64 rng(0);
  for (int i = 0; i < 5; ++i) ppo_update(net, opt, collect_episodes(ptrs, net, rng), cfg, i, 5, rng);
  EXPECT_GT(p_action(1), 0.9);
  EXPECT_EQ(p_action(2), 0.0);
}

TEST(TicTacToe, TheCommandRejectsBadSettingsBeforeTraining) {
  for (const auto& [flags, says] : std::vector<std::pair<std::string, std::string>>{
           {"--minibatches 3", "minibatches (3) must be > 0 and divide episodes_per_update (128)"},
           {"--blunder-rate 2", "a blunder rate is a probability"},
           {"--games 0", "games must be > 0"},
           {"--lr-schedule steep", "lr_schedule must be linear, cosine or constant"}}) {
    const auto r = test::run_cli("tictactoe " + flags);
    EXPECT_EQ(r.exit_code, 1) << flags;
    EXPECT_NE(r.output.find(says), std::string::npos) << flags << ": " << r.output;
  }
}
