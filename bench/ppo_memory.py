"""Peak memory of one PPO iteration at realistic shapes: full fine-tuning against LoRA, with the
frozen models (reference, reward model) in float32 or packed bf16.

    .venv/bin/python bench/ppo_memory.py [--shapes smollm2-135m,qwen2.5-0.5b] [--out results.json]

Random-weight Llama models at the named shapes (bench/shapes_vs_peers.py) stand in for the
policy and the reward model (its sequence-classification twin); one iteration of 4 prompts x
16 new tokens, one minibatch, one PPO epoch, 2 threads. Peak RSS is the process's own (wait4).
"""

import argparse, json, os, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

VARIANTS = [  # label, extra flags
    ("full fine-tuning, frozen f32", []),
    ("full fine-tuning, frozen bf16", ["--frozen-weights", "bf16"]),
    ("LoRA r 16 (all-linear), frozen f32", ["--lora-r", "16", "--lora-target-modules", "all-linear"]),
    ("LoRA r 16 (all-linear), frozen bf16", ["--lora-r", "16", "--lora-target-modules", "all-linear",
                                             "--frozen-weights", "bf16"]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="smollm2-135m,qwen2.5-0.5b")
    ap.add_argument("--variants", default="0,1,2,3", help="indices into the variants list")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "rlhf-bench", "shapes"))
    ap.add_argument("--out")
    args = ap.parse_args()
    import shapes_vs_peers
    rlhf = os.path.join(args.build, "bin", "rlhf")
    shapes_vs_peers.RLHF = rlhf
    tmp = tempfile.mkdtemp(prefix="ppo-memory-")
    prompts = os.path.join(tmp, "prompts.jsonl")
    with open(prompts, "w") as f:
        for p in ("Once upon a time", "One day, a little girl", "The cat sat", "Tom and his dog went"):
            f.write(json.dumps({"prompt": p}) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    env.pop("OMP_WAIT_POLICY", None)
    out = {"date": time.strftime("%Y-%m-%d"), "commit": subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(), "runs": []}
    print("| shape | variant | peak RSS (GiB) | iteration (s) |")
    print("|---|---|---:|---:|")
    for shape in args.shapes.split(","):
        d = shapes_vs_peers.make_model(shape, args.cache)
        for i in map(int, args.variants.split(",")):
            label, extra = VARIANTS[i]
            run = os.path.join(tmp, f"{shape}-{i}")
            cmd = [rlhf, "ppo", "--model", os.path.join(d, "lm"), "--reward-model", os.path.join(d, "cls"),
                   "--train-data", prompts, "--rollout-batch", "4", "--minibatches", "1", "--ppo-epochs", "1",
                   "--max-steps", "1", "--max-new-tokens", "16", "--penalize-missing-eos", "false",
                   "--progress", "false", "--run-dir", run, *extra]
            t0 = time.time()
            _, rss = shapes_vs_peers.child(cmd, env)
            secs = time.time() - t0
            out["runs"].append({"shape": shape, "variant": label, "peak_rss_gib": rss / 1024, "seconds": secs})
            print(f"| {shape} | {label} | {rss / 1024:.2f} | {secs:.0f} |", flush=True)
    if args.out:
        json.dump(out, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
