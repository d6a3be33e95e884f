"""Reference numbers for tests/test_pg_math.cpp (src/losses/policy_gradient.h): the critic-free algorithms as their
reference implementations compute them.

Run with the project's venv: .venv/bin/python scripts/gen_pg_fixtures.py
It rewrites tests/fixtures/pg_fixtures.json (fixed seed, so the output is reproducible).

Where the numbers come from (TRL is the installed 1.16; paths are inside site-packages/trl):

  GRPO / Dr. GRPO / DAPO loss    TRL's own code, run: GRPOTrainer._compute_loss (trl/trainer/grpo_trainer.py) is
      called unbound on a stand-in `self` whose _get_per_token_logps_and_entropies hands back our logprobs, with
      one process, token-level importance sampling and no vLLM, entropy mask, off-policy mask or entropy bonus.
      Its loss, the gradient of that loss with respect to the logprobs, and the metrics it logs (kl,
      clip_ratio/low_mean, high_mean, region_mean) are recorded for loss_type grpo, bnpo, dr_grpo, dapo.
  RLOO loss                      TRL's own code, run the same way: RLOOTrainer._compute_loss
      (trl/trainer/rloo_trainer.py), a sequence-level clipped loss.
  GRPO advantages                re-expressed op for op: GRPOTrainer._generate_and_score_completions, the
      multi_objective_aggregation == "sum_then_normalize" block (scale_rewards group / batch / none, the 1e-4,
      NaN = unscorable, nan_to_num), with TRL's own trl.trainer.utils.nanstd called. The block is inline in a
      method that also generates text, so it cannot be called on its own.
  RLOO advantages                re-expressed op for op: RLOOTrainer._generate_and_score_completions (k1 KL summed
      per sequence and subtracted from the reward, the leave-one-out baseline over scorable siblings,
      normalize_advantages), again with TRL's nanstd.
  online DPO                     re-expressed op for op: trl/experimental/online_dpo/online_dpo_trainer.py,
      OnlineDPOTrainer.training_step (missing_eos_penalty, chosen = first >= second, sigmoid and ipo losses).
      TRL orders the 2B completions as [first sample of every prompt, second sample of every prompt]; the fixture
      keeps that order and the C++ test regroups it.
  REINFORCE++                    not in TRL. Re-expressed op for op from OpenRLHF (github.com/OpenRLHF/OpenRLHF):
      openrlhf/models/utils.py compute_approx_kl (k1, k3) and compute_reward (score at the last action token,
      -kl_coef * kl per token), openrlhf/trainer/ppo_utils/experience_maker.py get_cumulative_returns (the
      discounted return, advantage_estimator "reinforce"), and openrlhf/trainer/ppo_utils/replay_buffer.py
      NaiveReplayBuffer.normalize (mean and biased variance over every action token of the batch,
      rsqrt(clamp(var, 1e-8))).
  best-of-n and dynamic sampling  no peer function to call; tests/test_pg_math.cpp checks them by hand.
"""

import json
import os
from collections import defaultdict
from types import SimpleNamespace

import torch
import trl
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.rloo_trainer import RLOOTrainer
from trl.trainer.utils import nanstd

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "pg_fixtures.json")
G = 4  # completions per prompt
B, T = 6, 7  # a loss batch: completions, completion length
LENGTHS = [7, 3, 1, 5, 6, 2]
MAX_COMPLETION_LENGTH = 9  # Dr. GRPO's constant, larger than T as when no completion reached the limit


def values_of(t):
    """Flat list of a tensor's values (or the value of a scalar), exact: float32 round-trips through a double."""
    return t.flatten().tolist() if t.dim() else t.item()


# ---- group advantages ---------------------------------------------------------------------------------------
def grpo_advantages(rewards_per_func, num_generations, scale_rewards):
    """GRPOTrainer._generate_and_score_completions, sum_then_normalize with one reward function of weight 1."""
    reward_weights = torch.ones(rewards_per_func.size(1))
    unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * reward_weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable_mask] = torch.nan
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    if scale_rewards in ["group", "none"]:
        std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
        std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    elif scale_rewards == "batch":
        std_rewards = nanstd(rewards).expand_as(rewards)
    advantages = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)
    is_std_zero = torch.isclose(std_rewards, torch.zeros_like(std_rewards))
    advantages = torch.nan_to_num(advantages, nan=0.0)
    return advantages, is_std_zero


