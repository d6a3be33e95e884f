#include "rl/tictactoe_train.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <unordered_map>

#include "core/error.h"
#include "trainers/trainer_util.h"

namespace rlhf {

using namespace tictactoe;
using json = nlohmann::json;

namespace {

json outcomes_json(const Outcomes& o) {
  return {{"games", o.games}, {"wins", o.wins}, {"draws", o.draws}, {"losses", o.losses},
          {"p_win", o.p_win}, {"p_draw", o.p_draw}, {"p_loss", o.p_loss}};
}

// Seeds of separate random streams, so that one part's draws (an opponent's) do not shift
// another's (the policy's samples).
uint64_t stream(int64_t seed, uint64_t which) { return static_cast<uint64_t>(seed) * 0x9E3779B97F4A7C15ull + which; }

}  // namespace

Policy greedy_policy(PolicyValueNet& net) {
  const auto& positions = positions_to_play();
  static const auto inputs = [&positions] {
    std::vector<torch::Tensor> obs, legal;
    for (const Board& b : positions) obs.push_back(observe(b)), legal.push_back(legal_mask(b));
    return std::pair(torch::stack(obs), torch::stack(legal));  // (N, 27), (N, 9)
  }();
  torch::NoGradGuard no_grad;
  const auto cells = net->forward(inputs.first, inputs.second).logits.argmax(-1).contiguous();  // (N)
  const int64_t* c = cells.data_ptr<int64_t>();
  auto moves = std::make_shared<std::unordered_map<int32_t, int>>();
  for (size_t i = 0; i < positions.size(); ++i) (*moves)[positions[i].key()] = static_cast<int>(c[i]);
  return [moves](const Board& b) { return moves->at(b.key()); };
}

json evaluate_tictactoe(const Policy& policy) {
  json out;
  for (Mark side : {kX, kO}) {
    out["random"][mark_name(side)] = outcomes_json(vs_random(policy, side));
    out["perfect"][mark_name(side)] = outcomes_json(vs_perfect(policy, side));
  }
  return out;
}

json train_tictactoe(TicTacToeConfig cfg, std::ostream* log) {
  cfg.ppo.validate();
  check(cfg.games > 0, "games must be > 0, got " + std::to_string(cfg.games));
  check(cfg.perfect_share >= 0 && cfg.perfect_share <= 1,
        "perfect_share must lie in [0, 1], got " + std::to_string(cfg.perfect_share));
  json config;
  cfg.visit([&](const std::string& name, const auto& field, const char*) { config[name] = field; });
  const auto t0 = std::chrono::steady_clock::now();

  torch::manual_seed(static_cast<uint64_t>(cfg.seed));
  PolicyValueNet net(27, 9, cfg.ppo.hidden, cfg.ppo.layers);
  AdamW optimizer(named_trainable(*net), AdamWOptions{});

  // The games of one update: even envs play X, odd ones O; the first perfect_share of them (so
  // both sides) meet the perfect player, the others the blundering one.
  const int64_t B = cfg.ppo.episodes_per_update;
  const auto n_perfect = static_cast<int64_t>(std::llround(cfg.perfect_share * static_cast<double>(B)));
  const Opponent blundering = perfect_with_blunders(cfg.blunder_rate);
  std::vector<std::unique_ptr<TicTacToeEnv>> envs;
  std::vector<Env*> env_ptrs;
  for (int64_t b = 0; b < B; ++b) {
    envs.push_back(std::make_unique<TicTacToeEnv>(b % 2 == 0 ? kX : kO, b < n_perfect ? perfect_move : blundering,
                                                  stream(cfg.seed, 1000 + static_cast<uint64_t>(b)),
                                                  cfg.random_orientation));
    env_ptrs.push_back(envs.back().get());
  }
  std::mt19937_64 policy_rng(stream(cfg.seed, 1)), minibatch_rng(stream(cfg.seed, 2));

  json results = {{"config", config}, {"before", evaluate_tictactoe(greedy_policy(net))}};
  json curve = json::array();
  int64_t games = 0, updates = 0;
  json first_unbeaten = nullptr, unbeaten_since = nullptr;
  // The greedy policy against every line of perfect play, as X and as O: a point of the curve.
  auto check_perfect = [&](json point) {
    const Policy greedy = greedy_policy(net);
    const int64_t lx = vs_perfect(greedy, kX).losses, lo = vs_perfect(greedy, kO).losses;
    point["games"] = games;
    point["losses_vs_perfect"] = {{"X", lx}, {"O", lo}};
    curve.push_back(point);
    if (lx == 0 && lo == 0) {
      if (first_unbeaten.is_null()) first_unbeaten = games;
      if (unbeaten_since.is_null()) unbeaten_since = games;
    } else {
      unbeaten_since = nullptr;
    }
    return std::pair(lx, lo);
  };
  check_perfect(json::object());

  const int64_t n_updates = (cfg.games + B - 1) / B;
  for (; updates < n_updates; ++updates) {
    // 1. A batch of games with the sampled policy. 2. GAE, whitening, clipped updates (ppo_update).
    const Rollout rollout = collect_episodes(env_ptrs, net, policy_rng);
    const EnvPpoStats s = ppo_update(net, optimizer, rollout, cfg.ppo, updates, n_updates, minibatch_rng);
    games += B;
    // 3. The greedy policy against perfect play.
    const double mean_return = rollout.episode_returns.mean().item<double>();
    const auto [lx, lo] = check_perfect({{"mean_return", mean_return},
                                         {"entropy", s.entropy},
                                         {"explained_variance", s.explained_variance},
                                         {"approxkl", s.approxkl}});
    if (log && ((updates + 1) % 16 == 0 || updates + 1 == n_updates)) {
      char line[160];
      std::snprintf(line, sizeof(line),
                    "games %6lld  mean return %+.3f  entropy %.3f  losing games vs perfect play: as X %lld, as O %lld",
                    static_cast<long long>(games), mean_return, s.entropy, static_cast<long long>(lx),
                    static_cast<long long>(lo));
      *log << line << std::endl;
    }
  }

  results["after"] = evaluate_tictactoe(greedy_policy(net));
  results["training"] = {
      {"games", games},
      {"updates", updates},
      {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()},
      {"first_unbeaten_games", first_unbeaten},
      {"unbeaten_since_games", unbeaten_since}};
  results["curve"] = curve;
  return results;
}

std::string tictactoe_markdown(const json& results) {
  auto cell = [](const json& o, bool probabilities) {
    char buf[96];
    if (probabilities)  // against random play
      std::snprintf(buf, sizeof(buf), "%.1f%% / %.1f%% / %.1f%%", 100 * o["p_win"].get<double>(),
                    100 * o["p_draw"].get<double>(), 100 * o["p_loss"].get<double>());
    else  // against perfect play: the games it can make, by result
      std::snprintf(buf, sizeof(buf), "%lld / %lld / %lld of %lld", o["wins"].get<long long>(),
                    o["draws"].get<long long>(), o["losses"].get<long long>(), o["games"].get<long long>());
    return std::string(buf);
  };
  std::string out =
      "| opponent | agent plays | before: win / draw / loss | after: win / draw / loss |\n"
      "|---|---|---|---|\n";
  for (const std::string opp : {"random", "perfect"})
    for (const char* side : {"X", "O"})
      out += "| " + (opp == "random" ? std::string("random (probabilities)") : std::string("perfect (every game)")) +
             " | " + side + " | " + cell(results["before"][opp][side], opp == "random") + " | " +
             cell(results["after"][opp][side], opp == "random") + " |\n";
  const auto& t = results["training"];
  out += "\ntraining: " + std::to_string(t["games"].get<long long>()) + " games (" +
         std::to_string(t["updates"].get<long long>()) + " PPO updates) in " +
         std::to_string(static_cast<int>(std::round(t["seconds"].get<double>()))) + " s; ";
  if (t["unbeaten_since_games"].is_null())
    out += "the greedy policy still loses to perfect play\n";
  else
    out += "no loss to perfect play from " + std::to_string(t["unbeaten_since_games"].get<long long>()) +
           " games on (the first time after " + std::to_string(t["first_unbeaten_games"].get<long long>()) + ")\n";
  return out;
}

}  // namespace rlhf
