#include "rl/env_ppo.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "losses/ppo.h"
#include "train/optimizer.h"

namespace rlhf {

void EnvPpoConfig::validate() const {
  check(episodes_per_update > 0, "episodes_per_update must be > 0, got " + std::to_string(episodes_per_update));
  check(minibatches > 0 && episodes_per_update % minibatches == 0,
        "minibatches (" + std::to_string(minibatches) + ") must be > 0 and divide episodes_per_update (" +
            std::to_string(episodes_per_update) + ")");
  check(ppo_epochs > 0, "ppo_epochs must be > 0, got " + std::to_string(ppo_epochs));
  check(lr > 0, "lr must be > 0, got " + std::to_string(lr));
  check(gamma >= 0 && gamma <= 1 && lam >= 0 && lam <= 1, "gamma and lam must lie in [0, 1]");
  check(clip_range > 0 && clip_range_value > 0, "clip_range and clip_range_value must be > 0");
  check(lr_schedule == "linear" || lr_schedule == "cosine" || lr_schedule == "constant",
        "lr_schedule must be linear, cosine or constant, got '" + lr_schedule + "'");
  check(vf_coef >= 0 && ent_coef >= 0 && ent_coef_end >= 0 && max_grad_norm >= 0,
        "vf_coef, ent_coef, ent_coef_end and max_grad_norm must be >= 0");
  check(hidden > 0 && layers > 0, "hidden and layers must be > 0");
}

namespace {

struct StepRecord {
  torch::Tensor observation, legal;  // (O), (A)
  int64_t action;
  float logprob, value, reward;
};

// An action drawn from `probs` (A) with one 53-bit uniform of `rng` (mt19937_64's output is fixed
// by the standard, a std distribution's is not: the same draws everywhere); an action of
// probability 0 (an illegal one) is never drawn.
int64_t sample_action(const float* probs, int64_t A, std::mt19937_64& rng) {
  const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
  double cum = 0;
  int64_t last = -1;
  for (int64_t a = 0; a < A; ++a) {
    if (probs[a] <= 0) continue;
    cum += probs[a];
    last = a;
    if (u < cum) return a;
  }
  check(last >= 0, "collect_episodes: no legal action");
  return last;  // u beyond the float sum of the probabilities (rounding): the last possible action
}

}  // namespace

Rollout collect_episodes(const std::vector<Env*>& envs, PolicyValueNet& net, std::mt19937_64& rng) {
  check(!envs.empty(), "collect_episodes: no environments");
  const int64_t B = static_cast<int64_t>(envs.size());
  const int64_t O = envs[0]->observation_size(), A = envs[0]->num_actions();
  for (const Env* e : envs)
    check(e->observation_size() == O && e->num_actions() == A,
          "collect_episodes: every environment must have the same observation size and actions");
  torch::NoGradGuard no_grad;
  std::vector<std::vector<StepRecord>> episodes(B);
  std::vector<int64_t> playing(B);
  std::iota(playing.begin(), playing.end(), 0);
  for (Env* e : envs) e->reset();
  while (!playing.empty()) {
    std::vector<torch::Tensor> obs, legal;
    for (int64_t b : playing) obs.push_back(envs[b]->observation()), legal.push_back(envs[b]->legal_actions());
    auto out = net->forward(torch::stack(obs), torch::stack(legal));  // logits (L, A), values (L)
    auto logp = torch::log_softmax(out.logits, -1).contiguous();
    auto probs = logp.exp().contiguous();
    auto values = out.values.contiguous();
    std::vector<int64_t> still;
    for (size_t i = 0; i < playing.size(); ++i) {
      const int64_t b = playing[i];
      const int64_t a = sample_action(probs.data_ptr<float>() + i * A, A, rng);
      const StepResult r = envs[b]->step(a);
      episodes[b].push_back({obs[i], legal[i], a, logp.data_ptr<float>()[i * A + a], values.data_ptr<float>()[i],
                             static_cast<float>(r.reward)});
      if (!r.done) still.push_back(b);
    }
    playing = std::move(still);
  }

  int64_t T = 0;
  for (const auto& e : episodes) T = std::max<int64_t>(T, static_cast<int64_t>(e.size()));
  Rollout r;
  r.observations = torch::zeros({B, T, O});
  r.legal = torch::ones({B, T, A}, torch::kBool);
  r.actions = torch::zeros({B, T}, torch::kInt64);
  r.logprobs = torch::zeros({B, T});
  r.values = torch::zeros({B, T});
  r.rewards = torch::zeros({B, T});
  r.mask = torch::zeros({B, T});
  r.episode_returns = torch::zeros({B});
  auto act = r.actions.accessor<int64_t, 2>();
  auto lp = r.logprobs.accessor<float, 2>(), val = r.values.accessor<float, 2>(), rew = r.rewards.accessor<float, 2>(),
       mask = r.mask.accessor<float, 2>();
  auto ret = r.episode_returns.accessor<float, 1>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < static_cast<int64_t>(episodes[b].size()); ++t) {
      const auto& s = episodes[b][t];
      r.observations[b][t] = s.observation;
      r.legal[b][t] = s.legal;
      act[b][t] = s.action, lp[b][t] = s.logprob, val[b][t] = s.value, rew[b][t] = s.reward, mask[b][t] = 1;
      ret[b] += s.reward;
    }
  return r;
}

