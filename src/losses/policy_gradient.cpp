// The critic-free algorithms' math as pure tensor functions. GRPO's and RLOO's advantages and
// losses follow TRL 1.16 (GRPOTrainer, RLOOTrainer), online DPO TRL's OnlineDPOTrainer,
// REINFORCE++ OpenRLHF; tests/test_pg_math.cpp pins each against scripts/gen_pg_fixtures.py.
#include "losses/policy_gradient.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"

namespace rlhf {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::string shape_of(const torch::Tensor& t) { return t.defined() ? c10::str(t.sizes()) : "undefined"; }

// (N) scores or rewards in groups of group_size: returns them as (P, G) float32.
torch::Tensor grouped(const torch::Tensor& x, int64_t group_size, const char* fn) {
  check(group_size >= 2, std::string(fn) + ": group_size must be >= 2 (a group of one has no baseline), got " +
                             std::to_string(group_size));
  check(x.defined() && x.dim() == 1 && x.size(0) > 0 && x.size(0) % group_size == 0,
        std::string(fn) + ": expected (N) with N a positive multiple of group_size " + std::to_string(group_size) +
            ", got " + shape_of(x));
  return x.to(torch::kFloat32).reshape({-1, group_size});
}

void check_like_mask(const torch::Tensor& t, const torch::Tensor& mask, const char* fn, const char* name) {
  check(mask.defined() && mask.dim() == 2, std::string(fn) + ": mask must be (B, T), got " + shape_of(mask));
  check(t.defined() && t.sizes() == mask.sizes(),
        std::string(fn) + ": " + name + " must be (B, T) like the mask " + shape_of(mask) + ", got " + shape_of(t));
}

void check_per_row(const torch::Tensor& t, int64_t B, const char* fn, const char* name) {
  check(t.defined() && t.dim() == 1 && t.size(0) == B,
        std::string(fn) + ": " + name + " must be (B) with B = " + std::to_string(B) + ", got " + shape_of(t));
}

// TRL's nanstd: the unbiased standard deviation of the non-NaN entries along `dim` (kept as a
// dimension of size 1), or of all entries as a scalar; NaN where fewer than two entries count.
torch::Tensor nanstd(const torch::Tensor& x, std::optional<int64_t> dim = std::nullopt) {
  if (!dim) return nanstd(x.reshape({1, -1}), 1).reshape({});
  auto mean = torch::nanmean(x, {*dim}, /*keepdim=*/true);
  auto var = torch::nanmean((x - mean).pow(2), {*dim}, /*keepdim=*/true);
  auto n = torch::isnan(x).logical_not().sum({*dim}, /*keepdim=*/true).to(torch::kFloat32);
  return torch::where(n > 1, var * n / (n - 1), std::numeric_limits<float>::quiet_NaN()).sqrt();
}

// The token-level pieces every clipped loss shares: the log-ratio (0 on padding, so a padded
// -inf never reaches the loss or its gradient) and the mask as booleans.
struct Ratios {
  torch::Tensor keep;       // (B, T) bool
  torch::Tensor logp;       // (B, T) float32, 0 on padding, carries the gradient
  torch::Tensor log_ratio;  // (B, T) logp - logp_old, 0 on padding
};

Ratios ratios(const torch::Tensor& logprobs, const torch::Tensor& old_logprobs, const torch::Tensor& mask,
              const char* fn) {
  check_like_mask(logprobs, mask, fn, "logprobs");
  Ratios r;
  r.keep = mask.to(logprobs.device()) != 0;
  r.logp = torch::where(r.keep, logprobs.to(torch::kFloat32), 0.0);
  if (!old_logprobs.defined()) {
    r.log_ratio = r.logp - r.logp.detach();  // on-policy: rho = 1, its gradient that of logp
  } else {
    check_like_mask(old_logprobs, mask, fn, "old_logprobs");
    r.log_ratio = r.logp - torch::where(r.keep, old_logprobs.to(r.logp.device(), torch::kFloat32), 0.0).detach();
  }
  return r;
}

void check_epsilons(double epsilon_low, double epsilon_high, const char* fn) {
  check(epsilon_low > 0 && epsilon_high > 0, std::string(fn) + ": epsilon_low and epsilon_high must be > 0, got " +
                                                 std::to_string(epsilon_low) + " and " + std::to_string(epsilon_high));
}

// The clipped surrogate as a loss, -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A), and its clip statistics.
struct Clipped {
  torch::Tensor loss;       // like rho
  torch::Tensor low, high;  // like rho, bool: the clipped branch is the one taken, below / above
};

Clipped clipped_surrogate(const torch::Tensor& log_ratio, const torch::Tensor& A, double epsilon_low,
                          double epsilon_high) {
  auto ratio = torch::exp(log_ratio);
  auto clipped_ratio = torch::clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high);
  Clipped c;
  c.loss = -torch::min(ratio * A, clipped_ratio * A);
  torch::NoGradGuard no_grad;
  c.low = (ratio < 1.0 - epsilon_low) & (A < 0);
  c.high = (ratio > 1.0 + epsilon_high) & (A > 0);
  return c;
}

