#!/usr/bin/env python3
"""The application-layer example, end to end: generate the synthetic world (world.py), index its
documents (`rlhf rag index`), fine-tune a small model on every format (`rlhf sft`), answer the
held-out problems with the app commands in batch mode (`rlhf cot`, `rlhf pal`, `rlhf rag ask`,
`rlhf react`), and print the table: technique, task, held-out n, accuracy, Wilson 95% interval.
The table is also written as table.md and table.json in --out.

    python3 examples/apps/run.py [--out runs/apps] [--seed 0] [--quick]

Run from the repository root after building. The trained model is cached: a rerun whose inputs
(training data, sft.toml, base model, overrides) did not change reuses it. --model evaluates a
model you already have (a path or an http(s):// OpenAI-compatible endpoint) instead of training.
"""
import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import world  # noqa: E402

T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def run(cmd, nice=False, log_file=None):
    """Runs a command (2 threads, optionally niced); its output goes to log_file when given."""
    env = dict(os.environ, OMP_NUM_THREADS="2", OMP_WAIT_POLICY="PASSIVE")
    cmd = (["nice"] if nice else []) + [str(c) for c in cmd]
    t = time.time()
    if log_file:
        with open(log_file, "w") as f:
            r = subprocess.run(cmd, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True)
        with open(log_file) as f:
            output = f.read()
    else:
        r = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = r.stdout
    if r.returncode != 0:
        sys.exit(f"run.py: `{' '.join(cmd)}` failed (exit {r.returncode}):\n{output[-3000:]}")
    return output, time.time() - t


def data_dir():
    return os.environ.get("RLHF_DATA") or os.path.join(ROOT, "..", "shared", "data")


def sha256_files(paths, extra=""):
    h = hashlib.sha256(extra.encode())
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The base model: stories260K as is, or a larger Llama initialised here with its tokenizer.

