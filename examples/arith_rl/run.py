#!/usr/bin/env python3
"""Verifiable rewards, end to end: fine-tune a small model on two-number arithmetic (task.py), then
train it further with PPO, GRPO, RLOO, online DPO and best-of-n against an exact-answer verifier
(`rlhf ppo --algorithm A`, reward = "exact_answer"), every algorithm on the same budget of sampled
completions, and print one table: held-out exact-match accuracy (greedy and sampled at the training
temperature) with Wilson 95% intervals, the paired change against the starting model with a
bootstrap 95% interval, the KL to the starting model, and generated tokens per second.

    python3 examples/arith_rl/run.py [--out runs/arith_rl] [--seed 0] [--algorithms ppo,grpo,...]

Run from the repository root after building. The fine-tuned start is cached (a rerun whose inputs
did not change reuses it). --model starts from a model you already have instead of fine-tuning
stories260K; --quick is a smoke run of a few minutes.
"""
import argparse
import importlib.util
import json
import os
import random
import re
import sys
import time
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import task  # noqa: E402

# The application-layer example's helpers (running commands, caching, Wilson intervals).
_spec = importlib.util.spec_from_file_location("apps_run", os.path.join(ROOT, "examples", "apps", "run.py"))
apps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(apps)
log, run, wilson = apps.log, apps.run, apps.wilson

RL_CONFIG = os.path.join(HERE, "rl.toml")
# Per algorithm: its settings on top of rl.toml (as command-line flags). Every row samples rollout_batch completions an
# iteration for the same number of iterations: the same budget of samples. group_size is the
# samples per prompt (ppo: 1 each of rollout_batch prompts).
ALGORITHMS = {
    "ppo": {"algorithm": "ppo", "group_size": 1, "value_model": "policy"},
    "grpo": {"algorithm": "grpo", "group_size": 8},
    "rloo": {"algorithm": "rloo", "group_size": 8},
    "online_dpo": {"algorithm": "online_dpo", "group_size": 2},
    "best_of_n": {"algorithm": "best_of_n", "group_size": 8},
}


def train_sft(args, data_dir):
    """Fine-tunes stories260K on the task (or reuses the cached run); returns the model folder."""
    converted = os.path.join(args.out, "stories260k")
    if not os.path.exists(os.path.join(converted, "config.json")):
        run([args.rlhf, "convert", "--in", os.path.join(apps.data_dir(), "stories260K", "stories260K.gguf"),
             "--out", converted])
    config = os.path.join(HERE, "sft.toml")
    overrides = ["--seed", str(args.seed)] + (["--max-steps", "100"] if args.quick else [])
    run_dir = os.path.join(args.out, "sft")
    key = apps.sha256_files([os.path.join(data_dir, "sft.jsonl"), config], json.dumps(overrides))
    key_file, model = os.path.join(run_dir, "inputs.sha256"), os.path.join(run_dir, "model")
    if os.path.exists(os.path.join(model, "config.json")) and os.path.exists(key_file) \
            and open(key_file).read().strip() == key:
        log(f"sft: reusing {model} (inputs unchanged)")
        return model
    if os.path.exists(key_file):
        os.remove(key_file)
    os.makedirs(run_dir, exist_ok=True)
    log(f"sft: rlhf sft --config {os.path.relpath(config, ROOT)} ...")
    _, secs = run([args.rlhf, "sft", "--config", config, "--model", converted, "--run-dir", run_dir,
                   "--train-data", os.path.join(data_dir, "sft.jsonl"), *overrides],
                  log_file=os.path.join(args.out, "sft.log"))
    with open(key_file, "w") as f:
        f.write(key + "\n")
    log(f"sft: {secs / 60:.1f} min")
    return model