// Mean of x (broadcast to keep's shape) over the real tokens; 0 when there are none, as TRL's
// clamped counts give for a micro-batch whose completions were all masked out.
torch::Tensor token_mean(const torch::Tensor& x, const torch::Tensor& keep) {
  return torch::where(keep, x.to(torch::kFloat32), 0.0).sum() / keep.sum().to(torch::kFloat32).clamp_min(1.0);
}

torch::Tensor divide(const torch::Tensor& sum, const torch::Tensor& count, const std::optional<double>& normalizer,
                     const char* fn) {
  if (!normalizer) return sum / count.clamp_min(1.0);  // TRL clamps the counts to 1 too
  check(*normalizer > 0 && std::isfinite(*normalizer),
        std::string(fn) + ": normalizer must be a finite number > 0, got " + std::to_string(*normalizer));
  return sum / *normalizer;
}

}  // namespace

// ---- group-relative advantages -----------------------------------------------------------

torch::Tensor grpo_advantages(const torch::Tensor& rewards, int64_t group_size, RewardScaling scaling) {
  auto r = grouped(rewards, group_size, "grpo_advantages");  // (P, G)
  torch::NoGradGuard no_grad;
  auto advantages = r - torch::nanmean(r, {1}, /*keepdim=*/true);
  if (scaling == RewardScaling::Group) advantages = advantages / (nanstd(r, 1) + 1e-4);
  if (scaling == RewardScaling::Batch) advantages = advantages / (nanstd(r) + 1e-4);
  // An unscorable completion (NaN) carries no signal: advantage 0, so it cannot move the policy.
  return torch::nan_to_num(advantages, 0.0).reshape({-1});
}

torch::Tensor rloo_advantages(const torch::Tensor& rewards, int64_t group_size, bool normalize) {
  auto r = grouped(rewards, group_size, "rloo_advantages");  // (P, G)
  torch::NoGradGuard no_grad;
  auto scorable = torch::isnan(r).logical_not().sum(1, /*keepdim=*/true).to(torch::kFloat32);
  // The others' mean without a loop: (group sum - own reward) / (scorable count - 1). A lone
  // scorable completion gives 0/0 = NaN, zeroed below.
  auto baseline = (torch::nansum(r, {1}, /*keepdim=*/true) - r) / (scorable - 1);
  auto advantages = (r - baseline).reshape({-1});
  if (normalize) advantages = (advantages - torch::nanmean(advantages)) / (nanstd(advantages) + 1e-4);
  return torch::nan_to_num(advantages, 0.0);
}

torch::Tensor kl_penalized_scores(const torch::Tensor& scores, const torch::Tensor& logprobs,
                                  const torch::Tensor& ref_logprobs, const torch::Tensor& mask, double beta,
                                  KlEstimator estimator) {
  check_like_mask(logprobs, mask, "kl_penalized_scores", "logprobs");
  check_like_mask(ref_logprobs, mask, "kl_penalized_scores", "ref_logprobs");
  check_per_row(scores, mask.size(0), "kl_penalized_scores", "scores");
  torch::NoGradGuard no_grad;
  auto keep = mask.to(logprobs.device()) != 0;
  // Padding zeroed before the estimate, so its KL is 0 (k1 and k3 of equal logprobs) and a padded
  // -inf or garbage log-ratio never reaches exp.
  auto kl = kl_estimate(torch::where(keep, logprobs.to(torch::kFloat32), 0.0),
                        torch::where(keep, ref_logprobs.to(logprobs.device(), torch::kFloat32), 0.0), estimator);
  return scores.to(logprobs.device(), torch::kFloat32) - beta * kl.sum(1);
}

