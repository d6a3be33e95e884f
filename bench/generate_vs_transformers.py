#!/usr/bin/env python3
"""Generation throughput, rlhf.cpp vs Hugging Face transformers, side by side in one run.

Same model (stories260K, exported to the HF layout by `rlhf convert`), same prompt, plain
sampling (temperature 1, no top-k/top-p), every sequence generating exactly N new tokens.
    .venv/bin/python bench/generate_vs_transformers.py [--batches 1 16 64] [--new-tokens 256]
"""
import argparse, json, os, platform, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("RLHF_DATA", os.path.join(ROOT, "..", "shared", "data"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import torch, transformers
    torch.set_num_threads(args.threads)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.machine())
    print(f"machine: {cpu}, {os.cpu_count()} cpus; "
          f"threads={args.threads} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')} "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}; "
          f"model stories260K, {args.new_tokens} new tokens per sequence, sampling T=1")

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = os.path.join(tmp, "stories260K-hf")
        subprocess.run([os.path.join(args.build, "bin", "rlhf"), "convert", "--in",
                        os.path.join(DATA, "stories260K", "stories260K.gguf"), "--out", hf_dir], check=True)

        ours = {}
        out = subprocess.run([os.path.join(args.build, "bench", "bench_generate"), hf_dir, str(args.new_tokens)]
                             + [str(b) for b in args.batches], check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            r = json.loads(line)
            ours[r["batch"]] = r["tokens_per_s"]

        model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
        theirs = {}
        for b in args.batches:
            ids = tok(["Once upon a time"] * b, return_tensors="pt")
            kw = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0,
                      max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
            with torch.no_grad():
                model.generate(**ids, **{**kw, "max_new_tokens": 8, "min_new_tokens": 8})  # warm-up
                t0 = time.perf_counter()
                out = model.generate(**ids, **kw)
                s = time.perf_counter() - t0
            n = (out.shape[1] - ids["input_ids"].shape[1]) * b
            theirs[b] = n / s

    print(f"\n| batch | rlhf.cpp tokens/s | transformers tokens/s | ratio |")
    print(f"|---:|---:|---:|---:|")
    for b in args.batches:
        print(f"| {b} | {ours[b]:.0f} | {theirs[b]:.0f} | {ours[b] / theirs[b]:.1f}x |")


if __name__ == "__main__":
    sys.exit(main())
