// The math of PPO for language models as pure functions of tensors: masked statistics, KL
// estimators, per-token rewards, GAE, the clipped policy and value losses, entropy, and the
// KL-coefficient controllers, which a PPO trainer calls in order. Where the peers differ, the
// detail chosen is named in the comment, after OpenAI's lm-human-preferences and "The N
// Implementation Details of RLHF with PPO".
//
// B batch of responses, T response length, V vocabulary. `mask` is (B, T), 1 on real response
// tokens and 0 on padding (responses are right-padded); it is read as "!= 0", so padding
// positions of logprobs, values and advantages may hold anything, even -inf, without leaking NaN
// into results or gradients (logits must still be finite). Math runs in float32 whatever the
// inputs' dtype, on the inputs' device; the losses are differentiable in their first argument.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <optional>

namespace rlhf {

// ---- masked statistics (TRL's masked_mean / masked_var / masked_whiten) --------------------

// Mean of x over the entries where mask != 0: a scalar, or per slice along `dim` (e.g. dim 1
// gives (B) per-row means). x, mask (B, T). An all-zero mask gives NaN (0/0), as in TRL: these
// run inside the losses, so they never stop to check the device.
torch::Tensor masked_mean(const torch::Tensor& x, const torch::Tensor& mask, std::optional<int64_t> dim = std::nullopt);

// Variance of x over the masked entries, a scalar. Biased (divides by n) by default, as
// OpenAI's lm-human-preferences (tf.nn.moments), with eps 1e-8; unbiased multiplies by
// n/(n-1), which is TRL's default.
torch::Tensor masked_var(const torch::Tensor& x, const torch::Tensor& mask, bool unbiased = false);

// (x - mean) / sqrt(var + 1e-8) with mean and var over the masked entries; shift_mean = false
// adds the mean back (reward whitening rescales but keeps the mean, as lm-human-preferences does). Returns (B, T)
// with padding set to 0, as TRL does right after each masked_whiten call. unbiased = true is
// TRL's masked_whiten exactly; the default is the biased variance of the spec. Throws when the
// mask has fewer entries than the variance needs (1, or 2 when unbiased).
torch::Tensor masked_whiten(const torch::Tensor& x, const torch::Tensor& mask, bool shift_mean = true,
                            bool unbiased = false);

// ---- KL penalty and per-token rewards ----------------------------------------------------

// Per-token estimators of KL(pi || pi_ref) from samples of pi (http://joschu.net/blog/kl-approx.html),
// with log r = logp_ref - logp:
//   K1 = -log r = logp - logp_ref: unbiased, but negative on tokens pi likes less than pi_ref.
//   K3 = (r - 1) - log r: unbiased, lower variance, >= 0 on every token.
enum class KlEstimator { K1, K3 };

// The chosen estimator per token: logprobs, ref_logprobs (B, T) -> (B, T), not masked.
torch::Tensor kl_estimate(const torch::Tensor& logprobs, const torch::Tensor& ref_logprobs, KlEstimator estimator);

struct PerTokenRewards {
  torch::Tensor rewards;  // (B, T) -kl_coef * kl_t, plus the score at each row's last real token; 0 on padding
  torch::Tensor kl;       // (B, T) the per-token KL estimate, 0 on padding; objective/kl = kl.sum(1).mean()
};

// Reward shaping (the score read at the last non-pad response token, a KL penalty per token): r_t = -kl_coef * kl_t on every response token, and the
// reward model's score (B) added at the last real token of each row. logprobs and ref_logprobs
// (B, T) are of the sampled response tokens, at the sampling temperature. Throws when a row of
// the mask is empty (its score would have nowhere to go). Never differentiated: no gradients.
PerTokenRewards per_token_rewards(const torch::Tensor& logprobs, const torch::Tensor& ref_logprobs,
                                  const torch::Tensor& scores, const torch::Tensor& mask, double kl_coef,
                                  KlEstimator estimator = KlEstimator::K1);

// How a response that never emitted EOS (it ran into the length limit) is scored: a fixed penalty score (the missing-EOS penalty).
enum class EosPenaltyMode {
  Replace,   // score := penalty (OpenAI lm-human-preferences: penalty_reward_value, e.g. -1)
  Subtract,  // score -= penalty (TRL's missing_eos_penalty)
};

// scores (B), has_eos (B) bool -> (B): rows without EOS get the penalty, the others keep their score.
torch::Tensor missing_eos_penalty(const torch::Tensor& scores, const torch::Tensor& has_eos, double penalty,
                                  EosPenaltyMode mode = EosPenaltyMode::Replace);

// ---- advantages --------------------------------------------------------------------------

struct GaeOutput {
  torch::Tensor advantages;  // (B, T) GAE(gamma, lam), not whitened; 0 on padding
  torch::Tensor returns;     // (B, T) advantages + values, the value head's regression target; 0 on padding
};

// Generalised advantage estimation (Schulman et al. 2016), backwards over t with V = 0 after the last token:
//   delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},
// with V and A after each row's last real token taken as 0 (the episode ends there).
// rewards, values (B, T). Whitening the advantages is the caller's next step (masked_whiten).
// Targets, never differentiated: runs without gradients.
GaeOutput gae(const torch::Tensor& rewards, const torch::Tensor& values, const torch::Tensor& mask, double gamma = 1.0,
              double lam = 0.95);

// ---- losses ------------------------------------------------------------------------------

struct PolicyLossOutput {
  torch::Tensor loss;        // () differentiable; the NEGATIVE clipped surrogate, to minimise
  torch::Tensor clipfrac;    // () fraction of real tokens where the clipped branch is taken (policy/clipfrac)
  torch::Tensor approxkl;    // () 0.5 * masked mean of (logp - logp_old)^2 (policy/approxkl, as TRL logs it)
  torch::Tensor ratio_mean;  // () masked mean of rho; 1 up to float error on the first minibatch of an update
  torch::Tensor ratio_min;   // () over real tokens
  torch::Tensor ratio_max;   // () over real tokens
};

// PPO's clipped policy loss (clip epsilon 0.2 by default). With rho = exp(logp - logp_old):
//   loss = masked_mean(max(-A * rho, -A * clip(rho, 1 - clip_range, 1 + clip_range)))
// Sign convention: this is a loss to MINIMISE, the negative of PPO's surrogate
// min(rho * A, clip(rho) * A), so it adds to the value loss and an optimizer step descends it;
// with rho = 1 it equals -masked_mean(A). logprobs (B, T) carry gradients; old_logprobs (B, T)
// and advantages (B, T) (whitened) are constants. Only `loss` keeps a graph; the stats are detached.
PolicyLossOutput ppo_policy_loss(const torch::Tensor& logprobs, const torch::Tensor& old_logprobs,
                                 const torch::Tensor& advantages, const torch::Tensor& mask, double clip_range = 0.2);

struct ValueLossOutput {
  torch::Tensor loss;      // () differentiable
  torch::Tensor clipfrac;  // () fraction of real tokens where the clipped error is the larger (val/clipfrac)
};

// Clipped value loss (clipped around the rollout's values, coefficient vf_coef in the trainer):
//   loss = 0.5 * masked_mean(max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)).
// values (B, T) carry gradients; old_values (B, T) (from the rollout) and returns (B, T) are constants.
// The caller scales it by the value coefficient (0.1 by default).
ValueLossOutput ppo_value_loss(const torch::Tensor& values, const torch::Tensor& old_values,
                               const torch::Tensor& returns, const torch::Tensor& mask, double clip_range_value = 0.2);

// 1 - Var[R - V] / Var[R] over the masked entries (biased variances), as stable-baselines and
// cleanrl log it: 1 is a perfect value head, 0 no better than a constant, < 0 worse. values,
// returns (B, T); a scalar, NaN when the returns have no variance. Detached (a metric).
torch::Tensor explained_variance(const torch::Tensor& values, const torch::Tensor& returns, const torch::Tensor& mask);

// Mean entropy (nats) of the next-token distributions over the masked positions, a scalar.
// logits (B, T, V) are the ones that scored the response tokens (already divided by the
// temperature). Differentiable, so it can serve as an entropy bonus (subtracted from the loss).
torch::Tensor entropy_from_logits(const torch::Tensor& logits, const torch::Tensor& mask);

// ---- KL coefficient controllers (fixed, or Ziegler et al.'s adaptive one) -----------------

// The KL coefficient beta the rewards use, updated once per PPO step from the measured KL.
// The whole state is the current value: save value() in a checkpoint, restore with load_value().
class KlController {
 public:
  virtual ~KlController() = default;
  double value() const { return kl_coef_; }
  void load_value(double kl_coef) { kl_coef_ = kl_coef; }
  // current_kl: the step's objective/kl (per-token KL summed over the response, mean over the
  // batch); n_steps: samples (responses) in the step.
  virtual void update(double current_kl, int64_t n_steps) = 0;

 protected:
  explicit KlController(double kl_coef);
  double kl_coef_;
};

// Fixed beta: update does nothing.
class FixedKlController final : public KlController {
 public:
  explicit FixedKlController(double kl_coef) : KlController(kl_coef) {}
  void update(double, int64_t) override {}
};

// Ziegler et al. 2019 (lm-human-preferences): a proportional controller that steers the KL to
// `target` within about `horizon` samples:
//   e = clip(current_kl / target - 1, -0.2, 0.2),   beta <- beta * (1 + e * n_steps / horizon).
// The clip bounds how far a single noisy KL measurement can move beta.
class AdaptiveKlController final : public KlController {
 public:
  AdaptiveKlController(double init_kl_coef, double target, double horizon);
  void update(double current_kl, int64_t n_steps) override;
  double target() const { return target_; }
  double horizon() const { return horizon_; }

 private:
  double target_, horizon_;
};

}  // namespace rlhf
