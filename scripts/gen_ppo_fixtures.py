"""Reference numbers for tests/test_ppo_math.cpp (src/losses/ppo.h): PPO's math as TRL computed it.

Run with the project's venv: .venv/bin/python scripts/gen_ppo_fixtures.py
It rewrites tests/fixtures/ppo_fixtures.json (fixed seed, so the output is reproducible).

Where the numbers come from. TRL 1.16 (the installed version) no longer has a PPO trainer: its last home was
trl/experimental/ppo/ppo_trainer.py, and before that trl/trainer/ppo_trainer.py + trl/core.py (TRL 0.x). Of the
functions PPO needs, 1.16 still ships only `entropy_from_logits` (trl/trainer/utils.py), which is called here. The
rest is re-expressed below from those removed files, operation for operation, in float32 torch as TRL ran it:

  masked_mean / masked_var / masked_whiten   trl/experimental/ppo/ppo_trainer.py (= trl/core.py of 0.x). TRL's
      masked_whiten uses masked_var's default unbiased=True; the biased form (OpenAI's
      tf.nn.moments) is the same code with unbiased=False.
  k1 / k3 KL estimators                      experimental PPOTrainer.train, "4. compute rewards"; k3 also checked
      against the inline formula of TRL 1.16's GRPOTrainer._compute_loss.
  per-token rewards                          TRL 0.x PPOTrainer.compute_rewards: score added at mask.nonzero()[-1],
      the last real token. (The experimental trainer adds it one token later, at sequence_length + 1 when that is
      inside the response, because its mask there included the token after EOS; OpenAI's code
      use the last token, so that is what is pinned.)
  GAE                                        TRL 0.x PPOTrainer.compute_advantages: values and rewards multiplied by
      the mask, then the backward loop (the experimental trainer's loop is the same; it zeroes padding by fills).
  policy and value losses, clipfracs         both trainers; approxkl and the ratio mean as TRL 0.x's loss(), over
      the real tokens (the experimental trainer averaged over padding too, where its ratio is exp(0) = 1).
  missing-EOS penalty                        experimental trainer: scores[~contain_eos] -= penalty ("subtract");
      OpenAI's lm-human-preferences replaces the score instead ("replace").
  AdaptiveKLController                       TRL 0.x trl/trainer/utils.py (the update of lm-human-preferences).
  explained variance                         not a TRL function (TRL 0.x logged 1 - MSE / unbiased var(returns)):
      1 - var(R - V) / var(R) with biased variances, as stable-baselines3 and cleanrl compute it.
"""

import json
import os

import numpy as np
import torch
import trl
from trl.trainer.utils import entropy_from_logits

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "ppo_fixtures.json")
B, T, V = 4, 7, 9  # responses, response length, vocabulary
LENGTHS = [7, 3, 1, 5]  # right-padded responses: one full row, one of a single token


# ---- TRL's masked statistics (experimental/ppo/ppo_trainer.py, trl/core.py of 0.x) ----------------------------
def masked_mean(values, mask, axis=None):
    if axis is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(axis=axis) / mask.sum(axis=axis)


def masked_var(values, mask, unbiased=True):
    centered = values - masked_mean(values, mask)
    variance = masked_mean(centered**2, mask)
    if unbiased:
        n = mask.sum()
        variance = variance * (n / (n - 1))
    return variance


def masked_whiten(values, mask, shift_mean=True, unbiased=True):
    mean, var = masked_mean(values, mask), masked_var(values, mask, unbiased)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened += mean
    return whitened


# ---- TRL's PPO steps -----------------------------------------------------------------------------------------
def kl_estimate(logprobs, ref_logprobs, estimator):
    logr = ref_logprobs - logprobs
    return -logr if estimator == "k1" else (logr.exp() - 1) - logr


def compute_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, estimator):
    """TRL 0.x compute_rewards, row by row, with the experimental trainer's choice of estimator."""
    rewards, kls = [], []
    for score, logprob, ref_logprob, m in zip(scores, logprobs, ref_logprobs, mask):
        kl = kl_estimate(logprob, ref_logprob, estimator)
        reward = -kl_coef * kl
        reward[m.nonzero()[-1]] += score
        rewards.append(reward)
        kls.append(kl)
    return torch.stack(rewards), torch.stack(kls)