// ---- DAPO dynamic sampling ---------------------------------------------------------------

torch::Tensor groups_with_signal(const torch::Tensor& rewards, int64_t group_size) {
  auto r = grouped(rewards, group_size, "groups_with_signal");
  auto unscorable = torch::isnan(r);
  auto highest = torch::where(unscorable, -kInf, r).amax(1);
  auto lowest = torch::where(unscorable, kInf, r).amin(1);
  return highest > lowest;  // false with fewer than two scorable rewards: -inf > inf, or x > x
}

torch::Tensor group_rows(const torch::Tensor& keep, int64_t group_size) {
  check(group_size >= 1, "group_rows: group_size must be >= 1, got " + std::to_string(group_size));
  check(keep.defined() && keep.dim() == 1, "group_rows: keep must be (P), got " + shape_of(keep));
  auto groups = torch::nonzero(keep != 0).reshape({-1, 1});  // (K, 1)
  return (groups * group_size + torch::arange(group_size, groups.options())).reshape({-1});
}

// ---- REINFORCE++ -------------------------------------------------------------------------

ReinforcePPOutput reinforce_pp_advantages(const torch::Tensor& logprobs, const torch::Tensor& ref_logprobs,
                                          const torch::Tensor& scores, const torch::Tensor& mask, double kl_coef,
                                          double gamma, KlEstimator estimator) {
  check(gamma >= 0 && gamma <= 1, "reinforce_pp_advantages: gamma must be in [0, 1], got " + std::to_string(gamma));
  auto shaped = per_token_rewards(logprobs, ref_logprobs, scores, mask, kl_coef, estimator);
  // The discounted reward-to-go is GAE with no critic and lambda 1: A_t = r_t + gamma A_{t+1}.
  auto returns = gae(shaped.rewards, torch::zeros_like(shaped.rewards), mask, gamma, 1.0).advantages;
  // Whitened over the batch, not per prompt: REINFORCE++'s answer to GRPO's per-group scaling,
  // which it finds overfits easy prompts. Biased variance, as OpenRLHF's replay buffer.
  return {masked_whiten(returns, mask), returns, shaped.kl};
}

// ---- the clipped policy-gradient loss ------------------------------------------------------