def train_rl(args, name, start, data_dir):
    """One algorithm from the start model; returns (model folder, its metrics lines, wall seconds)."""
    run_dir = os.path.join(args.out, "rl", name)
    settings = {**ALGORITHMS[name], "seed": args.seed}
    if args.iterations:
        settings["max_steps"] = args.iterations
    flags = [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    log(f"{name}: rlhf ppo --config {os.path.relpath(RL_CONFIG, ROOT)} {' '.join(flags)} ...")
    os.makedirs(os.path.join(args.out, "rl"), exist_ok=True)
    _, secs = run([args.rlhf, "ppo", "--config", RL_CONFIG, *flags, "--model", start, "--run-dir", run_dir,
                   "--train-data", os.path.join(data_dir, "rl_prompts.jsonl")],
                  log_file=os.path.join(args.out, "rl", name + ".log"))
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    log(f"{name}: {secs:.0f} s, {len(metrics)} iterations")
    return os.path.join(run_dir, "model"), metrics, secs


def answers(args, model, data_dir, temperature, tag):
    """Held-out answers of a model: per problem, 1 if the last `The answer is N.` matches the gold
    answer (else 0), and 1 if the response worked on a scratchpad (else 0)."""
    out = os.path.join(args.out, "eval", f"{tag}_t{temperature:g}.jsonl")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    template = os.path.join(args.out, "eval", "template.txt")
    with open(template, "w") as f:
        f.write("{question}")  # the held-out questions are whole prompts
    run([args.rlhf, "cot", "--model", model, "--template", template, "--questions",
         os.path.join(data_dir, "heldout.jsonl"), "--out", out, "--max-tokens", "40", "--temperature",
         str(temperature), "--seed", str(args.seed), "--stop", "\\n"])
    pattern = re.compile(task.ANSWER_PATTERN)
    correct, scratch = [], []
    with open(out) as f:
        for line in f:
            r = json.loads(line)
            found = pattern.findall(r["reasoning"])
            correct.append(int(bool(found) and found[-1] == r["gold"]))
            scratch.append(int(task.uses_scratchpad(r["reasoning"])))
    return correct, scratch


def paired_ci(before, after, seed, reps=2000):
    """Bootstrap 95% interval of mean(after) - mean(before) over the same held-out problems."""
    rng = random.Random(seed)
    n = len(before)
    diffs = []
    for _ in range(reps):
        idx = [rng.randrange(n) for _ in range(n)]
        diffs.append(sum(after[i] - before[i] for i in idx) / n)
    diffs.sort()
    return diffs[int(0.025 * reps)], diffs[int(0.975 * reps) - 1]


def summary_row(name, greedy, sampled, base_sampled, seed, trained=None):
    """A table row from answers() of greedy and sampled decoding; `trained` = (metrics lines, wall
    seconds, rollout_batch) of a trained row."""
    (g, g_scratch), (s, s_scratch) = greedy, sampled
    n = len(g)
    row = {"algorithm": name, "n": n}
    for key, xs in (("greedy", g), ("sampled", s)):
        k = sum(xs)
        row[key] = {"accuracy": k / n, "ci95": list(wilson(k, n))}
    row["scratchpad_share"] = {"greedy": sum(g_scratch) / n, "sampled": sum(s_scratch) / n}
    if base_sampled is not None:
        row["sampled_change"] = sum(s) / n - sum(base_sampled[0]) / n
        row["sampled_change_ci95"] = list(paired_ci(base_sampled[0], s, seed))
    if trained:
        metrics, secs, rollout = trained
        tail = metrics[-max(1, len(metrics) // 10):]  # the last tenth of the iterations
        row["kl"] = sum(m["objective/kl"] for m in tail) / len(tail)
        row["train_accuracy_last"] = sum(m.get("reward/exact_answer", float("nan")) for m in tail) / len(tail)
        row["samples"] = rollout * len(metrics)
        row["response_tokens"] = round(sum(m["response_length"] for m in metrics) * rollout)
        row["seconds"] = round(secs, 1)
        row["tokens_per_s"] = row["response_tokens"] / secs
    return row


def format_table(rows):
    lines = ["| algorithm | greedy accuracy [95%] | sampled (T = 1) accuracy [95%] | sampled change vs start [95%] "
             "| scratchpad share (sampled) | KL to start (nats) | generated tok/s |",
             "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        g, s = r["greedy"], r["sampled"]
        change = (f"{r['sampled_change']:+.3f} [{r['sampled_change_ci95'][0]:+.3f}, {r['sampled_change_ci95'][1]:+.3f}]"
                  if "sampled_change" in r else "")
        kl = f"{r['kl']:.3f}" if "kl" in r else ""
        tps = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else ""
        lines.append(f"| {r['algorithm']} | {g['accuracy']:.3f} [{g['ci95'][0]:.3f}, {g['ci95'][1]:.3f}] | "
                     f"{s['accuracy']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] | {change} | "
                     f"{r['scratchpad_share']['sampled']:.2f} | {kl} | {tps} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/arith_rl", help="output folder (data, runs, evaluations, table)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS), help=f"of {', '.join(ALGORITHMS)}")
    ap.add_argument("--iterations", type=int, default=0, help="override rl.toml's max_steps (same for every row)")
    ap.add_argument("--model", help="start from this model (a local path) instead of fine-tuning stories260K")
    ap.add_argument("--quick", action="store_true", help="a smoke run: short fine-tuning, 4 iterations, 100 problems")
    ap.add_argument("--rlhf", default=os.path.join(ROOT, "build", "bin", "rlhf"), help="the rlhf binary")
    args = ap.parse_args()
    args.out = os.path.abspath(os.path.join(ROOT, args.out) if not os.path.isabs(args.out) else args.out)
    names = [a for a in args.algorithms.split(",") if a]
    for a in names:
        if a not in ALGORITHMS:
            sys.exit(f"run.py: --algorithms: unknown '{a}' (of {', '.join(ALGORITHMS)})")
    if args.quick:
        args.iterations = args.iterations or 4
    data_dir = os.path.join(args.out, "data")
    os.makedirs(data_dir, exist_ok=True)
    sizes = task.make(data_dir, args.seed, n_eval=100 if args.quick else 500)
    log(f"task: {sizes['train_problems']} training problems, {sizes['heldout_problems']} held out")

    start = args.model or train_sft(args, data_dir)
    base_g = answers(args, start, data_dir, 0, "start")
    base_s = answers(args, start, data_dir, 1, "start")
    rows = [summary_row("start (SFT)" if not args.model else "start", base_g, base_s, None, args.seed)]
    log(f"start: greedy {sum(base_g[0])}/{len(base_g[0])}, sampled {sum(base_s[0])}/{len(base_s[0])}")
    with open(RL_CONFIG, "rb") as f:
        rollout = tomllib.load(f)["rollout_batch"]  # samples an iteration, the same in every row
    for name in names:
        model, metrics, secs = train_rl(args, name, start, data_dir)
        g = answers(args, model, data_dir, 0, name)
        s = answers(args, model, data_dir, 1, name)
        row = summary_row(name, g, s, base_s, args.seed, (metrics, secs, rollout))
        rows.append(row)
        log(f"{name}: greedy {sum(g[0])}/{len(g[0])}, sampled {sum(s[0])}/{len(s[0])}, kl {row['kl']:.3f}")

    md = format_table(rows)
    minutes = (time.time() - apps.T0) / 60
    meta = {"command": " ".join(["python3", "examples/arith_rl/run.py"] + sys.argv[1:]), "commit": apps.git_commit(),
            "start": args.model or "stories260K fine-tuned here (sft.toml)", "seed": args.seed, "quick": args.quick,
            "wall_minutes": round(minutes, 1)}
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(args.out, "table.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print()
    print(md)
    print(f"\n{minutes:.1f} min; {os.path.join(args.out, 'table.md')}, table.json")


if __name__ == "__main__":
    main()
