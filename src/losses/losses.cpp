// The training losses (SFT, Bradley-Terry reward, DPO/IPO) as pure tensor functions; the
// formulas follow TRL 1.16 and transformers, and tests/test_losses.cpp pins them to numbers
// produced by that code (scripts/gen_loss_fixtures.py).
#include "losses/losses.h"

#include "core/error.h"

namespace rlhf {

namespace {

std::string shape_of(const torch::Tensor& t) {
  std::string s = "(";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + ")";
}

void check_tokens(const torch::Tensor& logits, const torch::Tensor& input_ids) {
  check(logits.dim() == 3, "losses: logits must be (B, T, V), got " + shape_of(logits));
  check(input_ids.dim() == 2 && input_ids.size(0) == logits.size(0) && input_ids.size(1) == logits.size(1),
        "losses: input_ids must be (B, T) matching logits " + shape_of(logits) + ", got " + shape_of(input_ids));
  check(logits.size(1) >= 2, "losses: need at least 2 tokens per row to score a next token, got T = " +
                                 std::to_string(logits.size(1)));
}

void check_mask(const torch::Tensor& input_ids, const torch::Tensor& loss_mask) {
  check(loss_mask.sizes() == input_ids.sizes(),
        "losses: loss_mask must match input_ids " + shape_of(input_ids) + ", got " + shape_of(loss_mask));
}

// B < 0: the caller's first tensor was not 1-D, so any tensor fails with its shape named.
void check_batch(const torch::Tensor& t, int64_t B, const char* name) {
  check(B >= 0 && t.dim() == 1 && t.size(0) == B,
        std::string("losses: ") + name + " must be a (B) tensor" + (B >= 0 ? " with B = " + std::to_string(B) : "") +
            ", got " + shape_of(t));
}

// Token logprobs of the completion only, 0 elsewhere: (B, T-1). The shifted mask scores token
// t+1 from position t, as TRL's labels[:, 1:] != -100. masked_fill rather than a product so a
// -inf logprob on a padding token cannot turn into NaN.
torch::Tensor completion_logprobs(const torch::Tensor& logits, const torch::Tensor& input_ids,
                                  const torch::Tensor& loss_mask) {
  check_mask(input_ids, loss_mask);
  auto logps = token_logprobs(logits, input_ids);               // (B, T-1)
  auto scored = loss_mask.slice(1, 1).to(logps.device()) != 0;  // (B, T-1)
  return logps.masked_fill(scored.logical_not(), 0.0);
}

}  // namespace

torch::Tensor token_logprobs(const torch::Tensor& logits, const torch::Tensor& input_ids) {
  check_tokens(logits, input_ids);
  auto l = logits.slice(1, 0, -1).to(torch::kFloat32);                           // (B, T-1, V)
  auto next = input_ids.slice(1, 1).to(l.device(), torch::kLong).unsqueeze(-1);  // (B, T-1, 1)
  // log_softmax then gather, without materialising the full log_softmax tensor.
  return l.gather(-1, next).squeeze(-1) - l.logsumexp(-1);
}

torch::Tensor sequence_logprobs(const torch::Tensor& logits, const torch::Tensor& input_ids,
                                const torch::Tensor& loss_mask) {
  return completion_logprobs(logits, input_ids, loss_mask).sum(1);
}

torch::Tensor sft_loss(const torch::Tensor& logits, const torch::Tensor& input_ids, const torch::Tensor& loss_mask) {
  auto logps = completion_logprobs(logits, input_ids, loss_mask);  // (B, T-1)
  auto n_tokens = (loss_mask.slice(1, 1) != 0).sum().to(logps.device(), torch::kFloat32);
  // One mean over every completion token of the batch, as transformers' ForCausalLMLoss and
  // TRL's SFTTrainer; the clamp is TRL's, so a batch without completion tokens gives 0.
  return -logps.sum() / n_tokens.clamp_min(1.0);
}

torch::Tensor reward_loss(const torch::Tensor& rewards_chosen, const torch::Tensor& rewards_rejected,
                          const torch::Tensor& margin, const torch::Tensor& target) {
  const int64_t B = rewards_chosen.dim() == 1 ? rewards_chosen.size(0) : -1;
  check_batch(rewards_chosen, B, "rewards_chosen");
  check_batch(rewards_rejected, B, "rewards_rejected");
  auto diff = rewards_chosen.to(torch::kFloat32) - rewards_rejected.to(torch::kFloat32);  // (B)
  if (margin.defined()) {
    check_batch(margin, rewards_chosen.size(0), "margin");
    diff = diff - margin.to(diff.device(), torch::kFloat32);
  }
  if (!target.defined()) return -torch::log_sigmoid(diff).mean();
  check_batch(target, rewards_chosen.size(0), "target");
  const auto t = target.to(diff.device(), torch::kFloat32);
  return -(t * torch::log_sigmoid(diff) + (1 - t) * torch::log_sigmoid(-diff)).mean();
}

DpoOutput dpo_loss(const torch::Tensor& policy_chosen_logps, const torch::Tensor& policy_rejected_logps,
                   const torch::Tensor& ref_chosen_logps, const torch::Tensor& ref_rejected_logps, double beta,
                   double label_smoothing, DpoLossType type, const torch::Tensor& chosen_lengths,
                   const torch::Tensor& rejected_lengths) {
  const int64_t B = policy_chosen_logps.dim() == 1 ? policy_chosen_logps.size(0) : -1;
  check_batch(policy_chosen_logps, B, "policy_chosen_logps");
  check_batch(policy_rejected_logps, B, "policy_rejected_logps");
  check_batch(ref_chosen_logps, B, "ref_chosen_logps");
  check_batch(ref_rejected_logps, B, "ref_rejected_logps");
  check(beta > 0, "dpo_loss: beta must be > 0, got " + std::to_string(beta));

  auto dev = policy_chosen_logps.device();
  auto f32 = [&](const torch::Tensor& t) { return t.to(dev, torch::kFloat32); };
  auto chosen_logratios = f32(policy_chosen_logps) - f32(ref_chosen_logps);        // (B)
  auto rejected_logratios = f32(policy_rejected_logps) - f32(ref_rejected_logps);  // (B)

  torch::Tensor losses;  // (B)
  if (type == DpoLossType::Sigmoid) {
    auto logits = chosen_logratios - rejected_logratios;
    losses = -torch::log_sigmoid(beta * logits) * (1.0 - label_smoothing) -
             torch::log_sigmoid(-beta * logits) * label_smoothing;
  } else {
    check(chosen_lengths.defined() && rejected_lengths.defined(),
          "dpo_loss: IPO needs chosen_lengths and rejected_lengths (completion token counts, loss_mask.sum(1))");
    check_batch(chosen_lengths, B, "chosen_lengths");
    check_batch(rejected_lengths, B, "rejected_lengths");
    // Per-token averages, as TRL: the squared loss would otherwise grow with completion length.
    auto logits = chosen_logratios / f32(chosen_lengths).clamp_min(1.0) -
                  rejected_logratios / f32(rejected_lengths).clamp_min(1.0);
    losses = (logits - 1.0 / (2.0 * beta)).pow(2);
  }
  return {losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()};
}

}  // namespace rlhf