PgLossOutput clipped_pg_loss(const torch::Tensor& logprobs, const torch::Tensor& old_logprobs,
                             const torch::Tensor& advantages, const torch::Tensor& mask,
                             const ClippedPgOptions& options, const torch::Tensor& ref_logprobs) {
  constexpr const char* fn = "clipped_pg_loss";
  auto r = ratios(logprobs, old_logprobs, mask, fn);
  check_epsilons(options.epsilon_low, options.epsilon_high, fn);
  check(std::isfinite(options.beta), std::string(fn) + ": beta must be finite, got " + std::to_string(options.beta));
  check(options.beta == 0 || ref_logprobs.defined(),
        std::string(fn) + ": beta = " + std::to_string(options.beta) + " needs ref_logprobs for the KL term");
  check(options.aggregation != PgAggregation::DrGrpo || options.max_completion_length > 0,
        std::string(fn) + ": Dr. GRPO divides by max_completion_length, which must be > 0");
  check(advantages.defined() && (advantages.dim() == 1 || advantages.dim() == 2),
        std::string(fn) + ": advantages must be (B) or (B, T), got " + shape_of(advantages));
  const int64_t B = mask.size(0);
  torch::Tensor A;  // (B, 1) or (B, T), a constant
  if (advantages.dim() == 1) {
    check_per_row(advantages, B, fn, "advantages");
    A = advantages.to(r.logp.device(), torch::kFloat32).detach().unsqueeze(1);
  } else {
    check_like_mask(advantages, mask, fn, "advantages");
    A = torch::where(r.keep, advantages.to(r.logp.device(), torch::kFloat32), 0.0).detach();
  }

  auto clipped = clipped_surrogate(r.log_ratio, A, options.epsilon_low, options.epsilon_high);
  auto per_token = clipped.loss;  // (B, T)
  PgLossOutput out;
  if (ref_logprobs.defined()) {
    check_like_mask(ref_logprobs, mask, fn, "ref_logprobs");
    auto ref = torch::where(r.keep, ref_logprobs.to(r.logp.device(), torch::kFloat32), 0.0).detach();
    auto kl = kl_estimate(r.logp, ref, KlEstimator::K3);  // differentiated through logp, as GRPO
    if (options.beta != 0) per_token = per_token + options.beta * kl;
    out.kl = token_mean(kl.detach(), r.keep);
  }
  per_token = torch::where(r.keep, per_token, 0.0);

  auto tokens = r.keep.sum(1).to(torch::kFloat32);  // (B)
  auto sequences = torch::full({}, static_cast<float>(B), tokens.options());
  torch::Tensor sum;
  switch (options.aggregation) {
    case PgAggregation::Grpo:
      sum = (per_token.sum(1) / tokens.clamp_min(1.0)).sum();
      out.count = sequences;
      break;
    case PgAggregation::Bnpo:
      sum = per_token.sum() / tokens.sum().clamp_min(1.0);
      out.count = torch::ones({}, tokens.options());
      break;
    case PgAggregation::DrGrpo:
      sum = per_token.sum() / static_cast<double>(options.max_completion_length);
      out.count = sequences;
      break;
    case PgAggregation::Dapo:
      sum = per_token.sum();
      out.count = tokens.sum();
      break;
  }
  out.loss = divide(sum, out.count, options.normalizer, fn);

  torch::NoGradGuard no_grad;
  out.clip_ratio_low = token_mean(clipped.low, r.keep);
  out.clip_ratio_high = token_mean(clipped.high, r.keep);
  out.clip_ratio_region = token_mean(clipped.low | clipped.high, r.keep);
  return out;
}

PgLossOutput rloo_policy_loss(const torch::Tensor& logprobs, const torch::Tensor& old_logprobs,
                              const torch::Tensor& advantages, const torch::Tensor& mask, double epsilon_low,
                              double epsilon_high, std::optional<double> normalizer) {
  constexpr const char* fn = "rloo_policy_loss";
  auto r = ratios(logprobs, old_logprobs, mask, fn);
  check_epsilons(epsilon_low, epsilon_high, fn);
  check_per_row(advantages, mask.size(0), fn, "advantages");
  auto A = advantages.to(r.logp.device(), torch::kFloat32).detach();  // (B)
  // One ratio per sequence: the product of the token ratios, so the clip bounds the whole
  // completion's probability change rather than each token's.
  auto clipped = clipped_surrogate(r.log_ratio.sum(1), A, epsilon_low, epsilon_high);  // (B)
  PgLossOutput out;
  out.count = torch::full({}, static_cast<float>(mask.size(0)), A.options());
  out.loss = divide(clipped.loss.sum(), out.count, normalizer, fn);
  torch::NoGradGuard no_grad;
  out.clip_ratio_low = clipped.low.to(torch::kFloat32).mean();
  out.clip_ratio_high = clipped.high.to(torch::kFloat32).mean();
  out.clip_ratio_region = (clipped.low | clipped.high).to(torch::kFloat32).mean();
  return out;
}

// ---- online DPO and best-of-n: per-group selection ------------------------------------------

namespace {

// Per group, the first of the highest and the last of the lowest scorable completions (-1 where
// the group has none); the scores' value at each.
struct Extremes {
  std::vector<int64_t> best, worst;
  std::vector<float> best_score, worst_score;
};

Extremes extremes(const torch::Tensor& scores, int64_t group_size, const char* fn) {
  // A few scores per prompt: a plain loop on the CPU reads as the rule and needs no device round trips.
  auto s = grouped(scores, group_size, fn).to(torch::kCPU).contiguous();
  auto a = s.accessor<float, 2>();
  Extremes e;
  for (int64_t p = 0; p < s.size(0); ++p) {
    int64_t best = -1, worst = -1;
    for (int64_t j = 0; j < group_size; ++j) {
      const float v = a[p][j];
      if (std::isnan(v)) continue;
      if (best < 0 || v > a[p][best]) best = j;
      if (worst < 0 || v <= a[p][worst]) worst = j;
    }
    e.best.push_back(best < 0 ? -1 : p * group_size + best);
    e.worst.push_back(worst < 0 ? -1 : p * group_size + worst);
    e.best_score.push_back(best < 0 ? std::nanf("") : a[p][best]);
    e.worst_score.push_back(worst < 0 ? std::nanf("") : a[p][worst]);
  }
  return e;
}

torch::Tensor indices(const std::vector<int64_t>& v) {
  return torch::tensor(v, torch::kInt64).reshape({static_cast<int64_t>(v.size())});
}

}  // namespace