def rloo_advantages(rewards_per_func, old_per_token_logps, ref_per_token_logps, completion_mask, beta,
                    num_generations, normalize_advantages):
    """RLOOTrainer._generate_and_score_completions (no reward clipping, one reward function of weight 1)."""
    reward_weights = torch.ones(rewards_per_func.size(1))
    unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * reward_weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable_mask] = torch.nan
    if beta != 0.0:
        per_token_kl = old_per_token_logps - ref_per_token_logps
        kl = (per_token_kl * completion_mask).sum(-1)
        rewards = rewards - beta * kl
    grouped_rewards = rewards.view(-1, num_generations)
    scorable_counts = (~torch.isnan(grouped_rewards)).sum(dim=1, keepdim=True)
    grouped_sum = torch.nansum(grouped_rewards, dim=1, keepdim=True)
    baselines = (grouped_sum - grouped_rewards) / (scorable_counts - 1)
    baselines = baselines.view(-1)
    advantages = rewards - baselines
    if normalize_advantages:
        advantages = (advantages - torch.nanmean(advantages)) / (nanstd(advantages) + 1e-4)
    advantages = torch.nan_to_num(advantages, nan=0.0)
    return rewards, advantages


# ---- TRL's loss code, run on a stand-in trainer ----------------------------------------------------------------
class Identity:
    """accelerator.reduce / gather of one process."""

    num_processes = 1

    def reduce(self, t, reduction="sum"):
        return t

    def gather(self, t):
        return t

    def gather_for_metrics(self, t):
        return t


def stand_in(logprobs, **attrs):
    """A `self` for GRPOTrainer._compute_loss / RLOOTrainer._compute_loss: the model's forward is replaced by
    handing back `logprobs` (B, T), which carries the gradient."""
    ns = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=Identity(), _metrics={"train": defaultdict(list)},
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", use_vllm=False, _entropy_bonus_enabled=False)
    ns.current_gradient_accumulation_steps = 1
    ns.__dict__.update(attrs)
    ns._get_per_token_logps_and_entropies = lambda *a, **k: (logprobs, torch.zeros_like(logprobs), None)
    return ns


def model_inputs(mask):
    return {"prompt_ids": torch.zeros(mask.size(0), 2, dtype=torch.long), "prompt_mask": torch.ones(mask.size(0), 2),
            "completion_ids": torch.zeros(mask.shape, dtype=torch.long), "completion_mask": mask}


def trl_grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, loss_type, epsilon, epsilon_high, beta,
                  grad_accum, num_items_in_batch):
    lp = logprobs.clone().requires_grad_(True)
    trainer = stand_in(lp, loss_type=loss_type, epsilon_low=epsilon, epsilon_high=epsilon_high, beta=beta,
                       max_completion_length=MAX_COMPLETION_LENGTH, current_gradient_accumulation_steps=grad_accum,
                       args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=grad_accum))
    inputs = dict(model_inputs(mask), advantages=advantages, old_per_token_logps=old_logprobs,
                  ref_per_token_logps=ref_logprobs, num_items_in_batch=torch.tensor(float(num_items_in_batch)))
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return {"loss": loss.item(), "grad": values_of(lp.grad), "kl": metrics.get("kl"),
            "clip_ratio_low": metrics["clip_ratio/low_mean"], "clip_ratio_high": metrics["clip_ratio/high_mean"],
            "clip_ratio_region": metrics["clip_ratio/region_mean"]}


def trl_rloo_loss(logprobs, old_logprobs, advantages, mask, epsilon, epsilon_high):
    lp = logprobs.clone().requires_grad_(True)
    trainer = stand_in(lp, epsilon_low=epsilon, epsilon_high=epsilon_high)
    # RLOO's old_logps are the rollout's per-token logprobs summed over the completion, as the trainer stores them.
    inputs = dict(model_inputs(mask), advantages=advantages, old_logps=(old_logprobs * mask).sum(1))
    loss = RLOOTrainer._compute_loss(trainer, None, inputs)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return {"loss": loss.item(), "grad": values_of(lp.grad), "clip_ratio_low": metrics["clip_ratio/low_mean"],
            "clip_ratio_high": metrics["clip_ratio/high_mean"], "clip_ratio_region": metrics["clip_ratio/region_mean"]}


