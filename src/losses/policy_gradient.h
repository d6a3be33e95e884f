// The critic-free policy-gradient algorithms as pure functions of tensors: group-relative
// advantages (GRPO and its Dr. GRPO variant, RLOO's leave-one-out baseline), REINFORCE++'s
// globally whitened returns, DAPO's dynamic-sampling filter, the clipped policy-gradient loss
// with clip-higher, an optional k3 KL term and TRL's four ways of averaging it, RLOO's
// sequence-level loss, online DPO's pairs, and best-of-n selection for rejection-sampling
// fine-tuning. A trainer calls them in order; the PPO pieces they build on are in ppo.h.
//
// P prompts, G completions per prompt (the group), N = P * G completions, T completion length.
// Groups are contiguous: completion j of prompt i is row i * G + j, as TRL lays them out.
// `mask` is (N, T) or (B, T), 1 on real completion tokens and 0 on padding, read as "!= 0" (see
// ppo.h: padding may hold anything, even -inf). A NaN score or reward marks a completion no
// reward function could score: it is left out of every baseline and statistic, its advantage is
// 0, and it is never picked as chosen, rejected or best, as TRL does for rewards that are None.
// Math runs in float32 on the inputs' device; only the losses are differentiable.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <optional>

#include "losses/losses.h"  // DpoOutput, DpoLossType
#include "losses/ppo.h"     // KlEstimator