def compute_advantages(values, rewards, mask, gamma, lam):
    """TRL 0.x compute_advantages, before its whitening step."""
    values, rewards = values * mask, rewards * mask
    lastgaelam, reversed_advantages = 0, []
    for t in reversed(range(rewards.shape[-1])):
        nextvalues = values[:, t + 1] if t < rewards.shape[-1] - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        reversed_advantages.append(lastgaelam)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    return advantages, advantages + values


def policy_loss(logprobs, old_logprobs, advantages, mask, cliprange):
    ratio = torch.exp(logprobs - old_logprobs)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    return {"loss": masked_mean(torch.max(pg_losses, pg_losses2), mask),
            "clipfrac": masked_mean((pg_losses2 > pg_losses).float(), mask),
            "approxkl": 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_min": ratio[mask.bool()].min(), "ratio_max": ratio[mask.bool()].max()}


def value_loss(vpreds, values, returns, mask, cliprange_value):
    vpredclipped = torch.clamp(vpreds, values - cliprange_value, values + cliprange_value)
    vf_losses1 = (vpreds - returns) ** 2
    vf_losses2 = (vpredclipped - returns) ** 2
    return {"loss": 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), mask),
            "clipfrac": masked_mean((vf_losses2 > vf_losses1).float(), mask)}


