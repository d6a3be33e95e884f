"""Data-parallel scaling: SFT tokens/s of 1 and 2 processes of 1 thread each, rlhf.cpp
(`rlhf launch`, c10d Gloo) beside PyTorch DDP (torchrun, Gloo, transformers' Llama) at the same
shape, batch and sequence length; and an 8-process run on the 2 cores that checks only that
it equals one process (losses and weights), not speed.

    .venv/bin/python bench/dist_scaling.py [--shape 26m] [--steps 6] [--out results.json]

The model is a random-weight Llama at the named shape (bench/shapes_vs_peers.py); the data are
HH-RLHF prompts with their chosen answers cut to just under 256 tokens, 8 rows a step (4 per
rank on 2). Step times are medians after 2 warm-up steps. Run it on a quiet machine.
"""

import argparse, json, os, platform, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)


def ddp_worker(args):
    """One rank of the PyTorch DDP peer (run under torch.distributed.run)."""
    import torch, torch.distributed as dist, transformers
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tok = transformers.AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    rows = [json.loads(l) for l in open(args.data) if l.strip()]
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-5)
    share = 8 // world
    times = []
    for step in range(args.steps):
        batch = rows[(step * 8 + rank * share) % len(rows):][:share]
        enc = tok([b["prompt"] + b["completion"] for b in batch], return_tensors="pt", padding=True,
                  truncation=True, max_length=256)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        t0 = time.perf_counter()
        loss = ddp(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        json.dump({"step_s": statistics.median(times[2:])}, open(args.result, "w"))
    dist.destroy_process_group()


def ours(rlhf, nproc, threads, lm, data, steps, run_dir, extra=(), max_length=256):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("OMP_WAIT_POLICY", None)
    cmd = [rlhf, "sft", "--model", lm, "--train-data", data, "--max-steps", str(steps), "--batch-size", "8",
           "--max-length", str(max_length), "--progress", "false", "--run-dir", run_dir, *extra]
    if nproc > 1:
        cmd = [rlhf, "launch", "--nproc", str(nproc), "--", *cmd]
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    ms = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl")) if l.strip()]
    return statistics.median(m["time/step_s"] for m in ms[2:]), ms


def peer(nproc, lm, data, steps, tmp):
    result = os.path.join(tmp, f"ddp{nproc}.json")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
                    str(29700 + nproc), os.path.abspath(__file__), "--ddp-worker", "--model", lm, "--data", data,
                    "--steps", str(steps), "--result", result], check=True, capture_output=True, env=env)
    return json.load(open(result))["step_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="26m")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--check-procs", type=int, default=8)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "rlhf-bench", "shapes"))
    ap.add_argument("--out")
    ap.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ddp_worker:
        return ddp_worker(args)

    import transformers, shapes_vs_peers, train_vs_trl
    rlhf = os.path.join(args.build, "bin", "rlhf")
    shapes_vs_peers.RLHF = rlhf
    lm = os.path.join(shapes_vs_peers.make_model(args.shape, args.cache), "lm")
    tok = transformers.AutoTokenizer.from_pretrained(lm)
    pairs = train_vs_trl.make_pairs(tok, 64, 256)
    tmp = tempfile.mkdtemp(prefix="dist-scaling-")
    data = os.path.join(tmp, "sft.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps({"prompt": p["prompt"], "completion": p["chosen"]}) + "\n" for p in pairs)
    n = lambda t: len(tok(t, add_special_tokens=False)["input_ids"])
    row = statistics.mean(2 + n(p["prompt"]) + n(p["chosen"]) for p in pairs)
    tokens = 8 * row  # per optimizer step

    out = {"shape": args.shape, "steps": args.steps, "tokens_per_step": tokens, "machine": platform.processor() or
           platform.machine(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
           "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip()}
    runs = {}
    for label, nproc, threads in (("1 process x 1 thread", 1, 1), ("2 processes x 1 thread", 2, 1),
                                  ("1 process x 2 threads", 1, 2)):
        s, _ = ours(rlhf, nproc, threads, lm, data, args.steps, os.path.join(tmp, f"ours{nproc}x{threads}"))
        runs[label] = {"rlhf_step_s": s}
        if threads == 1:
            runs[label]["ddp_step_s"] = peer(nproc, lm, data, args.steps, tmp)
    out["runs"] = runs

    print(f"SFT {args.shape}, 8 x ~{row:.0f} tokens a step, {out['date']} {out['commit']}")
    print("| | rlhf.cpp tok/s | PyTorch DDP tok/s | rlhf.cpp / DDP |")
    print("|---|---:|---:|---:|")
    for label, r in runs.items():
        o = tokens / r["rlhf_step_s"]
        if "ddp_step_s" in r:
            t = tokens / r["ddp_step_s"]
            print(f"| {label} | {o:.0f} | {t:.0f} | {o / t:.2f}x |")
        else:
            print(f"| {label} | {o:.0f} | | |")
    one, two = runs["1 process x 1 thread"], runs["2 processes x 1 thread"]
    out["speedup_2_procs"] = {"rlhf": one["rlhf_step_s"] / two["rlhf_step_s"],
                              "ddp": one["ddp_step_s"] / two["ddp_step_s"]}
    print(f"2 processes / 1: rlhf.cpp {out['speedup_2_procs']['rlhf']:.2f}x, DDP {out['speedup_2_procs']['ddp']:.2f}x")

    # Correctness at more ranks than cores: the same run in 1 and in N processes.
    if args.check_procs > 1:
        import torch, safetensors.torch as st
        stories = os.path.join(shapes_vs_peers.DATA, "stories260K", "stories260K.gguf")
        extra = ["--lr", "0.003"]
        _, a = ours(rlhf, 1, 1, stories, data, 3, os.path.join(tmp, "check1"), extra, 64)
        _, b = ours(rlhf, args.check_procs, 1, stories, data, 3, os.path.join(tmp, f"check{args.check_procs}"), extra, 64)
        loss_gap = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b))
        wa = st.load_file(os.path.join(tmp, "check1", "model", "model.safetensors"))
        wb = st.load_file(os.path.join(tmp, f"check{args.check_procs}", "model", "model.safetensors"))
        weight_gap = max((wa[k] - wb[k]).abs().max().item() for k in wa)
        out["check"] = {"procs": args.check_procs, "steps": len(a), "loss_gap": loss_gap, "weight_gap": weight_gap}
        print(f"{args.check_procs} processes vs 1 (stories260K, 3 steps of 8 rows): largest loss gap {loss_gap:.2g}, "
              f"largest weight gap {weight_gap:.2g}")
    if args.out:
        json.dump(out, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
