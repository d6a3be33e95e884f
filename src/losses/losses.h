// The training losses as pure functions of tensors (no trainer, no model), named as in the
// papers and in TRL, so tests can pin each against the Python peer's formulas.
// B batch, T time, V vocabulary.
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
// masked), as transformers' causal-LM loss with labels = -100 outside the completion.
torch::Tensor sft_loss(const torch::Tensor& logits, const torch::Tensor& input_ids, const torch::Tensor& loss_mask);

// Bradley-Terry reward loss, TRL RewardTrainer: -log sigmoid(r_chosen - r_rejected - margin),
// mean over the batch. rewards (B); margin (B) or undefined.
torch::Tensor reward_loss(const torch::Tensor& rewards_chosen, const torch::Tensor& rewards_rejected,
                          const torch::Tensor& margin = {});

enum class DpoLossType { Sigmoid, IPO };

struct DpoOutput {
  torch::Tensor losses;            // (B)
  torch::Tensor chosen_rewards;    // (B) beta * (pi - ref) log-ratio of chosen, detached
  torch::Tensor rejected_rewards;  // (B)
};

// DPO (sigmoid, with label smoothing as in cDPO / TRL) and IPO, TRL DPOTrainer.dpo_loss.
// All logps are summed sequence logprobs (B).
DpoOutput dpo_loss(const torch::Tensor& policy_chosen_logps, const torch::Tensor& policy_rejected_logps,
                   const torch::Tensor& ref_chosen_logps, const torch::Tensor& ref_rejected_logps, double beta,
                   double label_smoothing = 0.0, DpoLossType type = DpoLossType::Sigmoid);

}  // namespace rlhf