def base_model(args, out):
    converted = os.path.join(out, "stories260k")
    if not os.path.exists(os.path.join(converted, "config.json")):
        run([args.rlhf, "convert", "--in", os.path.join(data_dir(), "stories260K", "stories260K.gguf"),
             "--out", converted])
    if args.base == "stories260k":
        return converted
    m = re.fullmatch(r"llama-(\d+)x(\d+)", args.base)
    if not m:
        sys.exit(f"run.py: --base {args.base}: expected stories260k or llama-DIMxLAYERS (e.g. llama-128x6)")
    folder = os.path.join(out, args.base)
    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        dim, layers = int(m.group(1)), int(m.group(2))
        run([args.python, os.path.join(HERE, "init_model.py"), "--tokenizer-from", converted, "--out", folder,
             "--dim", dim, "--layers", layers, "--heads", max(1, dim // 16), "--seed", args.seed])
    return folder


def train(args, world_dir):
    """Fine-tunes (or reuses the cached run when its inputs did not change); returns the model folder."""
    base = base_model(args, args.out)
    config = os.path.join(HERE, "sft.toml")
    overrides = ["--seed", str(args.seed)]
    if args.quick:
        overrides += ["--max-steps", "150", "--save-every", "0"]
    if args.max_steps:
        overrides += ["--max-steps", str(args.max_steps)]
    run_dir = os.path.join(args.out, "sft")
    key = sha256_files([os.path.join(world_dir, "sft_train.jsonl"), config],
                       json.dumps([args.base, overrides]))
    key_file = os.path.join(run_dir, "inputs.sha256")
    model = os.path.join(run_dir, "model")
    if os.path.exists(os.path.join(model, "config.json")) and os.path.exists(key_file) \
            and open(key_file).read().strip() == key:
        log(f"training: reusing {model} (inputs unchanged)")
        return model
    log(f"training: rlhf sft --config {os.path.relpath(config, ROOT)} from {args.base} "
        f"(progress: {os.path.join(run_dir, 'metrics.jsonl')}) ...")
    if os.path.exists(key_file):
        os.remove(key_file)
    os.makedirs(run_dir, exist_ok=True)
    _, secs = run([args.rlhf, "sft", "--config", config, "--model", base, "--run-dir", run_dir,
                   "--train-data", os.path.join(world_dir, "sft_train.jsonl"), *overrides], nice=True,
                  log_file=os.path.join(args.out, "sft.log"))
    with open(os.path.join(run_dir, "inputs.sha256"), "w") as f:
        f.write(key + "\n")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        last = json.loads(f.readlines()[-1])
    log(f"training: {secs / 60:.1f} min, {int(last['step'])} steps, final loss {last['loss']:.3f}")
    return model


# ---------------------------------------------------------------------------------------------
# Evaluation with the app commands in batch mode

def normalize(answer):
    a = re.sub(r"\s+", " ", str(answer)).strip().rstrip(".").strip().lower()
    a = a.replace(",", "") if re.fullmatch(r"-?[\d,]+(\.\d+)?", a) else a
    if re.fullmatch(r"-?\d+\.0+", a):
        a = a.split(".")[0]
    return a


def wilson(k, n, z=1.96):
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def rows(args):
    """(technique, task, held-out file, command arguments)."""
    t = lambda name: os.path.join(HERE, "templates", name + ".txt")  # noqa: E731
    sc = args.sc_n
    return [
        ("direct", "arithmetic", "arith", ["cot", "--template", t("direct"), "--max-tokens", "24"]),
        ("CoT", "arithmetic", "arith", ["cot", "--template", t("cot"), "--max-tokens", "160"]),
        (f"CoT + self-consistency (n={sc})", "arithmetic", "arith",
         ["cot", "--template", t("cot"), "--max-tokens", "160", "--n", str(sc), "--temperature", "0.7"]),
        ("PAL", "arithmetic", "arith", ["pal", "--template", t("pal"), "--max-tokens", "96"]),
        ("closed-book", "single-hop", "single", ["cot", "--template", t("closed"), "--max-tokens", "24"]),
        ("RAG", "single-hop", "single", ["rag", "ask", "--index", args.index, "--k", "3", "--template", t("rag"),
                                         "--max-tokens", "24"]),
        ("RAG", "two-hop", "two", ["rag", "ask", "--index", args.index, "--k", "3", "--template", t("rag"),
                                   "--max-tokens", "24"]),
        ("ReAct", "two-hop", "two", ["react", "--index", args.index, "--template", t("react"), "--max-steps", "6"]),
    ]


def has_command(rlhf, sub):
    """Whether the binary lists the (sub)command, e.g. ["rag", "ask"], among its subcommands."""
    out = subprocess.run([rlhf, *sub[:-1], "--help"], capture_output=True, text=True).stdout
    return re.search(rf"^\s+{re.escape(sub[-1])}\s", out.split("Subcommands:")[-1], re.M) is not None


def evaluate(args, model, world_dir):
    eval_dir = os.path.join(args.out, "eval")
    os.makedirs(eval_dir, exist_ok=True)
    table = []
    for technique, task, split, cmd in rows(args):
        if not has_command(args.rlhf, cmd[:2] if cmd[0] == "rag" else cmd[:1]):
            log(f"{technique:<32} {task:<11} skipped: `rlhf {cmd[0]}` is not in {args.rlhf}")
            continue
        questions = os.path.join(world_dir, f"heldout_{split}.jsonl")
        slug = re.sub(r"[^a-z0-9]+", "_", f"{technique}_{task}".lower()).strip("_")
        out = os.path.join(eval_dir, slug + ".jsonl")
        extra = ["--transcript", os.path.join(eval_dir, slug + ".transcript.jsonl")] if cmd[0] == "react" else []
        _, secs = run([args.rlhf, *cmd, *extra, "--model", model, "--questions", questions, "--out", out], nice=True)
        with open(out) as f:
            results = [json.loads(line) for line in f]
        correct = sum(normalize(r.get("answer", "")) == normalize(r["gold"]) for r in results)
        lo, hi = wilson(correct, len(results))
        table.append({"technique": technique, "task": task, "n": len(results), "correct": correct,
                      "accuracy": correct / max(1, len(results)), "ci95": [lo, hi], "seconds": round(secs, 1),
                      "outputs": os.path.relpath(out, args.out)})
        log(f"{technique:<32} {task:<11} {correct}/{len(results)} ({secs:.0f} s)")
    return table


def format_table(table):
    lines = ["| technique | task | held-out n | accuracy | 95% interval (Wilson) |", "|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['technique']} | {r['task']} | {r['n']} | {r['accuracy']:.3f} | "
                     f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] |")
    return "\n".join(lines)


def git_commit():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/apps", help="output folder (world, index, model, eval outputs, table)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the world, the initial weights and training")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a few minutes): a smoke run")
    ap.add_argument("--base", default="stories260k",
                    help="base model: stories260k, or llama-DIMxLAYERS initialised here (e.g. llama-128x6)")
    ap.add_argument("--model", help="evaluate this model (path or http(s):// endpoint) instead of training one")
    ap.add_argument("--max-steps", type=int, default=0, help="override sft.toml's max_steps")
    ap.add_argument("--sc-n", type=int, default=0, help="self-consistency paths (default 8; --quick 5)")
    ap.add_argument("--rlhf", default=os.path.join(ROOT, "build", "bin", "rlhf"), help="the rlhf binary")
    ap.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"),
                    help="Python with torch and transformers (for --base llama-*)")
    args = ap.parse_args()
    args.out = os.path.abspath(os.path.join(ROOT, args.out) if not os.path.isabs(args.out) else args.out)
    args.sc_n = args.sc_n or (5 if args.quick else 8)
    os.makedirs(args.out, exist_ok=True)

    # 1. the world
    world_dir = os.path.join(args.out, "world")
    sizes = world.build(world_dir, args.seed, args.quick)
    log(f"world: {sizes['sft_examples']} training examples, {sizes['docs']} documents, held-out {sizes['heldout']}")

    # 2. the model
    model = args.model or train(args, world_dir)

    # 3. the index over every document (training and held-out entities)
    args.index = os.path.join(args.out, "index.sqlite")
    if os.path.exists(args.index):
        os.remove(args.index)
    if has_command(args.rlhf, ["rag", "index"]):
        run([args.rlhf, "rag", "index", "--docs", os.path.join(world_dir, "docs.jsonl"), "--index", args.index])
        log(f"index: {args.index}")

    # 4. held-out evaluation with the app commands
    table = evaluate(args, model, world_dir)

    # 5. the table
    md = format_table(table)
    minutes = (time.time() - T0) / 60
    meta = {"command": " ".join(["python3", "examples/apps/run.py"] + sys.argv[1:]), "commit": git_commit(),
            "model": model if args.model else args.base, "seed": args.seed, "quick": args.quick,
            "wall_minutes": round(minutes, 1)}
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(args.out, "table.json"), "w") as f:
        json.dump({"meta": meta, "rows": table}, f, indent=1)
    print()
    print(md)
    print(f"\n{minutes:.1f} min; {os.path.join(args.out, 'table.md')}, table.json")


if __name__ == "__main__":
    main()
