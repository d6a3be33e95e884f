#!/usr/bin/env python3
"""Reward model on real human preferences: Anthropic HH-RLHF (harmless-base, test split).

Splits the 2,312 pairs 80/20 by prompt with a fixed seed (pairs that share a prompt, the dialogue
up to the last "\n\nAssistant:", land on the same side, as `rlhf rm train` splits them), trains
`rlhf rm train` on the 80% (backbone:
stories260K by default), scores the held-out 20% with `rlhf rm score`, and reports held-out
pair accuracy with a 95% bootstrap interval.

    .venv/bin/python examples/hh_reward_model.py [--model M] [--epochs 1] [--out runs/hh_rm]
"""
import argparse, gzip, json, os, random, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("RLHF_DATA", os.path.join(ROOT, "..", "shared", "data"))


def prompt_of(pair):
    """The dialogue both completions continue: the common prefix up to its last "\n\nAssistant:"."""
    a, b = pair["chosen"], pair["rejected"]
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:a.rfind("\n\nAssistant:", 0, n + 1)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(DATA, "stories260K", "stories260K.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "hh_rm"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rlhf", default=os.path.join(ROOT, "build", "bin", "rlhf"))
    args = ap.parse_args()

    with gzip.open(os.path.join(DATA, "hh-rlhf-harmless-base-test", "test.jsonl.gz"), "rt") as f:
        lines = [l for l in f if l.strip()]
    groups = {}  # prompt -> its pairs, in file order
    for line in lines:
        groups.setdefault(prompt_of(json.loads(line)), []).append(line)
    prompts = list(groups)
    random.Random(args.seed).shuffle(prompts)
    train_lines, held_lines = [], []
    for p in prompts:
        (train_lines if len(train_lines) < 0.8 * len(lines) else held_lines).extend(groups[p])
    n_train = len(train_lines)
    os.makedirs(args.out, exist_ok=True)
    train, held = os.path.join(args.out, "train.jsonl"), os.path.join(args.out, "heldout.jsonl")
    open(train, "w").writelines(train_lines)
    open(held, "w").writelines(held_lines)

    subprocess.run([args.rlhf, "rm", "train", "--model", args.model, "--train-data", train, "--eval-data", held,
                    "--run-dir", os.path.join(args.out, "run"), "--epochs", str(args.epochs), "--lr", str(args.lr),
                    "--batch-size", "16", "--max-length", str(args.max_length), "--seed", str(args.seed),
                    "--norm-samples", "32"], check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([args.rlhf, "rm", "score", "--model", os.path.join(args.out, "run", "model"), "--in", held,
                          "--max-length", str(args.max_length)], check=True, capture_output=True, text=True).stdout
    correct = [1.0 if r["score_chosen"] > r["score_rejected"] else 0.0 for r in map(json.loads, out.splitlines())]

    rng = random.Random(12345)
    n = len(correct)
    boots = sorted(sum(correct[rng.randrange(n)] for _ in range(n)) / n for _ in range(2000))
    acc = sum(correct) / n
    print(f"HH-RLHF harmless-base: trained on {n_train} pairs, held-out {n} pairs ({len(prompts)} prompts, "
          f"split by prompt)")
    print(f"held-out accuracy {acc:.3f}, 95% bootstrap interval [{boots[49]:.3f}, {boots[1949]:.3f}]")


if __name__ == "__main__":
    sys.exit(main())
