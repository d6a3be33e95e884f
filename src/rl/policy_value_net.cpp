#include "rl/policy_value_net.h"

#include "core/error.h"

namespace rlhf {

namespace {

torch::nn::Sequential mlp(int64_t in, int64_t hidden, int64_t layers) {
  torch::nn::Sequential s;
  for (int64_t l = 0; l < layers; ++l) {
    s->push_back(torch::nn::Linear(l == 0 ? in : hidden, hidden));
    s->push_back(torch::nn::Tanh());
  }
  return s;
}

}  // namespace

PolicyValueNetImpl::PolicyValueNetImpl(int64_t observation_size, int64_t num_actions, int64_t hidden, int64_t layers) {
  check(observation_size > 0 && num_actions > 0, "PolicyValueNet: observation size and action count must be > 0");
  check(hidden > 0 && layers > 0, "PolicyValueNet: hidden (" + std::to_string(hidden) + ") and layers (" +
                                      std::to_string(layers) + ") must be > 0");
  policy = register_module("policy", mlp(observation_size, hidden, layers));
  value = register_module("value", mlp(observation_size, hidden, layers));
  policy_head = register_module("policy_head", torch::nn::Linear(hidden, num_actions));
  value_head = register_module("value_head", torch::nn::Linear(hidden, 1));
  // Small policy weights start the policy near uniform over the legal actions (the usual
  // actor-critic initialisation, 0.01 x the default scale), so early games explore.
  torch::NoGradGuard no_grad;
  policy_head->weight.mul_(0.01);
  policy_head->bias.zero_();
}

PolicyValueOutput PolicyValueNetImpl::forward(const torch::Tensor& observations, const torch::Tensor& legal) {
  check(observations.dim() >= 1 && legal.dim() == observations.dim() &&
            legal.sizes().slice(0, legal.dim() - 1) == observations.sizes().slice(0, observations.dim() - 1) &&
            legal.size(-1) == policy_head->options.out_features(),
        "PolicyValueNet: observations (..., O) and legal (..., A) must agree, got " +
            std::to_string(observations.dim()) + "-d and " + std::to_string(legal.dim()) + "-d");
  auto logits = policy_head->forward(policy->forward(observations)).masked_fill(legal.logical_not(), kIllegalLogit);
  return {logits, value_head->forward(value->forward(observations)).squeeze(-1)};
}

}  // namespace rlhf