class AdaptiveKLController:
    """TRL 0.x trl/trainer/utils.py."""

    def __init__(self, init_kl_coef, target, horizon):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current, n_steps):
        proportional_error = np.clip(current / self.target - 1, -0.2, 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon


def values_of(t):
    """Flat list of a tensor's values (or the value of a scalar), exact: float32 round-trips through a double."""
    return t.flatten().tolist() if t.dim() else t.item()


def main():
    gen = torch.Generator().manual_seed(20240607)
    mask = torch.zeros(B, T)
    for i, n in enumerate(LENGTHS):
        mask[i, :n] = 1
    pad = mask == 0

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    # Rollout tensors. Padding holds garbage on purpose: the C++ side must ignore it, so it must not matter here.
    logprobs = -torch.rand(B, T, generator=gen) * 3  # (B, T) of the sampled tokens
    ref_logprobs = logprobs + randn(B, T, scale=0.3)
    values = randn(B, T)
    scores = randn(B, scale=2)
    x = randn(B, T, scale=3) + 1.5  # for the statistics
    logprobs[pad], ref_logprobs[pad], values[pad], x[pad] = 1.0, -5.0, 9.0, 100.0

    stats = {"x": values_of(x),
             "mean": values_of(masked_mean(x, mask)), "mean_dim1": values_of(masked_mean(x, mask, 1)),
             "var_biased": values_of(masked_var(x, mask, unbiased=False)),
             "var_unbiased": values_of(masked_var(x, mask, unbiased=True)), "whiten": []}
    for shift_mean in (True, False):
        for unbiased in (False, True):
            w = masked_whiten(x, mask, shift_mean, unbiased).masked_fill(pad, 0)  # TRL fills padding right after
            stats["whiten"].append({"shift_mean": shift_mean, "unbiased": unbiased, "out": values_of(w)})

    # k3 as TRL 1.16's GRPO writes it inline: exp(ref - logp) - (ref - logp) - 1.
    k3 = kl_estimate(logprobs, ref_logprobs, "k3")
    grpo_k3 = torch.exp(ref_logprobs - logprobs) - (ref_logprobs - logprobs) - 1
    assert torch.allclose(k3, grpo_k3, atol=1e-6)

    rewards_cases = []
    for estimator, kl_coef in (("k1", 0.05), ("k3", 0.05), ("k1", 0.2)):
        rewards, kl = compute_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, estimator)
        rewards_cases.append({"estimator": estimator, "kl_coef": kl_coef,
                              "kl": values_of(kl.masked_fill(pad, 0)),
                              "rewards": values_of(rewards.masked_fill(pad, 0))})
    rewards, _ = compute_rewards(scores, logprobs, ref_logprobs, mask, 0.05, "k1")

    gae_cases = []
    for gamma, lam in ((1.0, 0.95), (0.9, 1.0), (0.99, 0.9)):
        advantages, returns = compute_advantages(values, rewards, mask, gamma, lam)
        gae_cases.append({"gamma": gamma, "lam": lam,
                          "advantages": values_of(advantages.masked_fill(pad, 0)),
                          "returns": values_of(returns.masked_fill(pad, 0)),
                          # what the trainer feeds the policy loss: TRL's masked_whiten (unbiased) and the spec's
                          "advantages_whitened_unbiased": values_of(masked_whiten(advantages, mask).masked_fill(pad, 0)),
                          "advantages_whitened": values_of(
                              masked_whiten(advantages, mask, unbiased=False).masked_fill(pad, 0))})

    # A PPO minibatch: new logprobs moved far enough from the old ones that some tokens clip.
    advantages = masked_whiten(compute_advantages(values, rewards, mask, 1.0, 0.95)[0], mask, unbiased=False)
    advantages = advantages.masked_fill(pad, 0)
    new_logprobs = (logprobs + randn(B, T, scale=0.25)).masked_fill(pad, 1.0)  # TRL: INVALID_LOGPROB on padding
    _, returns = compute_advantages(values, rewards, mask, 1.0, 0.95)
    new_values = (values + randn(B, T, scale=0.4)).masked_fill(pad, 0.0)
    policy_cases = [dict(clip_range=c, **{k: values_of(v) for k, v in policy_loss(
        new_logprobs, logprobs, advantages, mask, c).items()}) for c in (0.2, 0.1)]
    value_cases = [dict(clip_range_value=c, **{k: values_of(v) for k, v in value_loss(
        new_values, values.masked_fill(pad, 0), returns, mask, c).items()}) for c in (0.2, 0.05)]
    returns_m = returns[mask.bool()].double().numpy()
    values_m = new_values[mask.bool()].double().numpy()
    explained_variance = 1 - np.var(returns_m - values_m) / np.var(returns_m)

    logits = randn(B, T, V, scale=2)
    entropy = masked_mean(entropy_from_logits(logits), mask)  # TRL 1.16's own per-token entropy

    eos_scores = randn(6, scale=2)
    has_eos = torch.tensor([True, False, True, False, False, True])
    subtracted = eos_scores.clone()
    subtracted[~has_eos] -= 1.5  # experimental PPOTrainer, "Response Processing 3"
    replaced = torch.where(has_eos, eos_scores, torch.tensor(-1.0))  # lm-human-preferences: penalty_reward_value

    controller = AdaptiveKLController(0.2, 6.0, 10000)
    kl_updates = [[9.0, 256], [7.0, 512], [6.0, 64], [2.0, 256], [-1.0, 256], [6.3, 1000], [0.0, 128]]
    kl_values = []
    for current, n_steps in kl_updates:
        controller.update(current, n_steps)
        kl_values.append(float(controller.value))

    fixture = {
        "about": f"generated by scripts/gen_ppo_fixtures.py with trl {trl.__version__}, torch {torch.__version__}",
        "B": B, "T": T, "V": V, "mask": values_of(mask),
        "stats": stats,
        "rollout": {"logprobs": values_of(logprobs), "ref_logprobs": values_of(ref_logprobs),
                    "values": values_of(values), "scores": values_of(scores)},
        "rewards": rewards_cases,
        "gae": gae_cases,
        "losses": {"advantages": values_of(advantages), "old_logprobs": values_of(logprobs),
                   "logprobs": values_of(new_logprobs), "old_values": values_of(values),
                   "values": values_of(new_values), "returns": values_of(returns),
                   "policy": policy_cases, "value": value_cases, "explained_variance": float(explained_variance)},
        "entropy": {"logits": values_of(logits), "entropy": values_of(entropy)},
        "missing_eos": {"scores": values_of(eos_scores), "has_eos": has_eos.tolist(),
                        "subtract_penalty": 1.5, "subtracted": values_of(subtracted),
                        "replace_penalty": -1.0, "replaced": values_of(replaced)},
        "kl_controller": {"init_kl_coef": 0.2, "target": 6.0, "horizon": 10000, "updates": kl_updates,
                          "values": kl_values},
    }
    with open(OUT, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
