#!/usr/bin/env python3
"""PPO speed, rlhf.cpp vs TRL, side by side in one run: seconds per PPO iteration.

Same policy (stories260K, exported to the HF layout by `rlhf convert`), same reward model (a few
steps of `rlhf rm train` on synthetic pairs; its HF export is both sides' reward model and value
model init), same prompts (examples/happy_stories_prompts.jsonl), rollout batch B, M minibatches,
E PPO epochs, L new tokens at temperature 1, float32 on the CPU, N iterations.
    env -u OMP_WAIT_POLICY .venv/bin/python bench/ppo_vs_trl.py [--rollout-batch 16] [--minibatches 4]
        [--ppo-epochs 4] [--max-new-tokens 32] [--iterations 6] [--threads 2] [--rounds 3]

rlhf.cpp: `rlhf ppo`, time/generation_s + time/scoring_s + time/training_s from metrics.jsonl.
TRL: PPOTrainer. TRL 1.16 (the pinned version) no longer ships it; its last release with
trl.experimental.ppo is 0.29.1, so the TRL side runs in a subprocess with that release first on
PYTHONPATH (the wheel is fetched once with `pip download --no-deps` into --trl-ppo-dir, or point
--trl-ppo-dir at an unpacked copy). Phases are timed by wrapping the trainer module's functions:
generation = batch_generation; scoring = from the end of generation to the first forward with
gradients (reference log-probs, values, rewards, GAE); training = from there to on_step_end.
Total = on_step_end to on_step_end. Each side: median over the iterations after the first;
interleaved rounds, best round (by total) counts.
"""
import argparse, json, os, platform, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("RLHF_DATA", os.path.join(ROOT, "..", "shared", "data"))
PROMPTS = os.path.join(ROOT, "examples", "happy_stories_prompts.jsonl")
TRL_PPO_VERSION = "0.29.1"
PHASES = ("generation", "scoring", "training", "total")


def med(xs):
    xs = xs[1:] if len(xs) > 1 else xs
    return statistics.median(xs)


def make_prefs(path, n=64):
    rows = [json.loads(l) for l in open(PROMPTS) if l.strip()]
    happy = [" They laughed and played together all day. They were very happy.",
             " Mom gave them a big hug and they smiled.", " They became best friends and had fun."]
    sad = [" He was sad and cried.", " It broke and nobody came.", " She was angry and went home alone."]
    with open(path, "w") as f:
        for i in range(n):
            r = rows[i % len(rows)]
            f.write(json.dumps({"prompt": r["prompt"], "chosen": happy[i % 3], "rejected": sad[i % 3]}) + "\n")


def run_rlhf(rlhf, policy, rm, run_dir, args):
    cmd = [rlhf, "ppo", "--model", policy, "--reward-model", rm, "--train-data", PROMPTS, "--run-dir", run_dir,
           "--max-steps", str(args.iterations), "--rollout-batch", str(args.rollout_batch),
           "--minibatches", str(args.minibatches), "--ppo-epochs", str(args.ppo_epochs),
           "--max-new-tokens", str(args.max_new_tokens), "--temperature", "1", "--progress", "false",
           "--penalize-missing-eos", "false"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"FAILED (exit {p.returncode}): {' '.join(cmd)}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
        return None
    ms = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl")) if l.strip()]
    ms = [m for m in ms if "time/generation_s" in m]
    g = [m["time/generation_s"] for m in ms]
    s = [m["time/scoring_s"] for m in ms]
    t = [m["time/training_s"] for m in ms]
    return {"generation": med(g), "scoring": med(s), "training": med(t),
            "total": med([a + b + c for a, b, c in zip(g, s, t)]), "iterations": len(ms),
            "response_length": med([m.get("response_length", float("nan")) for m in ms])}


def ensure_trl_ppo(path):
    """A directory whose `trl` package has experimental.ppo (TRL 0.29.1, unpacked)."""
    if os.path.isdir(os.path.join(path, "trl", "experimental", "ppo")):
        return path
    import zipfile
    os.makedirs(path, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"trl=={TRL_PPO_VERSION}", "-d",
                    path], check=True)
    whl = next(f for f in os.listdir(path) if f.startswith(f"trl-{TRL_PPO_VERSION}") and f.endswith(".whl"))
    zipfile.ZipFile(os.path.join(path, whl)).extractall(path)
    return path


