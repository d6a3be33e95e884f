// PPO math as pure tensor functions. The formulas follow TRL's PPO trainer (the last versions
// that had one) and OpenAI's lm-human-preferences where the two differ (biased variance in
// whitening, the score at the last real token); tests/test_ppo_math.cpp pins each against
// scripts/gen_ppo_fixtures.py.
#include "losses/ppo.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "core/error.h"

namespace rlhf {

namespace {

std::string shape_of(const torch::Tensor& t) { return t.defined() ? c10::str(t.sizes()) : "undefined"; }

// Every (B, T) input must match the mask exactly: a silent broadcast would average the wrong entries.
void check_like_mask(const torch::Tensor& t, const torch::Tensor& mask, const char* fn, const char* name) {
  check(mask.defined() && mask.dim() == 2, std::string(fn) + ": mask must be (B, T), got " + shape_of(mask));
  check(t.defined() && t.sizes() == mask.sizes(),
        std::string(fn) + ": " + name + " must be (B, T) like the mask " + shape_of(mask) + ", got " + shape_of(t));
}

void check_per_row(const torch::Tensor& t, const torch::Tensor& mask, const char* fn, const char* name) {
  check(
      t.defined() && t.dim() == 1 && t.size(0) == mask.size(0),
      std::string(fn) + ": " + name + " must be (B) with B = " + std::to_string(mask.size(0)) + ", got " + shape_of(t));
}

// The mask as booleans on `like`'s device.
torch::Tensor real_tokens(const torch::Tensor& mask, const torch::Tensor& like) { return mask.to(like.device()) != 0; }

torch::Tensor f32(const torch::Tensor& t, const torch::Tensor& like) { return t.to(like.device(), torch::kFloat32); }

}  // namespace

// ---- masked statistics -----------------------------------------------------------------

torch::Tensor masked_mean(const torch::Tensor& x, const torch::Tensor& mask, std::optional<int64_t> dim) {
  check_like_mask(x, mask, "masked_mean", "x");
  auto keep = real_tokens(mask, x);
  // where, not x * mask: a NaN or inf on padding would survive a product (0 * inf = NaN).
  auto kept = torch::where(keep, x.to(torch::kFloat32), 0.0);
  auto count = keep.to(torch::kFloat32);
  if (dim) return kept.sum(*dim) / count.sum(*dim);
  return kept.sum() / count.sum();
}

torch::Tensor masked_var(const torch::Tensor& x, const torch::Tensor& mask, bool unbiased) {
  auto mean = masked_mean(x, mask);
  auto var = masked_mean((x.to(torch::kFloat32) - mean).pow(2), mask);
  if (unbiased) {
    auto n = real_tokens(mask, x).sum().to(torch::kFloat32);
    var = var * (n / (n - 1));  // Bessel's correction, as TRL
  }
  return var;
}

torch::Tensor masked_whiten(const torch::Tensor& x, const torch::Tensor& mask, bool shift_mean, bool unbiased) {
  check_like_mask(x, mask, "masked_whiten", "x");
  auto keep = real_tokens(mask, x);
  // Whitening runs once per rollout batch, so it can afford the device sync that turns a
  // batch without tokens into a message instead of NaN advantages.
  const int64_t n = keep.sum().item<int64_t>();
  check(n >= (unbiased ? 2 : 1), "masked_whiten: the mask has " + std::to_string(n) + " real token(s); " +
                                     (unbiased ? "the unbiased variance needs at least 2" : "need at least 1"));
  auto xf = x.to(torch::kFloat32);
  auto mean = masked_mean(xf, mask);
  auto var = masked_var(xf, mask, unbiased);
  auto whitened = (xf - mean) * torch::rsqrt(var + 1e-8);
  if (!shift_mean) whitened = whitened + mean;
  return torch::where(keep, whitened, 0.0);
}

// ---- KL penalty and per-token rewards ----------------------------------------------------

torch::Tensor kl_estimate(const torch::Tensor& logprobs, const torch::Tensor& ref_logprobs, KlEstimator estimator) {
  check(logprobs.defined() && ref_logprobs.defined() && logprobs.sizes() == ref_logprobs.sizes(),
        "kl_estimate: logprobs " + shape_of(logprobs) + " and ref_logprobs " + shape_of(ref_logprobs) +
            " must have the same shape");
  auto logr = f32(ref_logprobs, logprobs) - logprobs.to(torch::kFloat32);  // log(pi_ref / pi)
  if (estimator == KlEstimator::K1) return -logr;
  // expm1 rather than exp - 1: for the small log-ratios of a policy near its reference, k3 ~
  // logr^2 / 2 would otherwise drown in the float32 rounding of exp(logr) - 1.
  return torch::expm1(logr) - logr;
}

PerTokenRewards per_token_rewards(const torch::Tensor& logprobs, const torch::Tensor& ref_logprobs,
                                  const torch::Tensor& scores, const torch::Tensor& mask, double kl_coef,
                                  KlEstimator estimator) {
  check_like_mask(logprobs, mask, "per_token_rewards", "logprobs");
  check_like_mask(ref_logprobs, mask, "per_token_rewards", "ref_logprobs");
  check_per_row(scores, mask, "per_token_rewards", "scores");
  torch::NoGradGuard no_grad;
  auto keep = real_tokens(mask, logprobs);
  check(keep.any(1).all().item<bool>(),
        "per_token_rewards: a response has no real token in the mask, so its score has no token to go to");

  auto kl = torch::where(keep, kl_estimate(logprobs, ref_logprobs, estimator), 0.0);  // (B, T)
  auto rewards = -kl_coef * kl;
  // The last real token of each row (the mask's last nonzero, as TRL's mask.nonzero()[-1]).
  auto positions = torch::arange(mask.size(1), keep.options().dtype(torch::kLong));
  auto last = (keep.to(torch::kLong) * positions).amax(1, /*keepdim=*/true);  // (B, 1)
  rewards.scatter_add_(1, last, f32(scores, logprobs).unsqueeze(1));
  return {rewards, kl};
}

torch::Tensor missing_eos_penalty(const torch::Tensor& scores, const torch::Tensor& has_eos, double penalty,
                                  EosPenaltyMode mode) {
  check(scores.defined() && scores.dim() == 1 && has_eos.defined() && has_eos.sizes() == scores.sizes(),
        "missing_eos_penalty: scores and has_eos must both be (B), got " + shape_of(scores) + " and " +
            shape_of(has_eos));
  auto s = scores.to(torch::kFloat32);
  auto eos = has_eos.to(s.device()) != 0;
  if (mode == EosPenaltyMode::Replace) return torch::where(eos, s, penalty);
  return torch::where(eos, s, s - penalty);
}

// ---- advantages --------------------------------------------------------------------------

GaeOutput gae(const torch::Tensor& rewards, const torch::Tensor& values, const torch::Tensor& mask, double gamma,
              double lam) {
  check_like_mask(rewards, mask, "gae", "rewards");
  check_like_mask(values, mask, "gae", "values");
  torch::NoGradGuard no_grad;
  // The recurrence is T sequential steps over a tiny (B, T) array: a plain loop on the CPU beats
  // T rounds of small kernel launches on a GPU, and reads as the formula.
  auto keep = mask.to(torch::kCPU) != 0;
  // Padding zeroed first (TRL: values * mask, rewards * mask): V after the last real token is 0.
  auto r = torch::where(keep, rewards.to(torch::kCPU, torch::kFloat32), 0.0).contiguous();
  auto v = torch::where(keep, values.to(torch::kCPU, torch::kFloat32), 0.0).contiguous();
  auto adv = torch::zeros_like(r);
  const int64_t B = r.size(0), T = r.size(1);
  // float32 like the tensors the recurrence reads; gamma * lam folded in double first, as TRL does.
  const float g = static_cast<float>(gamma), gl = static_cast<float>(gamma * lam);
  auto ra = r.accessor<float, 2>(), va = v.accessor<float, 2>(), aa = adv.accessor<float, 2>();
  for (int64_t b = 0; b < B; ++b) {
    float lastgaelam = 0.0f;
    for (int64_t t = T - 1; t >= 0; --t) {
      const float nextvalues = t + 1 < T ? va[b][t + 1] : 0.0f;
      const float delta = ra[b][t] + g * nextvalues - va[b][t];
      lastgaelam = delta + gl * lastgaelam;
      aa[b][t] = lastgaelam;
    }
  }
  auto returns = torch::where(keep, adv + v, 0.0);
  adv = torch::where(keep, adv, 0.0);
  return {adv.to(rewards.device()), returns.to(rewards.device())};
}

// ---- losses ------------------------------------------------------------------------------

PolicyLossOutput ppo_policy_loss(const torch::Tensor& logprobs, const torch::Tensor& old_logprobs,
                                 const torch::Tensor& advantages, const torch::Tensor& mask, double clip_range) {
  check_like_mask(logprobs, mask, "ppo_policy_loss", "logprobs");
  check_like_mask(old_logprobs, mask, "ppo_policy_loss", "old_logprobs");
  check_like_mask(advantages, mask, "ppo_policy_loss", "advantages");
  check(clip_range > 0, "ppo_policy_loss: clip_range must be > 0, got " + std::to_string(clip_range));
  auto keep = real_tokens(mask, logprobs);
  // The log-ratio is 0 on padding (TRL fills both logprobs with the same INVALID_LOGPROB): the
  // ratio there is 1, and no inf from a padded logprob can reach the loss or its gradient.
  auto log_ratio = torch::where(keep, logprobs.to(torch::kFloat32) - f32(old_logprobs, logprobs).detach(), 0.0);
  auto A = torch::where(keep, f32(advantages, logprobs).detach(), 0.0);
  auto ratio = torch::exp(log_ratio);
  auto pg_losses = -A * ratio;
  auto pg_losses2 = -A * torch::clamp(ratio, 1.0 - clip_range, 1.0 + clip_range);
  PolicyLossOutput out;
  out.loss = masked_mean(torch::max(pg_losses, pg_losses2), mask);

  torch::NoGradGuard no_grad;
  out.clipfrac = masked_mean((pg_losses2 > pg_losses).to(torch::kFloat32), mask);
  out.approxkl = 0.5 * masked_mean(log_ratio.pow(2), mask);
  out.ratio_mean = masked_mean(ratio, mask);
  out.ratio_min = torch::where(keep, ratio, std::numeric_limits<float>::infinity()).min();
  out.ratio_max = torch::where(keep, ratio, -std::numeric_limits<float>::infinity()).max();
  return out;
}

ValueLossOutput ppo_value_loss(const torch::Tensor& values, const torch::Tensor& old_values,
                               const torch::Tensor& returns, const torch::Tensor& mask, double clip_range_value) {
  check_like_mask(values, mask, "ppo_value_loss", "values");
  check_like_mask(old_values, mask, "ppo_value_loss", "old_values");
  check_like_mask(returns, mask, "ppo_value_loss", "returns");
  check(clip_range_value > 0, "ppo_value_loss: clip_range_value must be > 0, got " + std::to_string(clip_range_value));
  auto keep = real_tokens(mask, values);
  auto V = torch::where(keep, values.to(torch::kFloat32), 0.0);
  auto V_old = torch::where(keep, f32(old_values, values).detach(), 0.0);
  auto R = torch::where(keep, f32(returns, values).detach(), 0.0);
  // The new value may move at most clip_range_value away from the rollout's value per update;
  // taking the max of both errors makes the clip pessimistic, like the policy's.
  auto V_clipped = torch::clamp(V, V_old - clip_range_value, V_old + clip_range_value);
  auto vf_losses1 = (V - R).pow(2);
  auto vf_losses2 = (V_clipped - R).pow(2);
  ValueLossOutput out;
  out.loss = 0.5 * masked_mean(torch::max(vf_losses1, vf_losses2), mask);
  torch::NoGradGuard no_grad;
  out.clipfrac = masked_mean((vf_losses2 > vf_losses1).to(torch::kFloat32), mask);
  return out;
}

torch::Tensor explained_variance(const torch::Tensor& values, const torch::Tensor& returns, const torch::Tensor& mask) {
  check_like_mask(values, mask, "explained_variance", "values");
  check_like_mask(returns, mask, "explained_variance", "returns");
  torch::NoGradGuard no_grad;
  auto V = values.to(torch::kFloat32);
  auto R = f32(returns, values);
  auto var_returns = masked_var(R, mask);
  auto ev = 1.0 - masked_var(R - V, mask) / var_returns;
  return torch::where(var_returns == 0, std::numeric_limits<float>::quiet_NaN(), ev);
}

torch::Tensor entropy_from_logits(const torch::Tensor& logits, const torch::Tensor& mask) {
  check(logits.defined() && logits.dim() == 3 && mask.defined() && mask.dim() == 2 && logits.size(0) == mask.size(0) &&
            logits.size(1) == mask.size(1),
        "entropy_from_logits: logits must be (B, T, V) and mask (B, T), got " + shape_of(logits) + " and " +
            shape_of(mask));
  auto logp = torch::log_softmax(logits.to(torch::kFloat32), -1);  // (B, T, V)
  auto entropy = -(logp.exp() * logp).sum(-1);                     // (B, T)
  return masked_mean(entropy, mask);
}

// ---- KL coefficient controllers ----------------------------------------------------------

KlController::KlController(double kl_coef) : kl_coef_(kl_coef) {
  check(std::isfinite(kl_coef) && kl_coef >= 0, "kl_coef must be a finite number >= 0, got " + std::to_string(kl_coef));
}

AdaptiveKlController::AdaptiveKlController(double init_kl_coef, double target, double horizon)
    : KlController(init_kl_coef), target_(target), horizon_(horizon) {
  check(target > 0, "adaptive KL controller: target must be > 0, got " + std::to_string(target));
  check(horizon > 0, "adaptive KL controller: horizon must be > 0, got " + std::to_string(horizon));
}

void AdaptiveKlController::update(double current_kl, int64_t n_steps) {
  // A NaN KL would silently poison beta for the rest of the run; it means the step itself failed.
  check(std::isfinite(current_kl), "adaptive KL controller: the measured KL is " + std::to_string(current_kl) +
                                       "; the PPO step produced non-finite logprobs");
  const double proportional_error = std::clamp(current_kl / target_ - 1.0, -0.2, 0.2);
  kl_coef_ *= 1.0 + proportional_error * static_cast<double>(n_steps) / horizon_;
}

}  // namespace rlhf
