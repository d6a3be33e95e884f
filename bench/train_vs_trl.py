#!/usr/bin/env python3
"""Training speed, rlhf.cpp vs TRL, side by side in one run: reward model and DPO steps.

Same model (stories260K, exported to the HF layout by `rlhf convert`), same preference pairs
(HH-RLHF harmless-base test), same batch size, max_length, learning rate and step count, on
the CPU in float32. Seconds per optimizer step: median over the steps after the first 2
(warm-up); the two sides run interleaved for --rounds rounds and the best round counts.
    env -u OMP_WAIT_POLICY .venv/bin/python bench/train_vs_trl.py [--batch-size 8] [--max-length 256]
        [--steps 12] [--rounds 3] [--trl-attn sdpa|eager]

rlhf.cpp: `rlhf rm train` and `rlhf dpo`, time/step_s from metrics.jsonl. TRL: RewardTrainer and
DPOTrainer (precompute_ref_log_probs=True, as rlhf.cpp computes the reference log-probs once
before training), bf16 and gradient checkpointing (TRL's defaults) off; time from
on_step_begin to on_step_end of a TrainerCallback.

Token budgets: pairs are cut in the text beforehand so that neither trainer truncates
anything (TRL's RewardTrainer drops over-long pairs instead of truncating, and its DPO
keeps the start of prompt+completion while rlhf.cpp keeps the end of the prompt): each
prompt is cut from the left so that BOS + prompt + longer completion + EOS is just under
max_length, so every batch on both sides pads to about max_length tokens.
"""
import argparse, gzip, json, os, platform, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("RLHF_DATA", os.path.join(ROOT, "..", "shared", "data"))
WARMUP = 2


def median_after_warmup(xs):
    xs = xs[WARMUP:] if len(xs) > WARMUP else xs
    return statistics.median(xs)


def make_pairs(tok, n, max_length):
    """n prompt/chosen/rejected pairs from HH-RLHF, each cut to just under max_length tokens."""
    marker = "\n\nAssistant:"
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    pairs = []
    rows = (json.loads(l) for l in gzip.open(os.path.join(DATA, "hh-rlhf-harmless-base-test", "test.jsonl.gz"), "rt"))
    for r in rows:
        c, rj = r["chosen"], r["rejected"]
        # prompt = shared prefix up to and including the last "\n\nAssistant:"
        k = 0
        while k < min(len(c), len(rj)) and c[k] == rj[k]:
            k += 1
        cut = c.rfind(marker, 0, k)
        if cut < 0:
            continue
        cut += len(marker)
        prompt, chosen, rejected = c[:cut], c[cut:], rj[cut:]
        lc, lr = len(enc(chosen)), len(enc(rejected))
        if chosen == rejected or min(lc, lr) < 8 or max(lc, lr) > max_length // 2:
            continue
        # BOS + prompt + completion + EOS, counted both ways (prompt and completion encoded
        # apart as rlhf.cpp does, together as TRL does); keep a margin of 4 tokens.
        def total(p):
            apart = 1 + len(enc(p)) + max(lc, lr) + 1
            together = 1 + max(len(enc(p + chosen)), len(enc(p + rejected))) + 1
            return max(apart, together)
        budget = max_length - 4
        if total(prompt) <= budget:
            continue  # short dialogue: we want every row near max_length
        lo, hi = 0, len(prompt)  # smallest start whose suffix fits
        while lo < hi:
            mid = (lo + hi) // 2
            if total(prompt[mid:]) <= budget:
                hi = mid
            else:
                lo = mid + 1
        start = prompt.find(" ", lo)  # start on a word
        start = lo if start < 0 or start >= len(prompt) - len(marker) else start + 1
        p = prompt[start:]
        if total(p) > budget or total(p) < max_length - 16:
            continue
        pairs.append({"prompt": p, "chosen": chosen, "rejected": rejected})
        if len(pairs) == n:
            break
    if len(pairs) < n:
        sys.exit(f"only {len(pairs)} usable pairs (wanted {n})")
    return pairs