def trl_worker(cfg):
    """Runs in a subprocess with TRL 0.29.1 on PYTHONPATH; prints one JSON line."""
    import warnings
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch, transformers, trl
    if cfg["flush_denormal"]:  # before any parallel op, so OpenMP's threads inherit the mode
        torch.set_flush_denormal(True)
    from datasets import Dataset
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(cfg["threads"])
    import trl.experimental.ppo.ppo_trainer as pt
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    marks = {"gen": [], "first_grad": None, "ends": [], "begin": None, "iters": []}

    orig_bg, orig_fw = pt.batch_generation, pt.forward

    def batch_generation(*a, **kw):
        t0 = time.perf_counter()
        r = orig_bg(*a, **kw)
        marks["gen"].append((t0, time.perf_counter()))
        marks["first_grad"] = None
        return r

    def forward(*a, **kw):
        if torch.is_grad_enabled() and marks["first_grad"] is None:
            marks["first_grad"] = time.perf_counter()
        return orig_fw(*a, **kw)

    pt.batch_generation, pt.forward = batch_generation, forward

    class Timer(transformers.TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            marks["begin"] = time.perf_counter()
            marks["threads"] = torch.get_num_threads()

        def on_step_end(self, a, state, control, **kw):
            now = time.perf_counter()
            start = marks["ends"][-1] if marks["ends"] else marks["begin"]
            g0, g1 = marks["gen"][-1]
            fg = marks["first_grad"]
            marks["iters"].append({"generation": g1 - g0, "scoring": fg - g1, "training": now - fg,
                                   "total": now - start})
            marks["ends"].append(now)

    tok = transformers.AutoTokenizer.from_pretrained(cfg["policy"], padding_side="left")
    if tok.pad_token is None:  # stories260K has none; <unk> (id 0) never appears in prompts or samples
        tok.pad_token = tok.unk_token or tok.eos_token
    rows = [json.loads(l) for l in open(PROMPTS) if l.strip()]
    ds = Dataset.from_dict({"input_ids": [tok(r["prompt"])["input_ids"][-cfg["max_prompt_length"]:] for r in rows]})
    kw = dict(dtype=torch.float32, attn_implementation=cfg["attn"])
    policy = transformers.AutoModelForCausalLM.from_pretrained(cfg["policy"], **kw)
    ref = transformers.AutoModelForCausalLM.from_pretrained(cfg["policy"], **kw)
    reward = transformers.AutoModelForSequenceClassification.from_pretrained(cfg["rm"], num_labels=1, **kw)
    value = transformers.AutoModelForSequenceClassification.from_pretrained(cfg["rm"], num_labels=1, **kw)
    for m in (policy, ref, reward, value):
        m.config.pad_token_id = tok.pad_token_id
    B = cfg["rollout_batch"]
    args = PPOConfig(output_dir=cfg["out"], per_device_train_batch_size=B, gradient_accumulation_steps=1,
                     num_mini_batches=cfg["minibatches"], num_ppo_epochs=cfg["ppo_epochs"],
                     response_length=cfg["max_new_tokens"], temperature=1.0, total_episodes=B * cfg["iterations"],
                     local_rollout_forward_batch_size=B, learning_rate=1e-5, lr_scheduler_type="linear",
                     kl_coef=0.05, kl_estimator="k1", cliprange=0.2, cliprange_value=0.2, vf_coef=0.1,
                     gamma=1.0, lam=0.95, whiten_rewards=False, stop_token="eos", missing_eos_penalty=None,
                     num_sample_generations=0, eval_strategy="no", save_strategy="no", logging_strategy="no",
                     report_to="none", use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
                     dataloader_num_workers=0, disable_tqdm=True, seed=0, max_grad_norm=1.0)
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=ds, value_model=value, callbacks=[Timer()])
    try:
        trainer.remove_callback(transformers.PrinterCallback)
    except Exception:
        pass
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    it = marks["iters"]
    res = {p: med([x[p] for x in it]) for p in PHASES}
    res.update(iterations=len(it), threads=marks["threads"], trl=trl.__version__)
    print("RESULT " + json.dumps(res), flush=True)


