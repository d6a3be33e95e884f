// The training losses as pure functions of tensors (no trainer, no model), named as in the
// papers and in TRL, so tests can pin each against the Python peer's formulas.
// B batch, T time, V vocabulary. The math runs in float32 whatever the logits' dtype, on
// the inputs' device, and every loss is differentiable with respect to its inputs.
#pragma once
#include <torch/torch.h>

namespace rlhf {

// log pi(token_t | tokens_<t) of the tokens that follow each position: logits (B, T, V) at
// position t score token t+1. Returns (B, T-1): logprob of input_ids[:, 1:].
torch::Tensor token_logprobs(const torch::Tensor& logits, const torch::Tensor& input_ids);

// Sum over the completion of the token logprobs: mask (B, T) as TokenBatch::loss_mask
// (1 on completion tokens). Returns (B).
torch::Tensor sequence_logprobs(const torch::Tensor& logits, const torch::Tensor& input_ids,
                                const torch::Tensor& loss_mask);

// Supervised fine-tuning: mean cross-entropy over completion tokens (prompt and padding
// masked), as transformers' causal-LM loss with labels = -100 outside the completion: one
// mean over all completion tokens of the batch (not per row), 0 when there are none (TRL
// 1.16 clamps the count to 1 where transformers would give NaN).
torch::Tensor sft_loss(const torch::Tensor& logits, const torch::Tensor& input_ids, const torch::Tensor& loss_mask);

// Bradley-Terry reward loss, TRL RewardTrainer: -log sigmoid(r_chosen - r_rejected - margin),
// mean over the batch. rewards (B); margin (B) or undefined.
// With soft labels, target (B) = P(chosen preferred): the cross-entropy of Bradley-Terry's
// probability against it, -(t log sigmoid(d) + (1 - t) log sigmoid(-d)), d = r_c - r_r - margin
// (the RLAIF reward model's loss); undefined target = 1, TRL's loss exactly.
torch::Tensor reward_loss(const torch::Tensor& rewards_chosen, const torch::Tensor& rewards_rejected,
                          const torch::Tensor& margin = {}, const torch::Tensor& target = {});

enum class DpoLossType { Sigmoid, IPO };

struct DpoOutput {
  torch::Tensor losses;            // (B) per pair; the training loss is losses.mean()
  torch::Tensor chosen_rewards;    // (B) beta * (pi - ref) summed log-ratio of chosen, detached
  torch::Tensor rejected_rewards;  // (B) same for rejected
};

// DPO and IPO as TRL 1.16 DPOTrainer._compute_loss (f_divergence_type = reverse_kl).
// All logps are summed sequence logprobs (B), as sequence_logprobs returns them.
// Sigmoid: -logsigmoid(beta*d)*(1-ls) - logsigmoid(-beta*d)*ls, d = (pi_c - ref_c) - (pi_r - ref_r).
//   label_smoothing is the conservative-DPO (cDPO) form of earlier TRL releases; TRL 1.16's
//   'sigmoid' ignores label_smoothing, and the two agree at the default 0.
// IPO: (d_avg - 1/(2*beta))^2, where each log-ratio is divided by its completion length first:
//   TRL normalises IPO per token. chosen_lengths / rejected_lengths (B) are the completion
//   token counts, loss_mask.sum(1); IPO requires them, Sigmoid ignores them.
// The rewards are beta times the summed log-ratios for both types, as TRL logs them.
DpoOutput dpo_loss(const torch::Tensor& policy_chosen_logps, const torch::Tensor& policy_rejected_logps,
                   const torch::Tensor& ref_chosen_logps, const torch::Tensor& ref_rejected_logps, double beta,
                   double label_smoothing = 0.0, DpoLossType type = DpoLossType::Sigmoid,
                   const torch::Tensor& chosen_lengths = {}, const torch::Tensor& rejected_lengths = {});

}  // namespace rlhf
