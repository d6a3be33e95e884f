// PPO for language models, after lm-human-preferences and TRL: rollouts from the policy with the batched
// generator, a reward per response, a per-token KL penalty against a frozen reference,
// GAE over a value model's estimates, then several epochs of clipped policy and value
// updates over reshuffled minibatches. Data-parallel over WORLD_SIZE ranks (dist/process_group.h):
// each rank generates and scores its share of the rollout, every rank then holds the whole
// rollout, and trains on its share of each micro-batch; the result is one process's run.
#pragma once
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "rewards/rewards.h"
#include "train/train_loop.h"

namespace rlhf {

struct PpoConfig {
  TrainConfig train;               // model = the policy; train_data = prompts JSONL; max_steps = PPO iterations
  // The policy-gradient algorithm on the same rollout, scoring and update loop:
  //   "ppo"          GAE over a value model's estimates, KL in the per-token rewards (below)
  //   "grpo"         group-relative advantages (group_size samples a prompt), no value model, the
  //                  k3 KL to the reference as a loss term (kl_coef; 0 leaves it out), loss_type
  //                  and scale_rewards as TRL's GRPOTrainer (Dr. GRPO: loss_type dr_grpo,
  //                  scale_rewards none; DAPO: loss_type dapo, clip_range_high 0.28)
  //   "rloo"         leave-one-out baseline within each group, the KL folded into the score, one
  //                  importance ratio per sequence (TRL's RLOOTrainer)
  //   "reinforce++"  PPO's per-token rewards, their returns as advantages whitened over the
  //                  whole batch, no value model (OpenRLHF's REINFORCE++)
  //   "online_dpo"   per prompt, its best- and worst-scored samples as a chosen/rejected pair and
  //                  the DPO loss (dpo_beta, dpo_loss) against the reference (Guo et al. 2024;
  //                  TRL's OnlineDPOTrainer), sequence log-probs at temperature 1 as TRL's
  //   "best_of_n"    per prompt, its best-scored sample (if >= best_of_n_min_score), and the SFT
  //                  loss on it (rejection-sampling fine-tuning, RAFT)
  // These two train on one item per prompt (rollout_batch / group_size of them an iteration,
  // split into the minibatches), not on every sample; kl_coef only weighs objective/rlhf_reward.
  // losses/policy_gradient.h has the math of each.
  std::string algorithm = "ppo";
  int64_t group_size = 1;          // samples per prompt (>= 2 but for ppo and reinforce++); rollout_batch counts samples
  std::string scale_rewards = "group";  // grpo: divide by the group's std, the batch's, or none
  std::string loss_type = "dapo";  // grpo: dapo, grpo, bnpo or dr_grpo aggregation
  double clip_range_high = 0;      // grpo, rloo: upper clip epsilon; 0 = clip_range
  bool normalize_advantages = false;  // rloo: whiten the advantages over the batch
  std::string reward_model;        // reward model folder (rlhf rm train); the `model` term of the reward
  RewardSpec reward;               // what scores a response: a weighted sum of terms (rewards/rewards.h)
  std::string value_model;         // empty: the reward model (head included, its normalisation folded in), else the policy with a zero head
  int64_t rollout_batch = 16;      // prompts (= responses) per PPO iteration
  int64_t minibatches = 4;         // per PPO epoch; rollout_batch (online_dpo, best_of_n: / group_size) must divide evenly
  int64_t ppo_epochs = 4;
  int64_t max_new_tokens = 32;
  int64_t max_prompt_length = 128;
  double temperature = 1.0;
  double kl_coef = 0.05;
  bool adaptive_kl = false;
  double kl_target = 6.0;
  double kl_horizon = 10000;
  std::string kl_estimator = "k1";
  double gamma = 1.0, lam = 0.95;
  double clip_range = 0.2, clip_range_value = 0.2;
  double vf_coef = 0.1, ent_coef = 0.0;
  bool whiten_rewards = false;
  double missing_eos_penalty = -1.0;  // score of a response with no EOS (penalize_missing_eos)
  bool penalize_missing_eos = true;
  double length_penalty = 0.0;        // subtracted from the score per response token
  std::string stop_string;            // empty: none; else responses end after its first occurrence
  double logprob_tolerance = 1e-3;    // generator vs trainer logprob guard (the two forward passes must agree)
  // Where the old policy's log-probs come from: "recompute" runs the policy once more over
  // each rollout after generation (as TRL does); "generator" takes the ones the sampler
  // computed while generating, saving that forward pass (float32 only: the first minibatch's
  // ratio check then guards them).
  std::string old_logprobs = "recompute";
  // The frozen models' (reference and reward model) matrices: "f32", or "bf16" / "q8_0" packed
  // for inference on the CPU (half / about a quarter of the memory; on a GPU "bf16" loads them in
  // bfloat16). Their log-probs and scores then carry that rounding: the KL starts near, not at, 0.
  std::string frozen_weights = "f32";
  // grpo, rloo: DAPO's dynamic sampling. Groups whose scores are all alike have advantage 0 and
  // only dilute the batch; further rounds of fresh prompts replace them, up to
  // max_sampling_rounds rounds in all (then zero-signal groups fill the batch).
  bool dynamic_sampling = false;
  int64_t max_sampling_rounds = 3;
  double dpo_beta = 0.1;           // online_dpo: DPO's beta (TRL's default), apart from kl_coef (a reward penalty)
  std::string dpo_loss = "sigmoid";  // online_dpo: sigmoid or ipo (on the summed log-ratios, as TRL's OnlineDPOTrainer)
  double best_of_n_min_score = -std::numeric_limits<double>::infinity();  // best_of_n: -inf keeps every prompt's best

