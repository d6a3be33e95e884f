#!/usr/bin/env python3
"""The demo (examples/happy_stories.toml) over several seeds: its figures depend on the seed and
on the CPU's rounding, so a single run says little about what another machine will show. Runs
`rlhf pipeline` once per seed (a run directory per seed; a rerun reuses finished stages) and
prints each seed's evaluation and the mean and range over seeds.

    .venv/bin/python examples/happy_stories_seeds.py [--seeds 0 1 2] [-- --ppo.kl-coef 0]

Flags after `--` go to every pipeline run (and name the run directories apart).
"""
import argparse, json, os, re, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = [  # summary.json field(s), label
    (("gold_before", "gold_after"), "gold score before -> after"),
    (("gold_diff",), "gold gain"),
    (("gold_diff_ci95",), "95% CI of the gain"),
    (("rm_score_before", "rm_score_after"), "reward-model score before -> after"),
    (("rm_accuracy",), "reward model held-out pair accuracy"),
    (("kl",), "KL to the reference"),
    (("distinct_2_before", "distinct_2_after"), "distinct-2 before -> after"),
]


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--config", default=os.path.join(ROOT, "examples", "happy_stories.toml"))
    ap.add_argument("--rlhf", default=os.path.join(ROOT, "build", "bin", "rlhf"))
    ap.add_argument("--runs", default=os.path.join(ROOT, "runs"))
    args = ap.parse_args(argv)

    tag = re.sub(r"[^A-Za-z0-9]+", "_", "_".join(extra)).strip("_")
    summaries = []
    for s in args.seeds:
        run_dir = os.path.join(args.runs, f"happy_stories_seed{s}" + (f"_{tag}" if tag else ""))
        subprocess.run([args.rlhf, "pipeline", args.config, "--seed", str(s), "--run-dir", run_dir, *extra],
                       check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        with open(os.path.join(run_dir, "summary.json")) as f:
            summaries.append(json.load(f))

    def cell(summary, keys):
        v = [summary[k] for k in keys]
        if keys == ("gold_diff_ci95",):
            return f"[{v[0][0]:.3f}, {v[0][1]:.3f}]"
        return " -> ".join(f"{x:.3f}" for x in v)

    print(f"{args.config} {' '.join(extra)}".strip())
    print("| | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean [min, max] |")
    print("|---|" + "---:|" * (len(args.seeds) + 1))
    for keys, label in ROWS:
        cells = [cell(x, keys) for x in summaries]
        if keys == ("gold_diff_ci95",):
            stat = f"{sum(x[keys[0]][0] > 0 for x in summaries)} of {len(summaries)} above 0"
        else:
            last = [x[keys[-1]] for x in summaries]
            stat = f"{sum(last) / len(last):.3f} [{min(last):.3f}, {max(last):.3f}]"
        print(f"| {label} | " + " | ".join(cells) + f" | {stat} |")


if __name__ == "__main__":
    sys.exit(main())
