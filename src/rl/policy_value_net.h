// An actor-critic network for small environments with discrete actions (env.h): two MLPs over
// the observation, one ending in a logit per action (the policy), one in a scalar (the value),
// as in the PPO paper's agents for small control tasks; separate, so that fitting the value
// does not pull on the policy's features. Illegal actions get a logit of kIllegalLogit.
#pragma once
#include <torch/torch.h>

#include <cstdint>

namespace rlhf {

// Finite rather than -inf: entropy_from_logits (losses/ppo.h) needs finite logits, and at -1e9
// an illegal action's probability is exactly 0 in float32 all the same.
constexpr float kIllegalLogit = -1e9f;

struct PolicyValueOutput {
  torch::Tensor logits;  // (..., A) illegal actions at kIllegalLogit
  torch::Tensor values;  // (...)
};

struct PolicyValueNetImpl : torch::nn::Module {
  // O observation size, A actions; each MLP has `layers` hidden layers of `hidden` units (tanh).
  PolicyValueNetImpl(int64_t observation_size, int64_t num_actions, int64_t hidden, int64_t layers);
  // observations (..., O) float32, legal (..., A) bool.
  PolicyValueOutput forward(const torch::Tensor& observations, const torch::Tensor& legal);

  torch::nn::Sequential policy{nullptr}, value{nullptr};
  torch::nn::Linear policy_head{nullptr}, value_head{nullptr};  // (A, hidden), (1, hidden)
};
TORCH_MODULE(PolicyValueNet);

}  // namespace rlhf