  PpoConfig() {
    train.run_dir = "runs/ppo";
    train.lr = 1e-5;
    train.max_steps = 20;
  }
  template <class V>
  void visit(V&& v) {
    visit_train_fields(train, v);
    v("algorithm", algorithm,
      "ppo, grpo, rloo, reinforce++, online_dpo or best_of_n (the advantage or pairs and the loss; the rest of the "
      "loop is shared)");
    v("group_size", group_size,
      "Samples per prompt (>= 2 for grpo, rloo, online_dpo and best_of_n; rollout_batch counts samples)");
    v("scale_rewards", scale_rewards, "grpo: scale the group-centred rewards by the group's std, the batch's, or none");
    v("loss_type", loss_type, "grpo: how token losses are averaged: dapo (over the minibatch's tokens), grpo, bnpo or dr_grpo");
    v("clip_range_high", clip_range_high, "grpo, rloo: upper ratio clip epsilon (DAPO's clip-higher: 0.28); 0 = clip_range");
    v("normalize_advantages", normalize_advantages, "rloo: whiten the leave-one-out advantages over the batch");
    v("reward_model", reward_model, "Reward model folder (from rlhf rm train), the reward's `model` term");
    reward.visit(v);
    v("value_model", value_model, "Value model init: empty = the reward model; 'policy' = the policy with a zero head");
    v("rollout_batch", rollout_batch, "Prompts (responses) per PPO iteration");
    v("minibatches", minibatches,
      "Minibatches per PPO epoch (rollout_batch must divide evenly; for online_dpo and best_of_n, rollout_batch / "
      "group_size)");
    v("ppo_epochs", ppo_epochs, "Passes over each rollout, reshuffled each time");
    v("max_new_tokens", max_new_tokens, "Response length at most");
    v("max_prompt_length", max_prompt_length, "Prompt tokens at most (cut from the left)");
    v("temperature", temperature, "Sampling temperature; every logprob (new, old, reference) uses it");
    v("kl_coef", kl_coef, "KL penalty coefficient beta (initial value when adaptive); 0 disables the penalty");
    v("adaptive_kl", adaptive_kl, "Adapt beta towards kl_target (Ziegler et al.)");
    v("kl_target", kl_target, "Target KL (nats per response) of the adaptive controller");
    v("kl_horizon", kl_horizon, "Horizon (samples) of the adaptive controller");
    v("kl_estimator", kl_estimator, "Per-token KL estimator: k1 (log-ratio) or k3 (always >= 0)");
    v("gamma", gamma, "Discount of GAE");
    v("lam", lam, "Lambda of GAE");
    v("clip_range", clip_range, "Policy ratio clip epsilon");
    v("clip_range_value", clip_range_value, "Value clip range around the rollout's values");
    v("vf_coef", vf_coef, "Value loss coefficient");
    v("ent_coef", ent_coef, "Entropy bonus coefficient (subtracted from the loss)");
    v("whiten_rewards", whiten_rewards, "Whiten per-token rewards (without shifting the mean) before GAE");
    v("missing_eos_penalty", missing_eos_penalty, "Score given to responses that never emit EOS");
    v("penalize_missing_eos", penalize_missing_eos, "Apply missing_eos_penalty (off: truncated responses keep their score)");
    v("length_penalty", length_penalty, "Subtracted from the score per response token (EOS included): score - length_penalty * length; 0: off");
    v("stop_string", stop_string, "Responses end after the first occurrence of this text, which counts as ended like EOS (no missing-EOS penalty); empty: none");
    v("logprob_tolerance", logprob_tolerance, "Largest allowed |generator - trainer| logprob difference");
    v("old_logprobs", old_logprobs,
      "Old policy log-probs: recompute (one more policy forward per rollout, as TRL) or generator (the sampler's own; "
      "float32 only)");
    v("frozen_weights", frozen_weights,
      "Reference and reward model matrices: f32, or bf16 / q8_0 packed for inference on the CPU (less memory; their "
      "log-probs and scores carry that rounding); on a GPU, bf16 loads them in bfloat16");
    v("dynamic_sampling", dynamic_sampling,
      "grpo, rloo: DAPO's dynamic sampling: replace groups whose scores are all equal (no signal) by groups of "
      "further rounds of fresh prompts");
    v("max_sampling_rounds", max_sampling_rounds,
      "dynamic_sampling: rounds of sampling an iteration at most; zero-signal groups fill what they leave");
    v("dpo_beta", dpo_beta, "online_dpo: DPO's beta (the implicit reward's scale)");
    v("dpo_loss", dpo_loss, "online_dpo: sigmoid (DPO) or ipo, on the summed sequence log-ratios");
    v("best_of_n_min_score", best_of_n_min_score,
      "best_of_n: keep a prompt's best sample only if it scores at least this; -inf keeps every prompt's");
  }
};

// Scores (B) of responses to prompts; the reward model on the CLI, anything in tests. Called
// on the calling thread, while the value model's forward runs on a helper thread.
using RewardFn = std::function<std::vector<double>(const std::vector<std::string>& prompts,
                                                   const std::vector<std::string>& responses,
                                                   const std::vector<std::vector<int32_t>>& response_tokens)>;

// Extra metrics of a rollout (e.g. a gold score the reward model stands in for), merged
// into that iteration's line of metrics.jsonl.
using RolloutMetricsFn = std::function<Metrics(const std::vector<std::string>& prompts,
                                               const std::vector<std::string>& responses)>;

// Range checks of every field (an Error naming the field and the value).
void validate(const PpoConfig& c);

// One iteration's rollout as the update sees it, laid out as [left-padded prompt | right-padded
// response]: P prompt columns, R response columns.
struct PpoRolloutView {
  torch::Tensor ids, mask;        // (B, P + R) int64; mask 1 = real token
  torch::Tensor response_mask;    // (B, R) float, 1 = generated token
  int64_t P = 0, R = 0;
  torch::Tensor scores;           // (B) as trained on: the reward's, then the missing-EOS and length penalties
  torch::Tensor logprobs;         // (B, R) the policy's at the rollout (old log-probs), at the temperature
  torch::Tensor ref_logprobs;     // (B, R) the reference's, at the temperature
  torch::Tensor values;           // (B, R) the value model's V(s_t) at the rollout
  torch::Tensor rewards;          // (B, R) per-token rewards (-kl_coef * kl, score at the last token), before whitening
  torch::Tensor returns;          // (B, R) GAE's returns, the value head's targets
};

// Test seams (tests/e2e/test_ppo.cpp): a test watches what a real run computes, or injects the
// faults the run's guards exist for, without production code having a way to cause them.
struct PpoProbes {
  std::function<void(const PpoRolloutView&)> on_rollout;         // each iteration, before its update
  std::function<void(torch::Tensor& logprobs)> after_generation;  // (B, R) the generator's, before the guard reads them
  std::function<void(torch::Tensor& logprobs)> before_update;     // (B, R) the old log-probs, before the first epoch
};

// Runs PPO; `reward` overrides cfg.reward (the spec) when given. A spec other than "model" alone
// logs each term's batch mean as reward/<term>. Writes RUN_DIR/model (the policy).
Metrics train_ppo(PpoConfig cfg, bool resume, const RewardFn& reward = {}, int64_t stop_after = 0,
                  const RolloutMetricsFn& rollout_metrics = {}, const PpoProbes& probes = {});

}  // namespace rlhf