def run_rlhf(cmd, run_dir, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        print(f"FAILED (exit {p.returncode}): {' '.join(cmd)}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
        return None
    steps = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl")) if l.strip()]
    st = [m["time/step_s"] for m in steps if "time/step_s" in m]
    return {"s_per_step": median_after_warmup(st), "steps": len(st), "wall": wall, "step_sum": sum(st),
            "last": steps[-1]}


def run_trl(kind, hf_dir, pairs, args, out_dir):
    import torch, transformers
    from datasets import Dataset

    class StepTimer(transformers.TrainerCallback):
        def __init__(self):
            self.begin, self.times, self.ends, self.threads = None, [], [], None

        def on_train_begin(self, a, state, control, **kw):
            self.threads = torch.get_num_threads()

        def on_step_begin(self, a, state, control, **kw):
            self.begin = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            now = time.perf_counter()
            self.times.append(now - self.begin)
            self.ends.append(now)

    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    common = dict(output_dir=out_dir, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
                  learning_rate=args.rm_lr if kind == "rm" else args.dpo_lr, max_steps=args.steps,
                  max_length=args.max_length, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
                  max_grad_norm=1.0, eval_strategy="no", save_strategy="no", logging_strategy="no",
                  report_to="none", use_cpu=getattr(args, "use_cpu", True), dataloader_num_workers=0,
                  disable_tqdm=True,
                  # TRL defaults that would make the two sides do different work: rlhf.cpp trains in
                  # float32 without activation checkpointing.
                  bf16=False, gradient_checkpointing=False)
    ds = Dataset.from_list(pairs)
    timer = StepTimer()
    extra = {}
    if kind == "rm":
        from trl import RewardConfig, RewardTrainer
        model = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir, num_labels=1, dtype=torch.float32,
                                                                           attn_implementation=args.trl_attn)
        model.config.pad_token_id = tok.pad_token_id
        trainer = RewardTrainer(model=model, args=RewardConfig(**common), train_dataset=ds, processing_class=tok,
                                callbacks=[timer])
    else:
        from trl import DPOConfig, DPOTrainer
        model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                          attn_implementation=args.trl_attn)
        # rlhf.cpp computes the reference log-probs once before training; TRL 1.16 can do the same.
        orig = DPOTrainer._precompute_ref_logps

        def timed(self, *a, **kw):
            t0 = time.perf_counter()
            r = orig(self, *a, **kw)
            extra["precompute_s"] = extra.get("precompute_s", 0.0) + time.perf_counter() - t0
            return r

        DPOTrainer._precompute_ref_logps = timed
        try:
            trainer = DPOTrainer(model=model, ref_model=None, args=DPOConfig(**common, precompute_ref_log_probs=True,
                                                                             beta=0.1, loss_type=["sigmoid"]),
                                 train_dataset=ds, processing_class=tok, callbacks=[timer])
        finally:
            DPOTrainer._precompute_ref_logps = orig
    trainer.remove_callback(transformers.PrinterCallback)  # no end-of-training dict on stdout
    t0 = time.perf_counter()
    trainer.train()
    train_wall = time.perf_counter() - t0
    gaps = [b - a for a, b in zip(timer.ends, timer.ends[1:])]  # step end to step end: includes collation
    return {"s_per_step": median_after_warmup(timer.times), "steps": len(timer.times), "train_wall": train_wall,
            "end_to_end": statistics.median(gaps[WARMUP - 1:]) if len(gaps) >= WARMUP else float("nan"),
            "threads": timer.threads, **extra}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--rm-lr", type=float, default=1e-4)
    ap.add_argument("--dpo-lr", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trl-attn", default="sdpa", choices=["sdpa", "eager"],
                    help="attention of the transformers model TRL trains (sdpa: transformers' default)")
    ap.add_argument("--trl-flush-denormal", action="store_true",
                    help="torch.set_flush_denormal(True) for TRL (rlhf.cpp flushes denormals; TRL does not by default)")
    ap.add_argument("--share-prompt", default="true", choices=["true", "false"],
                    help="rlhf.cpp computes each pair's prompt once (its default) or a row per completion")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")

    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch, transformers, trl, datasets
    if args.trl_flush_denormal:  # before any parallel op, so OpenMP's threads inherit the mode
        torch.set_flush_denormal(True)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.set_num_threads(args.threads)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.machine())
    print(f"machine: {cpu}, {os.cpu_count()} cpus; "
          f"threads={args.threads} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
          f"datasets {datasets.__version__}")
    print(f"model stories260K; batch {args.batch_size} pairs, max_length {args.max_length}, {args.steps} steps "
          f"(median of steps {WARMUP + 1}..{args.steps}), {args.pairs} HH-RLHF pairs; float32, AdamW, clip 1.0; "
          f"TRL attention {args.trl_attn}; rlhf.cpp share_prompt {args.share_prompt}; "
          f"TRL flush denormals {args.trl_flush_denormal}",
          flush=True)
    rlhf = os.path.join(args.build, "bin", "rlhf")

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = os.path.join(tmp, "hf")
        subprocess.run([rlhf, "convert", "--in", os.path.join(DATA, "stories260K", "stories260K.gguf"),
                        "--out", hf_dir], check=True, capture_output=True)
        tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
        pairs = make_pairs(tok, args.pairs, args.max_length)
        prefs = os.path.join(tmp, "prefs.jsonl")
        with open(prefs, "w") as f:
            for p in pairs:
                f.write(json.dumps(p) + "\n")

        common = ["--model", hf_dir, "--train-data", prefs, "--max-steps", str(args.steps),
                  "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--progress", "false",
                  "--share-prompt", args.share_prompt]
        stages = ("reward model", "DPO")
        ours, theirs = {s: [] for s in stages}, {s: [] for s in stages}
        for r in range(args.rounds):  # interleaved, so that a busy spell on the machine hits both sides
            rd = os.path.join(tmp, f"rlhf_rm{r}")
            ours["reward model"].append(run_rlhf([rlhf, "rm", "train", *common, "--run-dir", rd, "--lr",
                                                  str(args.rm_lr), "--norm-samples", "0"], rd, args.threads))
            # A column that differs per round, so that TRL does not reuse the reference log-probs it
            # cached (by dataset fingerprint) in an earlier round.
            rpairs = [dict(p, round=r) for p in pairs]
            theirs["reward model"].append(run_trl("rm", hf_dir, rpairs, args, os.path.join(tmp, f"trl_rm{r}")))
            rd = os.path.join(tmp, f"rlhf_dpo{r}")
            ours["DPO"].append(run_rlhf([rlhf, "dpo", *common, "--run-dir", rd, "--lr", str(args.dpo_lr)], rd,
                                        args.threads))
            theirs["DPO"].append(run_trl("dpo", hf_dir, rpairs, args, os.path.join(tmp, f"trl_dpo{r}")))
            line = f"round {r + 1}:"
            for s in stages:
                o, t = ours[s][-1], theirs[s][-1]
                line += (f"  {s} rlhf.cpp {o['s_per_step']:.3f} s/step, TRL {t['s_per_step']:.3f} "
                         f"({t['s_per_step'] / o['s_per_step']:.2f}x)") if o else \
                        f"  {s} rlhf.cpp FAILED, TRL {t['s_per_step']:.3f}"
            print(line, flush=True)

    print(f"\nTRL torch threads during training: {theirs['DPO'][0]['threads']}")
    print(f"best of {args.rounds} rounds (each: median s/step over steps {WARMUP + 1}..{args.steps})")
    print("\n| stage | rlhf.cpp s/step | TRL s/step | ratio |")
    print("|---|---:|---:|---:|")
    best = lambda runs: min(runs, key=lambda x: x["s_per_step"]) if runs and all(runs) else None
    for s in stages:
        o, t = best(ours[s]), best(theirs[s])
        if o is None:
            print(f"| {s} | failed | {t['s_per_step']:.3f} | - |")
        else:
            print(f"| {s} | {o['s_per_step']:.3f} | {t['s_per_step']:.3f} | {t['s_per_step'] / o['s_per_step']:.2f}x |")
    print("\nratio = TRL s/step / rlhf.cpp s/step (above 1: rlhf.cpp is faster)")
    if all(all(ours[s]) for s in stages):
        rest = {s: min(o["wall"] - o["step_sum"] for o in ours[s]) for s in stages}
        print(f"rlhf.cpp process wall time outside the steps (load, tokenize, save; best round): "
              f"rm {rest['reward model']:.2f} s, dpo {rest['DPO']:.2f} s -> DPO reference log-probs "
              f"for {args.pairs} pairs ~{rest['DPO'] - rest['reward model']:.2f} s")
    pre = min(t["precompute_s"] for t in theirs["DPO"])
    print(f"TRL DPO reference log-probs (precompute_ref_log_probs=True) for {args.pairs} pairs: {pre:.2f} s")
    for s in stages:
        print(f"TRL {s}: step end to step end (includes collation) {min(t['end_to_end'] for t in theirs[s]):.3f} s")

if __name__ == "__main__":
    sys.exit(main())
