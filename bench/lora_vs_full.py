#!/usr/bin/env python3
"""LoRA against full fine-tuning in rlhf.cpp: seconds per optimizer step and peak RSS of `rlhf sft`
and `rlhf dpo` at a realistic shape (default smollm2-135m, random weights, made by
bench/shapes_vs_peers.py's make_model), batch 8 x max_length 256 on HH-RLHF pairs as
shapes_vs_peers.py uses them. Each run is its own process (peak RSS from wait4); s/step is the
median of metrics.jsonl's time/step_s after 2 warm-up steps.
    env -u OMP_WAIT_POLICY .venv/bin/python bench/lora_vs_full.py [--shape smollm2-135m] [--steps 5]
        [--lora "16:all-linear,16:q_proj,v_proj"] [--threads 2]
--lora lists rank:targets settings (alpha = 2 x rank), each run against the full fine-tuning run.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes_vs_peers as sv  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="smollm2-135m", help=f"of {', '.join(sv.SHAPES)}")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lora", default="16:all-linear,16:q_proj,v_proj", help="rank:targets, comma-separated pairs")
    ap.add_argument("--workloads", default="sft,dpo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "rlhf-bench", "shapes"))
    ap.add_argument("--build", default=os.path.join(sv.ROOT, "build"))
    args = ap.parse_args()
    sv.RLHF = os.path.join(args.build, "bin", "rlhf")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    env = dict(os.environ)
    settings = []  # (label, extra flags)
    for item in split_settings(args.lora):
        r, targets = item.split(":", 1)
        settings.append((f"LoRA r={r}, {targets}",
                         ["--lora-r", r, "--lora-alpha", str(2 * int(r)), "--lora-target-modules", targets]))

    import transformers
    import train_vs_trl
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    commit = subprocess.run(["git", "-C", sv.ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"{time.strftime('%Y-%m-%d')}, commit {commit}; machine: {cpu}, {os.cpu_count()} cpus; threads "
          f"{args.threads}; load average {os.getloadavg()[0]:.2f}", flush=True)
    d = sv.make_model(args.shape, args.cache)
    lm = os.path.join(d, "lm")
    tok = transformers.AutoTokenizer.from_pretrained(lm)
    pairs = train_vs_trl.make_pairs(tok, 64, 256)
    tmp = tempfile.mkdtemp(prefix="lora-bench-")
    prefs, sft = os.path.join(tmp, "prefs.jsonl"), os.path.join(tmp, "sft.jsonl")
    with open(prefs, "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in pairs)
    with open(sft, "w") as f:
        f.writelines(json.dumps({"prompt": p["prompt"], "completion": p["chosen"]}) + "\n" for p in pairs)

    print(f"\n{args.shape}, batch 8 x 256, {args.steps} steps (median after 2)\n")
    print("| workload | setting | s / step | vs full | peak RSS (MiB) | vs full |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for kind in args.workloads.split(","):
        base = {"sft": [sv.RLHF, "sft", "--train-data", sft],
                "dpo": [sv.RLHF, "dpo", "--train-data", prefs, "--lr", "1e-5"]}[kind]
        base += ["--model", lm, "--max-steps", str(args.steps), "--batch-size", "8", "--max-length", "256",
                 "--progress", "false"]
        full = None
        for label, extra in [("full fine-tuning", [])] + settings:
            rd = os.path.join(tmp, f"{kind}-{len(os.listdir(tmp))}")
            _, rss = sv.child(base + extra + ["--run-dir", rd], env)
            s = sv.median_steps(rd)
            if full is None:
                full = (s, rss)
            print(f"| {kind} | {label} | {s:.2f} | {full[0] / s:.2f}x | {rss:.0f} | {rss / full[1]:.2f} |", flush=True)


def split_settings(text):
    """'16:all-linear,16:q_proj,v_proj' -> ['16:all-linear', '16:q_proj,v_proj'] (a new item starts at 'N:')."""
    items = []
    for part in text.split(","):
        if ":" in part and part.split(":", 1)[0].isdigit():
            items.append(part)
        else:
            items[-1] += "," + part
    return items


if __name__ == "__main__":
    main()
