// PPO for an environment (env.h) with the language-model trainer's math (losses/ppo.h): an
// episode plays the part of a response, the agent's actions its tokens, the reward of each
// step its per-token reward. Episodes of different lengths are right-padded into (B, T) like
// responses, so gae, masked_whiten, the clipped policy and value losses and the entropy apply
// unchanged, as they are.
//
// B episodes, T steps of the longest one, O observation size, A actions.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "rl/env.h"
#include "rl/policy_value_net.h"
#include "train/optimizer.h"

namespace rlhf {

// The settings of PPO on an environment, declared once (train/config_fields.h's visit). The
// defaults are the ones the tic-tac-toe example was tuned with (examples/tictactoe/README.md):
// eight epochs over each batch with a clip of 0.3, the value unclipped (10 is far outside the
// returns' [-1, 1]), and an entropy bonus that starts high and fades, so that no move's
// probability collapses before the moves after it have been learned.
struct EnvPpoConfig {
  int64_t episodes_per_update = 128;  // B: episodes collected per PPO update
  int64_t minibatches = 4;            // per PPO epoch; episodes_per_update must divide evenly
  int64_t ppo_epochs = 8;
  double lr = 3e-3;
  std::string lr_schedule = "linear";
  double max_grad_norm = 1.0;
  double gamma = 1.0, lam = 0.95;
  double clip_range = 0.3, clip_range_value = 10.0;
  double vf_coef = 0.5, ent_coef = 0.3, ent_coef_end = 0.01;
  int64_t hidden = 128, layers = 2;

  template <class V>
  void visit(V&& v) {
    v("episodes_per_update", episodes_per_update, "Episodes collected per PPO update");
    v("minibatches", minibatches, "Minibatches per PPO epoch (episodes_per_update must divide evenly)");
    v("ppo_epochs", ppo_epochs, "Passes over each update's episodes");
    v("lr", lr, "Peak learning rate (AdamW)");
    v("lr_schedule", lr_schedule, "linear (to 0 at the last update), cosine or constant");
    v("max_grad_norm", max_grad_norm, "Clip the global gradient norm to this; 0: off");
    v("gamma", gamma, "Discount per step (GAE)");
    v("lam", lam, "GAE lambda");
    v("clip_range", clip_range, "PPO policy clip epsilon");
    v("clip_range_value", clip_range_value, "Value clip around the rollout's values");
    v("vf_coef", vf_coef, "Weight of the value loss");
    v("ent_coef", ent_coef, "Weight of the entropy bonus (subtracted from the loss) at the first update");
    v("ent_coef_end", ent_coef_end, "Weight of the entropy bonus at the last update (linear in between)");
    v("hidden", hidden, "Units per hidden layer of the policy and the value network");
    v("layers", layers, "Hidden layers of the policy and the value network");
  }
  void validate() const;  // an Error naming the field out of range
};

// Episodes as a padded batch; padding rows of observations are 0 and of legal all true, so a
// forward pass over the whole (B, T) stays finite.
struct Rollout {
  torch::Tensor observations;  // (B, T, O) float32
  torch::Tensor legal;         // (B, T, A) bool
  torch::Tensor actions;       // (B, T) int64, 0 on padding
  torch::Tensor logprobs;      // (B, T) log pi(action) when sampled
  torch::Tensor values;        // (B, T) V(observation) when sampled
  torch::Tensor rewards;       // (B, T) the step's reward, 0 on padding
  torch::Tensor mask;          // (B, T) 1 on the steps of each episode, 0 on padding
  torch::Tensor episode_returns;  // (B) the rewards summed over each episode
};

// Plays one episode in every env (reset first), all stepping together: one forward pass per
// step for the envs still playing, actions sampled from the policy with `rng`.
Rollout collect_episodes(const std::vector<Env*>& envs, PolicyValueNet& net, std::mt19937_64& rng);

struct EnvPpoStats {  // means over the update's minibatches
  double policy_loss = 0, value_loss = 0, entropy = 0, approxkl = 0, clipfrac = 0;
  double explained_variance = 0;  // of the rollout's values for the GAE returns
};

// Update `update` (0-based) of `total_updates` on a rollout, in the phases of the language-model
// trainer: advantages and returns by GAE, advantages whitened, then ppo_epochs passes over the
// episodes in shuffled minibatches of the clipped policy loss + vf_coef * value loss -
// ent_coef * entropy, with the learning rate and the entropy weight of this update.
EnvPpoStats ppo_update(PolicyValueNet& net, AdamW& optimizer, const Rollout& rollout, const EnvPpoConfig& cfg,
                       int64_t update, int64_t total_updates, std::mt19937_64& rng);

}  // namespace rlhf