PreferencePairs preference_pairs(const torch::Tensor& scores, int64_t group_size, TiePolicy ties) {
  auto e = extremes(scores, group_size, "preference_pairs");
  std::vector<int64_t> chosen, rejected, group;
  for (size_t p = 0; p < e.best.size(); ++p) {
    if (e.best[p] < 0 || e.best[p] == e.worst[p]) continue;  // fewer than two scorable completions
    if (ties == TiePolicy::Skip && e.best_score[p] == e.worst_score[p]) continue;
    chosen.push_back(e.best[p]);
    rejected.push_back(e.worst[p]);
    group.push_back(static_cast<int64_t>(p));
  }
  return {indices(chosen), indices(rejected), indices(group)};
}

DpoOutput online_dpo_loss(const torch::Tensor& policy_logps, const torch::Tensor& ref_logps,
                          const PreferencePairs& pairs, double beta, DpoLossType type, const torch::Tensor& lengths) {
  check(policy_logps.defined() && policy_logps.dim() == 1,
        "online_dpo_loss: policy_logps must be (N), got " + shape_of(policy_logps));
  const int64_t N = policy_logps.size(0);
  check_per_row(ref_logps, N, "online_dpo_loss", "ref_logps");
  check(pairs.chosen.defined() && pairs.rejected.defined() && pairs.chosen.dim() == 1 &&
            pairs.chosen.sizes() == pairs.rejected.sizes(),
        "online_dpo_loss: pairs.chosen and pairs.rejected must both be (K), got " + shape_of(pairs.chosen) + " and " +
            shape_of(pairs.rejected));
  check(pairs.chosen.numel() > 0,
        "online_dpo_loss: no pairs (every group tied or had fewer than two scorable completions); sample again");
  const auto lo = torch::minimum(pairs.chosen.min(), pairs.rejected.min()).item<int64_t>();
  const auto hi = torch::maximum(pairs.chosen.max(), pairs.rejected.max()).item<int64_t>();
  check(lo >= 0 && hi < N, "online_dpo_loss: pair indices must lie in [0, " + std::to_string(N) + "), got [" +
                               std::to_string(lo) + ", " + std::to_string(hi) + "]");
  auto dev = policy_logps.device();
  auto chosen = pairs.chosen.to(dev), rejected = pairs.rejected.to(dev);
  auto pick = [&](const torch::Tensor& t, const torch::Tensor& idx) { return t.to(dev).index_select(0, idx); };
  torch::Tensor chosen_lengths, rejected_lengths;
  if (lengths.defined()) {
    check_per_row(lengths, N, "online_dpo_loss", "lengths");
    chosen_lengths = pick(lengths, chosen);
    rejected_lengths = pick(lengths, rejected);
  }
  return dpo_loss(pick(policy_logps, chosen), pick(policy_logps, rejected), pick(ref_logps, chosen),
                  pick(ref_logps, rejected), beta, 0.0, type, chosen_lengths, rejected_lengths);
}

torch::Tensor best_of_n(const torch::Tensor& scores, int64_t group_size, std::optional<double> min_score) {
  check(!min_score || !std::isnan(*min_score), "best_of_n: min_score must be a number, got NaN");
  auto e = extremes(scores, group_size, "best_of_n");
  std::vector<int64_t> kept;
  for (size_t p = 0; p < e.best.size(); ++p) {
    if (e.best[p] < 0) continue;                              // nothing scorable
    if (min_score && e.best_score[p] < *min_score) continue;  // rejected: even the best is not good enough
    kept.push_back(e.best[p]);
  }
  return indices(kept);
}

}  // namespace rlhf
