"""Reference numbers for tests/test_losses.cpp, computed by TRL 1.16's and transformers' own code.

Run with the project's venv: .venv/bin/python scripts/gen_loss_fixtures.py
It rewrites tests/fixtures/loss_fixtures.json (fixed seed, so the output is reproducible).

How TRL's code is reached without a real model or a Trainer: the trainers' loss methods are called
unbound with a stand-in `self` carrying the fields they read, and the "model" is a module whose
backbone returns fixed logits as hidden states and whose LM head is the identity, patched with
TRL's `add_fused_lm_head` exactly as DPOTrainer/SFTTrainer patch real models. TRL then computes
the per-token log-probabilities, the losses and the logged metrics itself.
"""

import json
import math
import os
from collections import defaultdict
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import transformers
import trl
from torch import nn
from transformers import PretrainedConfig
from transformers.loss.loss_utils import ForCausalLMLoss
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.reward_trainer import RewardTrainer
from trl.trainer.sft_trainer import SFTTrainer
from trl.trainer.utils import add_fused_lm_head, selective_log_softmax

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "loss_fixtures.json")
B, T, V = 3, 7, 11  # batch (pairs for DPO), time, vocabulary
PAD = 0


class _Backbone(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits  # (N, T, V)

    def forward(self, input_ids=None, **kwargs):
        assert input_ids.shape == self.logits.shape[:2]
        return SimpleNamespace(last_hidden_state=self.logits)


class FixedLogitsLM(nn.Module):
    """Causal LM stand-in: hidden states = the given logits, LM head = identity, so the fused head scores them."""

    is_gradient_checkpointing = False

    def __init__(self, logits, fused_outputs):
        super().__init__()
        self.config = PretrainedConfig()
        self.base_model = _Backbone(logits)
        self.lm_head = nn.Linear(V, V, bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(torch.eye(V))
        add_fused_lm_head(self, outputs=fused_outputs)

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, **kwargs):  # the unfused forward: plain logits
        return SimpleNamespace(logits=self.base_model(input_ids).last_hidden_state)


def accelerator():
    return SimpleNamespace(device=torch.device("cpu"), parallelism_config=None, num_processes=1,
                           gather=lambda t: t, gather_for_metrics=lambda t: t)


def trainer_state(model, **fields):
    return SimpleNamespace(model=model, accelerator=accelerator(), aux_loss_enabled=False,
                           _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                           _total_train_tokens=0, _tp_size=1, **fields)


def batch(prompt_lens, completion_lens, gen):
    """Right-padded (N, T) ids (pad 0, real tokens 1..V-1) and the completion mask (1 on completion tokens)."""
    n = len(prompt_lens)
    ids = torch.full((n, T), PAD, dtype=torch.long)
    mask = torch.zeros((n, T), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_lens, completion_lens)):
        ids[i, : p + c] = torch.randint(1, V, (p + c,), generator=gen)
        mask[i, p : p + c] = 1
    return ids, mask, (ids != PAD).long()


def values(t):
    """Flat list of a tensor's values (or the value of a scalar), exact: float32 round-trips through a double."""
    return t.flatten().tolist() if t.dim() else t.item()


# ---- SFT: transformers' ForCausalLMLoss and TRL SFTTrainer.compute_loss --------------------
def sft_case(gen):
    ids, mask, attn = batch([2, 3, 1], [4, 2, 6], gen)  # row 2 fills T: no padding
    logits = torch.randn(B, T, V, generator=gen) * 2
    labels = ids.masked_fill(mask == 0, -100)
    hf_loss = ForCausalLMLoss(logits, labels, vocab_size=V)

    model = FixedLogitsLM(logits, ("log_probs", "entropy", "is_top1")).train()
    state = trainer_state(model, compute_loss_func=None, label_smoother=None,
                          args=SimpleNamespace(loss_type="nll", average_tokens_across_devices=False))
    trl_loss = SFTTrainer.compute_loss(state, model, {"input_ids": ids, "attention_mask": attn, "labels": labels})
    assert torch.allclose(hf_loss, trl_loss, atol=1e-6), (hf_loss, trl_loss)

    token_logps = selective_log_softmax(logits[:, :-1], ids[:, 1:])  # (B, T-1), every position
    seq_logps = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs.sum(1)
    return {"logits": values(logits), "input_ids": ids.flatten().tolist(), "loss_mask": mask.flatten().tolist(),
            "token_logprobs": values(token_logps), "sequence_logprobs": values(seq_logps),
            "loss": values(hf_loss)}


# ---- DPO / IPO: TRL DPOTrainer._compute_loss ---------------------------------------------
def trl_dpo(policy_logits, ref_logits, ids, mask, attn, loss_type, beta, label_smoothing):
    """TRL's loss and logged metrics on a batch laid out as [chosen; rejected]."""
    model = FixedLogitsLM(policy_logits, ("log_probs", "entropy", "mean_logits", "is_top1")).train()
    state = trainer_state(model, ref_model=FixedLogitsLM(ref_logits, ("log_probs",)), ld_alpha=None,
                          precompute_ref_logps=False, f_divergence_type="reverse_kl", loss_types=[loss_type],
                          loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing, use_weighting=False,
                          args=SimpleNamespace(gradient_checkpointing_kwargs=None))
    loss = DPOTrainer._compute_loss(state, model, {"input_ids": ids, "attention_mask": attn, "completion_mask": mask},
                                    False)
    return loss.item(), {k: v[-1] for k, v in state._metrics["train"].items()}