def run_trl(trl_dir, cfg, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TQDM_DISABLE="1", TRL_EXPERIMENTAL_SILENCE="1",
               PYTHONPATH=trl_dir + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--trl-worker", json.dumps(cfg)], env=env,
                       capture_output=True, text=True)
    line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        print(f"TRL FAILED (exit {p.returncode})\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-6000:]}")
        return None
    return json.loads(line[len("RESULT "):])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rollout-batch", type=int, default=16)
    ap.add_argument("--minibatches", type=int, default=4)
    ap.add_argument("--ppo-epochs", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--max-prompt-length", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trl-attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--trl-ppo-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "rlhf-bench",
                                                          f"trl-{TRL_PPO_VERSION}"),
                    help=f"unpacked TRL {TRL_PPO_VERSION} (fetched with pip download if missing)")
    ap.add_argument("--trl-flush-denormal", action="store_true",
                    help="torch.set_flush_denormal(True) for TRL (rlhf.cpp flushes denormals; TRL does not by default)")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--trl-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trl_worker:
        return trl_worker(json.loads(args.trl_worker))
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import torch, transformers, trl, datasets
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.machine())
    trl_dir = ensure_trl_ppo(args.trl_ppo_dir)
    print(f"machine: {cpu}, {os.cpu_count()} cpus; "
          f"threads={args.threads} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__} installed "
          f"(PPOTrainer from trl {TRL_PPO_VERSION}), datasets {datasets.__version__}")
    print(f"model stories260K; rollout batch {args.rollout_batch}, {args.minibatches} minibatches, "
          f"{args.ppo_epochs} PPO epochs, {args.max_new_tokens} new tokens, temperature 1, {args.iterations} "
          f"iterations (median of 2..{args.iterations}); float32; TRL attention {args.trl_attn}; "
          f"TRL flush denormals {args.trl_flush_denormal}", flush=True)
    rlhf = os.path.join(args.build, "bin", "rlhf")
    with tempfile.TemporaryDirectory() as tmp:
        policy, prefs, rm_dir = os.path.join(tmp, "policy"), os.path.join(tmp, "prefs.jsonl"), os.path.join(tmp, "rm")
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        subprocess.run([rlhf, "convert", "--in", os.path.join(DATA, "stories260K", "stories260K.gguf"),
                        "--out", policy], check=True, capture_output=True)
        make_prefs(prefs)
        subprocess.run([rlhf, "rm", "train", "--model", policy, "--train-data", prefs, "--run-dir", rm_dir,
                        "--max-steps", "4", "--batch-size", "8", "--norm-samples", "0", "--progress", "false"],
                       check=True, capture_output=True, env=env)
        rm = os.path.join(rm_dir, "model")
        ours, theirs = [], []
        for r in range(args.rounds):
            ours.append(run_rlhf(rlhf, policy, rm, os.path.join(tmp, f"ppo{r}"), args))
            cfg = dict(policy=policy, rm=rm, out=os.path.join(tmp, f"trl{r}"), threads=args.threads,
                       rollout_batch=args.rollout_batch, minibatches=args.minibatches, ppo_epochs=args.ppo_epochs,
                       max_new_tokens=args.max_new_tokens, max_prompt_length=args.max_prompt_length,
                       iterations=args.iterations, attn=args.trl_attn, flush_denormal=args.trl_flush_denormal)
            theirs.append(run_trl(trl_dir, cfg, args.threads))
            f = lambda x: f"{x['total']:.3f} s/it" if x else "FAILED"
            ratio = f" ({theirs[-1]['total'] / ours[-1]['total']:.2f}x)" if ours[-1] and theirs[-1] else ""
            print(f"round {r + 1}: rlhf.cpp {f(ours[-1])}, TRL {f(theirs[-1])}{ratio}", flush=True)

    best = lambda runs: min((x for x in runs if x), key=lambda x: x["total"], default=None)
    o, t = best(ours), best(theirs)
    if t:
        print(f"\nTRL torch threads during training: {t['threads']}")
    print(f"best of {args.rounds} rounds (each: median over iterations 2..{args.iterations})")
    print("\n| phase | rlhf.cpp s | TRL s | ratio |")
    print("|---|---:|---:|---:|")
    for p in PHASES:
        a = f"{o[p]:.3f}" if o else "failed"
        b = f"{t[p]:.3f}" if t else "failed"
        ratio = f"{t[p] / o[p]:.2f}x" if o and t and o[p] > 0 else "-"
        print(f"| {p} | {a} | {b} | {ratio} |")
    print("\nratio = TRL s / rlhf.cpp s (above 1: rlhf.cpp is faster). rlhf.cpp total = the sum of its three "
          "phases; TRL total = on_step_end to on_step_end (includes its bookkeeping between phases)")
    if o:
        print(f"rlhf.cpp mean response length (median over iterations): {o['response_length']:.1f}")


if __name__ == "__main__":
    sys.exit(main())