# ---- online DPO (OnlineDPOTrainer.training_step) ---------------------------------------------------------------
def online_dpo(rewards, contain_eos_token, logprobs, ref_logprobs, completion_mask, beta, loss_type,
               missing_eos_penalty):
    batch_size = rewards.size(0) // 2
    rewards = rewards.clone()
    if missing_eos_penalty is not None:
        rewards[~contain_eos_token] -= missing_eos_penalty
    first_half, second_half = rewards.split(batch_size)
    mask = first_half >= second_half
    batch_range = torch.arange(batch_size)
    chosen_indices = batch_range + (~mask * batch_size)
    rejected_indices = batch_range + (mask * batch_size)
    cr_indices = torch.cat((chosen_indices, rejected_indices), dim=0)
    cr_logprobs = logprobs[cr_indices]
    cr_ref_logprobs = ref_logprobs[cr_indices]
    padding_mask = ~completion_mask.bool()
    cr_padding_mask = padding_mask[cr_indices]
    cr_logprobs_sum = (cr_logprobs * ~cr_padding_mask).sum(1)
    cr_ref_logprobs_sum = (cr_ref_logprobs * ~cr_padding_mask).sum(1)
    chosen_logprobs_sum, rejected_logprobs_sum = torch.split(cr_logprobs_sum, batch_size)
    chosen_ref_logprobs_sum, rejected_ref_logprobs_sum = torch.split(cr_ref_logprobs_sum, batch_size)
    logits = (chosen_logprobs_sum - rejected_logprobs_sum) - (chosen_ref_logprobs_sum - rejected_ref_logprobs_sum)
    if loss_type == "sigmoid":
        losses = -torch.nn.functional.logsigmoid(beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    return {"chosen": values_of(chosen_indices), "rejected": values_of(rejected_indices),
            "penalized_rewards": values_of(rewards), "losses": values_of(losses), "loss": losses.mean().item()}


# ---- REINFORCE++ (OpenRLHF) ------------------------------------------------------------------------------------
def compute_approx_kl(log_probs, log_probs_base, kl_estimator):
    log_ratio = log_probs.float() - log_probs_base.float()
    if kl_estimator == "k3":
        log_ratio = -log_ratio
        log_ratio = log_ratio.exp() - 1 - log_ratio
    return log_ratio


def compute_reward(r, kl_coef, kl, action_mask):
    kl_reward = -kl_coef * kl
    eos_indices = action_mask.size(1) - 1 - action_mask.long().fliplr().argmax(dim=1, keepdim=True)
    last_reward = torch.zeros_like(kl).scatter_(dim=1, index=eos_indices, src=r.unsqueeze(1).to(kl.dtype))
    return last_reward + kl_reward


def get_cumulative_returns(rewards, action_mask, gamma):
    response_length = rewards.size(1)
    returns = torch.zeros_like(rewards)
    cumulative_return = torch.zeros(rewards.size(0))
    rewards = action_mask * rewards
    for t in reversed(range(response_length)):
        cumulative_return = rewards[:, t] + gamma * cumulative_return
        returns[:, t] = cumulative_return
    return returns


def normalize(advantages, action_mask):
    """NaiveReplayBuffer.normalize of one process: the statistics are over the whole batch's action tokens."""
    items_vector = advantages.float().flatten()
    action_masks_vector = action_mask.flatten()
    num_actions = action_masks_vector.sum()
    mean = items_vector.sum() / num_actions
    std = ((items_vector - mean).pow(2) * action_masks_vector).sum()
    rstd = (std / num_actions).clamp(min=1e-8).rsqrt()
    return (advantages - mean) * rstd


def main():
    gen = torch.Generator().manual_seed(20250611)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    # Group rewards, P = 5 prompts x G: a random group, a group without variance, a group with one unscorable
    # completion (NaN), a 0/1 verifier's group, and a group with a single scorable completion.
    rewards = torch.cat([randn(G, scale=2), torch.full((G,), 1.0), randn(G), torch.tensor([1.0, 0.0, 0.0, 1.0]),
                         torch.tensor([float("nan"), float("nan"), 0.7, float("nan")])])
    rewards[9] = float("nan")
    group = {"G": G, "rewards": [None if r != r else r for r in rewards.tolist()], "grpo": []}
    for scale in ("group", "batch", "none"):
        adv, is_std_zero = grpo_advantages(rewards.unsqueeze(1), G, scale)
        group["grpo"].append({"scale_rewards": scale, "advantages": values_of(adv),
                              "frac_reward_zero_std": is_std_zero.float().mean().item()})

    # RLOO: N = 20 completions with per-token logprobs for the KL penalty in the reward.
    n = rewards.numel()
    rmask = torch.zeros(n, T)
    for i in range(n):
        rmask[i, : 1 + (i * 3) % T] = 1
    old_lp = -torch.rand(n, T, generator=gen) * 3
    ref_lp = old_lp + randn(n, T, scale=0.3)
    old_lp[rmask == 0], ref_lp[rmask == 0] = 0.5, -4.0  # finite garbage on padding: TRL multiplies by the mask
    group["rloo"] = {"mask": values_of(rmask), "old_logprobs": values_of(old_lp), "ref_logprobs": values_of(ref_lp),
                     "cases": []}
    for beta, norm in ((0.0, False), (0.05, False), (0.05, True)):
        penalized, adv = rloo_advantages(rewards.unsqueeze(1), old_lp, ref_lp, rmask, beta, G, norm)
        group["rloo"]["cases"].append({"beta": beta, "normalize": norm, "advantages": values_of(adv),
                                       "rewards": [None if r != r else r for r in penalized.tolist()]})

    # A loss batch, with finite garbage on padding.
    mask = torch.zeros(B, T)
    for i, L in enumerate(LENGTHS):
        mask[i, :L] = 1
    old_logprobs = -torch.rand(B, T, generator=gen) * 3
    logprobs = old_logprobs + randn(B, T, scale=0.3)  # far enough from the old ones that both clips fire
    ref_logprobs = old_logprobs + randn(B, T, scale=0.3)
    advantages = randn(B)
    logprobs[mask == 0], old_logprobs[mask == 0], ref_logprobs[mask == 0] = -1.0, -2.0, -3.0
    tokens = int(mask.sum())
    cases = []
    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
        for epsilon, epsilon_high, beta in ((0.2, 0.2, 0.0), (0.2, 0.28, 0.04)):
            # TRL divides grpo / bnpo / dr_grpo by the accumulation steps and dapo by the window's token count: a
            # second case for each as one of 2 micro-batches (dapo: of a window with 50 tokens in all).
            for grad_accum, items in ((1, tokens), (2, 50)):
                out = trl_grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages.unsqueeze(1), mask, loss_type,
                                    epsilon, epsilon_high, beta, grad_accum, items)
                cases.append(dict(loss_type=loss_type, epsilon_low=epsilon, epsilon_high=epsilon_high, beta=beta,
                                  grad_accum=grad_accum, num_items_in_batch=items, **out))
    # per-token advantages (B, T), which _compute_loss accepts as they are
    token_advantages = randn(B, T)
    out = trl_grpo_loss(logprobs, old_logprobs, ref_logprobs, token_advantages, mask, "dapo", 0.2, 0.28, 0.0, 1, tokens)
    cases.append(dict(loss_type="dapo", epsilon_low=0.2, epsilon_high=0.28, beta=0.0, grad_accum=1,
                      num_items_in_batch=tokens, token_advantages=True, **out))
    rloo_cases = [dict(epsilon_low=lo, epsilon_high=hi, **trl_rloo_loss(logprobs, old_logprobs, advantages, mask, lo,
                                                                        hi)) for lo, hi in ((0.2, 0.2), (0.05, 0.1))]
    loss = {"B": B, "T": T, "mask": values_of(mask), "logprobs": values_of(logprobs),
            "old_logprobs": values_of(old_logprobs), "ref_logprobs": values_of(ref_logprobs),
            "advantages": values_of(advantages), "token_advantages": values_of(token_advantages),
            "max_completion_length": MAX_COMPLETION_LENGTH, "grpo": cases, "rloo": rloo_cases}

    # Online DPO: P = 5 prompts, 2 completions each, in TRL's order; prompt 3's scores tie.
    P = 5
    scores = randn(2 * P)
    scores[P + 3] = scores[3]
    contain_eos = torch.tensor([True, True, False, True, True, True, True, True, False, False])
    dmask = torch.zeros(2 * P, T)
    for i in range(2 * P):
        dmask[i, : 1 + (i * 2) % T] = 1
    d_lp = -torch.rand(2 * P, T, generator=gen) * 3
    d_ref = d_lp + randn(2 * P, T, scale=0.4)
    d_lp[dmask == 0], d_ref[dmask == 0] = 0.25, -1.5
    dpo = {"P": P, "scores": values_of(scores), "contain_eos": contain_eos.tolist(), "mask": values_of(dmask),
           "logprobs": values_of(d_lp), "ref_logprobs": values_of(d_ref), "cases": []}
    for beta, loss_type, penalty in ((0.1, "sigmoid", None), (0.1, "sigmoid", 1.0), (0.5, "ipo", None)):
        dpo["cases"].append(dict(beta=beta, loss_type=loss_type, missing_eos_penalty=penalty,
                                 **online_dpo(scores, contain_eos, d_lp, d_ref, dmask, beta, loss_type, penalty)))

    # REINFORCE++ over the loss batch's tokens: the rollout's logprobs against the reference's.
    rscores = randn(B, scale=2)
    reinforce = {"scores": values_of(rscores), "cases": []}
    for kl_coef, estimator, gamma in ((0.01, "k1", 1.0), (0.1, "k3", 1.0), (0.05, "k1", 0.9)):
        kl = compute_approx_kl(old_logprobs, ref_logprobs, estimator)
        shaped = compute_reward(rscores, kl_coef, kl, mask)
        returns = get_cumulative_returns(shaped, mask, gamma)
        adv = normalize(returns, mask)
        reinforce["cases"].append({"kl_coef": kl_coef, "estimator": estimator, "gamma": gamma,
                                   "returns": values_of(returns.masked_fill(mask == 0, 0)),
                                   "advantages": values_of(adv.masked_fill(mask == 0, 0))})

    about = f"generated by scripts/gen_pg_fixtures.py with trl {trl.__version__}, torch {torch.__version__}"
    fixture = {"about": about,
               "group": group, "loss": loss, "online_dpo": dpo, "reinforce_pp": reinforce}
    with open(OUT, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