def dpo_case(gen):
    ids_c, mask_c, attn_c = batch([2, 3, 1], [4, 3, 6], gen)
    ids_r, mask_r, attn_r = batch([2, 3, 1], [2, 4, 3], gen)
    ids_r[:, :3] = torch.where(mask_r[:, :3] == 0, ids_c[:, :3], ids_r[:, :3])  # a pair shares its prompt
    ids, mask, attn = torch.cat([ids_c, ids_r]), torch.cat([mask_c, mask_r]), torch.cat([attn_c, attn_r])
    policy_logits = torch.randn(2 * B, T, V, generator=gen) * 2
    ref_logits = policy_logits + torch.randn(2 * B, T, V, generator=gen)

    def logps(logits):
        fused = FixedLogitsLM(logits, ("log_probs",))
        return fused(input_ids=ids, labels=ids.masked_fill(mask == 0, -100), fused_lm_head=True).log_probs.sum(1)

    policy_logps, ref_logps = logps(policy_logits), logps(ref_logits)
    lengths = mask.sum(1).float()

    cases = []
    for name, trl_type, beta, ls in [("sigmoid", "sigmoid", 0.1, 0.0), ("sigmoid", "aot", 0.1, 0.1),
                                     ("sigmoid", "sigmoid", 0.5, 0.0), ("ipo", "ipo", 0.1, 0.0),
                                     ("ipo", "ipo", 0.5, 0.0)]:
        # Per pair: TRL on a batch of one pair, so its logged means are the per-pair values.
        per_pair = []
        for i in range(B):
            rows = [i, B + i]
            loss, m = trl_dpo(policy_logits[rows], ref_logits[rows], ids[rows], mask[rows], attn[rows], trl_type, beta, ls)
            assert abs(m["logps/chosen"] - policy_logps[i].item()) < 1e-5
            per_pair.append((loss, m["rewards/chosen"], m["rewards/rejected"]))
        losses = torch.tensor([p[0] for p in per_pair], dtype=torch.float64)

        # TRL 1.16's 'sigmoid' has no label smoothing any more (label_smoothing now serves 'robust' and 'exo_pair').
        # The conservative-DPO form -logsigmoid(b*d)(1-ls) - logsigmoid(-b*d)ls of earlier TRL releases survives
        # in 1.16's 'aot' loss, which on a batch of one pair (its sort is then the identity) is exactly that form:
        # so the ls = 0.1 case is TRL's own 'aot' code, checked here against the formula written out.
        d = (policy_logps[:B] - ref_logps[:B]) - (policy_logps[B:] - ref_logps[B:])
        if name == "sigmoid":
            formula = -F.logsigmoid(beta * d) * (1 - ls) - F.logsigmoid(-beta * d) * ls
            if trl_type == "sigmoid":  # the whole batch at once as well: the mean of the per-pair losses
                full, _ = trl_dpo(policy_logits, ref_logits, ids, mask, attn, "sigmoid", beta, ls)
                assert abs(full - losses.mean().item()) < 1e-5
                smoothed, _ = trl_dpo(policy_logits, ref_logits, ids, mask, attn, "sigmoid", beta, 0.1)
                assert abs(smoothed - full) < 1e-7, "TRL 1.16 'sigmoid' ignores label_smoothing"
        else:
            d_avg = (policy_logps[:B] - ref_logps[:B]) / lengths[:B] - (policy_logps[B:] - ref_logps[B:]) / lengths[B:]
            formula = (d_avg - 1 / (2 * beta)) ** 2
            full, _ = trl_dpo(policy_logits, ref_logits, ids, mask, attn, "ipo", beta, ls)
            assert abs(full - losses.mean().item()) < 1e-6 * max(1.0, full)
        assert torch.allclose(formula.double(), losses, rtol=1e-5, atol=1e-6), (formula, losses)

        cases.append({"loss_type": name, "beta": beta, "label_smoothing": ls, "losses": values(losses),
                      "loss": values(losses.mean()), "chosen_rewards": [p[1] for p in per_pair],
                      "rejected_rewards": [p[2] for p in per_pair]})

    return {"input_ids": ids.flatten().tolist(), "loss_mask": mask.flatten().tolist(),
            "policy_logits": values(policy_logits), "ref_logits": values(ref_logits),
            "policy_logps": values(policy_logps), "ref_logps": values(ref_logps), "cases": cases}


# ---- Reward model: TRL RewardTrainer.compute_loss ----------------------------------------
def reward_case(gen):
    n = 4
    rewards = torch.randn(2 * n, 1, generator=gen) * 2  # (2n, 1) as a reward head outputs: [chosen; rejected]
    margin = torch.rand(n, generator=gen) * 2

    class RewardModel(nn.Module):
        def forward(self, **kwargs):
            return SimpleNamespace(logits=rewards)

    def trl_loss(with_margin):
        model = RewardModel().train()
        state = trainer_state(model, args=SimpleNamespace(center_rewards_coefficient=None))
        inputs = {"input_ids": torch.ones(2 * n, 3, dtype=torch.long), "attention_mask": torch.ones(2 * n, 3)}
        if with_margin:
            inputs["margin"] = margin
        return RewardTrainer.compute_loss(state, model, inputs)

    return {"rewards_chosen": values(rewards[:n, 0]), "rewards_rejected": values(rewards[n:, 0]),
            "margin": values(margin), "loss": values(trl_loss(False)), "loss_margin": values(trl_loss(True))}


def main():
    gen = torch.Generator().manual_seed(1234)
    fixture = {"about": f"generated by scripts/gen_loss_fixtures.py with trl {trl.__version__}, "
                        f"transformers {transformers.__version__}, torch {torch.__version__}",
               "B": B, "T": T, "V": V,
               "sft": sft_case(gen), "dpo": dpo_case(gen), "reward": reward_case(gen)}
    with open(OUT, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