namespace rlhf {

// ---- group-relative advantages -----------------------------------------------------------

// What GRPO divides the centred reward by (TRL's scale_rewards).
enum class RewardScaling {
  Group,  // the group's standard deviation: GRPO (DeepSeekMath)
  Batch,  // the standard deviation of every reward in the batch (PPO Lite)
  None,   // nothing: Dr. GRPO, which finds per-group scaling biases towards too easy or too hard prompts
};

// GRPO's advantage, one per completion: A_i = (r_i - mean(group)) / (std + 1e-4), with the
// unbiased standard deviation of the group or of the whole batch, or A_i = r_i - mean(group)
// unscaled. rewards (N) -> (N). As TRL 1.16 GRPOTrainer (scale_rewards, the 1e-4 included): a
// group without variance gets advantages 0, NaN rewards are left out of the means and
// deviations and get advantage 0. The caller gives the whole generation batch: the batch
// deviation is a statistic of all of it. Throws unless rewards is 1-D, group_size >= 2 and N a
// multiple of it. A constant, never differentiated.
torch::Tensor grpo_advantages(const torch::Tensor& rewards, int64_t group_size,
                              RewardScaling scaling = RewardScaling::Group);

// RLOO's advantage (Ahmadian et al. 2024): each completion's reward minus the mean reward of
// the other completions of its prompt, A_i = r_i - (sum_j r_j - r_i) / (G - 1), over the scorable
// siblings only (TRL 1.16 RLOOTrainer). normalize = true then whitens the advantages over the
// batch, (A - mean) / (std + 1e-4) with the unbiased deviation, TRL's normalize_advantages.
// rewards (N) -> (N); a completion without a scorable sibling gets 0. Same checks as grpo_advantages.
torch::Tensor rloo_advantages(const torch::Tensor& rewards, int64_t group_size, bool normalize = false);

// The reward with the KL penalty folded into it once per sequence, as RLOO does (TRL RLOOTrainer,
// with k1, after the RLOO paper): scores - beta * sum_t kl_t over each row's real tokens.
// scores (N); logprobs, ref_logprobs (N, T) of the rollout's tokens under the sampling policy and
// the reference. Returns (N). Not differentiated.
torch::Tensor kl_penalized_scores(const torch::Tensor& scores, const torch::Tensor& logprobs,
                                  const torch::Tensor& ref_logprobs, const torch::Tensor& mask, double beta,
                                  KlEstimator estimator = KlEstimator::K1);

// ---- DAPO dynamic sampling ---------------------------------------------------------------

// Which groups carry a learning signal: at least two scorable rewards that differ. A group
// whose completions all scored alike (all right or all wrong, for a verifier) has advantages 0
// under GRPO and RLOO and only dilutes the batch; DAPO drops such groups and samples more
// prompts until the batch is full. rewards (N) -> (P) bool. TRL logs 1 - mean of this as
// frac_reward_zero_std.
torch::Tensor groups_with_signal(const torch::Tensor& rewards, int64_t group_size);

// The rows of the kept groups: keep (P) bool -> (K * G) int64 completion indices, in order,
// for index_select on every per-completion tensor of the batch.
torch::Tensor group_rows(const torch::Tensor& keep, int64_t group_size);

// ---- REINFORCE++ -------------------------------------------------------------------------

struct ReinforcePPOutput {
  torch::Tensor advantages;  // (B, T) the returns whitened over every real token of the batch; 0 on padding
  torch::Tensor returns;     // (B, T) discounted reward-to-go, sum_{k >= t} gamma^(k-t) r_k; 0 on padding
  torch::Tensor kl;          // (B, T) the per-token KL estimate, 0 on padding
};

// REINFORCE++ (Hu 2025; OpenRLHF's advantage_estimator "reinforce"): PPO's per-token rewards
// (the score at the last real token, -kl_coef * kl on every token: per_token_rewards), their
// discounted return as the advantage, no critic, and the returns whitened with the mean and
// biased variance of all real tokens of the batch rather than per prompt. scores (B); logprobs,
// ref_logprobs (B, T) of the rollout. The whitening statistics are the batch's, so the caller
// passes the whole rollout batch (all ranks' rows when it is split). REINFORCE++-baseline is the
// same with scores first centred per group: grpo_advantages(scores, G, RewardScaling::None).
// Throws where per_token_rewards or masked_whiten do (a row or the batch without tokens).
ReinforcePPOutput reinforce_pp_advantages(const torch::Tensor& logprobs, const torch::Tensor& ref_logprobs,
                                          const torch::Tensor& scores, const torch::Tensor& mask, double kl_coef,
                                          double gamma = 1.0, KlEstimator estimator = KlEstimator::K1);

// ---- the clipped policy-gradient loss ------------------------------------------------------

// How per-token losses become one number (TRL's loss_type). Each divides a sum over this
// micro-batch by a normaliser; `count` is what this micro-batch adds to that normaliser:
enum class PgAggregation {
  Grpo,    // sum over sequences of each sequence's token mean; count = sequences (GRPO paper, length-biased)
  Bnpo,    // this micro-batch's token mean; count = 1 (normalised by the local tokens only)
  DrGrpo,  // sum over all tokens / max_completion_length; count = sequences (Dr. GRPO: no length bias)
  Dapo,    // sum over all tokens; count = tokens (DAPO: token-level over the whole batch; TRL's default)
};

struct ClippedPgOptions {
  PgAggregation aggregation = PgAggregation::Dapo;
  double epsilon_low = 0.2;           // the ratio may fall to 1 - epsilon_low where A < 0
  double epsilon_high = 0.2;          // and rise to 1 + epsilon_high where A > 0; DAPO's clip-higher uses 0.28
  double beta = 0.0;                  // coefficient of the k3 KL-to-reference term in the loss; 0 leaves it out
  int64_t max_completion_length = 0;  // Dr. GRPO's constant divisor (the generation limit); DrGrpo needs it > 0
  // The divisor of the sum. Unset: this micro-batch's own count, so the loss is the mean over it.
  // A caller that splits a batch over micro-batches or ranks passes the whole batch's count (the
  // sum of every part's `count`), so the parts' gradients add up to the whole batch's; with
  // gradients averaged rather than summed across R ranks, that count divided by R. 1 returns the
  // plain sum, for a loop that divides by the count itself (TrainLoop's loss_sum / count).
  std::optional<double> normalizer;
};

struct PgLossOutput {
  torch::Tensor loss;               // () differentiable in logprobs; a loss to MINIMISE
  torch::Tensor count;              // () this micro-batch's share of the normaliser (see PgAggregation), float
  torch::Tensor kl;                 // () masked mean of the k3 KL to the reference; undefined without ref_logprobs
  torch::Tensor clip_ratio_low;     // () share of tokens (sequences for RLOO) with A < 0 and rho < 1 - epsilon_low
  torch::Tensor clip_ratio_high;    // () share with A > 0 and rho > 1 + epsilon_high
  torch::Tensor clip_ratio_region;  // () share clipped either way
};

// GRPO's loss as TRL 1.16 GRPOTrainer._compute_loss (token-level importance sampling), per token
//   l_t = -min(rho_t A, clip(rho_t, 1 - epsilon_low, 1 + epsilon_high) A) + beta * k3_t,
//   rho_t = exp(logp_t - logp_old_t),  k3_t = exp(logp_ref - logp) - (logp_ref - logp) - 1,
// then aggregated as options.aggregation says. The KL term is in the loss, differentiated
// through logp (GRPO), not in the reward (PPO, RLOO). logprobs (B, T) carry the gradient;
// old_logprobs (B, T) are the sampling policy's, or undefined for the first (on-policy) step,
// where they equal logprobs.detach() (TRL's shortcut for num_iterations = 1); advantages (B),
// one per sequence as grpo_advantages gives them, or (B, T); ref_logprobs (B, T), needed when
// beta != 0 and, when given, logged as `kl`. Statistics are detached and over this micro-batch.
// Throws on shapes, epsilons <= 0, beta != 0 without ref_logprobs, DrGrpo without a
// max_completion_length, a normalizer <= 0.
PgLossOutput clipped_pg_loss(const torch::Tensor& logprobs, const torch::Tensor& old_logprobs,
                             const torch::Tensor& advantages, const torch::Tensor& mask,
                             const ClippedPgOptions& options = {}, const torch::Tensor& ref_logprobs = {});

// RLOO's loss as TRL 1.16 RLOOTrainer._compute_loss: one importance ratio per sequence,
// rho = exp(sum_t logp_t - sum_t logp_old_t) over the real tokens, and
//   loss = sum_i -min(rho_i A_i, clip(rho_i, 1 - epsilon_low, 1 + epsilon_high) A_i) / normalizer,
// the normaliser being B (the mean) when unset; count = sequences. No KL term: RLOO puts it in the
// reward (kl_penalized_scores). logprobs (B, T) carry the gradient; old_logprobs (B, T) or
// undefined as for clipped_pg_loss; advantages (B).
PgLossOutput rloo_policy_loss(const torch::Tensor& logprobs, const torch::Tensor& old_logprobs,
                              const torch::Tensor& advantages, const torch::Tensor& mask, double epsilon_low = 0.2,
                              double epsilon_high = 0.2, std::optional<double> normalizer = std::nullopt);

// ---- online DPO --------------------------------------------------------------------------

// What a group whose best and worst completions scored the same gives.
enum class TiePolicy {
  FirstWins,  // a pair anyway, the earlier completion chosen: TRL OnlineDPOTrainer (first >= second)
  Skip,       // no pair: the scores prefer neither, so the pair would teach noise
};

struct PreferencePairs {
  torch::Tensor chosen;    // (K) int64 completion indices into the N completions
  torch::Tensor rejected;  // (K) int64
  torch::Tensor group;     // (K) int64 prompt index of each pair, increasing
};

// Online DPO's pairs (Guo et al. 2024), from completions sampled from the current policy and
// scored by a reward model or a verifier: per prompt, chosen = the highest-scored completion (the
// first of equals), rejected = the lowest (the last of equals), so with G = 2 and a tie the first
// completion is chosen, as in TRL. Groups with fewer than two scorable completions give no pair.
// scores (N), e.g. after missing_eos_penalty (TRL subtracts it before pairing). Indices on the
// CPU; index_select moves them where the tensors live.
PreferencePairs preference_pairs(const torch::Tensor& scores, int64_t group_size,
                                 TiePolicy ties = TiePolicy::FirstWins);

// The DPO loss on those pairs: the summed completion logprobs (N) of the policy and of the
// reference (sequence_logprobs over all N completions), indexed by the pairs and handed to
// dpo_loss. lengths (N), the completion token counts, only for IPO, which dpo_loss normalises per
// token as TRL's DPOTrainer does; TRL's OnlineDPOTrainer applies IPO to the summed log-ratios
// instead, which is lengths of 1. Mean the returned losses for the training loss.
DpoOutput online_dpo_loss(const torch::Tensor& policy_logps, const torch::Tensor& ref_logps,
                          const PreferencePairs& pairs, double beta, DpoLossType type = DpoLossType::Sigmoid,
                          const torch::Tensor& lengths = {});

// ---- best-of-n / rejection sampling ------------------------------------------------------

// Best-of-n selection for rejection-sampling fine-tuning (RAFT, Llama 2's rejection sampling): of
// each prompt's G completions the highest-scored (the first of equals), dropped when its score
// is below min_score or when none is scorable. scores (N) -> (K) int64 completion indices, one per
// kept prompt in prompt order, on the CPU: the rows to fine-tune on with sft_loss.
torch::Tensor best_of_n(const torch::Tensor& scores, int64_t group_size,
                        std::optional<double> min_score = std::nullopt);

}  // namespace rlhf