EnvPpoStats ppo_update(PolicyValueNet& net, AdamW& optimizer, const Rollout& rollout, const EnvPpoConfig& cfg,
                       int64_t update, int64_t total_updates, std::mt19937_64& rng) {
  cfg.validate();
  check(update >= 0 && update < total_updates, "ppo_update: update " + std::to_string(update) + " of " +
                                                   std::to_string(total_updates));
  const double lr = lr_at(update, total_updates, 0, cfg.lr, cfg.lr_schedule);
  const double progress = total_updates > 1 ? double(update) / double(total_updates - 1) : 1.0;
  const double ent_coef = cfg.ent_coef + (cfg.ent_coef_end - cfg.ent_coef) * progress;
  const int64_t B = rollout.mask.size(0);
  check(B % cfg.minibatches == 0, "ppo_update: " + std::to_string(B) + " episodes do not split into " +
                                      std::to_string(cfg.minibatches) + " minibatches");
  // 1. Advantages and returns (GAE, V = 0 after each episode's last step), advantages whitened.
  auto [advantages, returns] = gae(rollout.rewards, rollout.values, rollout.mask, cfg.gamma, cfg.lam);
  advantages = masked_whiten(advantages, rollout.mask);
  EnvPpoStats stats;
  stats.explained_variance = explained_variance(rollout.values, returns, rollout.mask).item<double>();

  // 2. ppo_epochs passes over the episodes in shuffled minibatches.
  const auto params = named_trainable(*net);
  const int64_t mb = B / cfg.minibatches;
  std::vector<int64_t> order(B);
  std::iota(order.begin(), order.end(), 0);
  int64_t n = 0;
  for (int64_t epoch = 0; epoch < cfg.ppo_epochs; ++epoch) {
    for (int64_t i = B - 1; i > 0; --i) std::swap(order[i], order[rng() % (i + 1)]);  // Fisher-Yates
    for (int64_t start = 0; start < B; start += mb) {
      auto idx = torch::tensor(std::vector<int64_t>(order.begin() + start, order.begin() + start + mb));
      auto mask = rollout.mask.index_select(0, idx);  // (mb, T)
      auto out = net->forward(rollout.observations.index_select(0, idx), rollout.legal.index_select(0, idx));
      auto logprobs = torch::log_softmax(out.logits, -1)
                          .gather(-1, rollout.actions.index_select(0, idx).unsqueeze(-1))
                          .squeeze(-1);  // (mb, T)
      auto pg = ppo_policy_loss(logprobs, rollout.logprobs.index_select(0, idx), advantages.index_select(0, idx), mask,
                                cfg.clip_range);
      auto vf = ppo_value_loss(out.values, rollout.values.index_select(0, idx), returns.index_select(0, idx), mask,
                               cfg.clip_range_value);
      auto entropy = entropy_from_logits(out.logits, mask);
      auto loss = pg.loss + cfg.vf_coef * vf.loss - ent_coef * entropy;
      optimizer.zero_grad();
      loss.backward();
      optimizer.step(lr, clip_scale(grad_norm(params), cfg.max_grad_norm));

      stats.policy_loss += pg.loss.item<double>();
      stats.value_loss += vf.loss.item<double>();
      stats.entropy += entropy.item<double>();
      stats.approxkl += pg.approxkl.item<double>();
      stats.clipfrac += pg.clipfrac.item<double>();
      ++n;
    }
  }
  for (double* s : {&stats.policy_loss, &stats.value_loss, &stats.entropy, &stats.approxkl, &stats.clipfrac}) *s /= n;
  return stats;
}

}  // namespace rlhf
