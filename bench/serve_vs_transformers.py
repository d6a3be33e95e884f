#!/usr/bin/env python3
"""Serving throughput: `rlhf serve` (continuous batching) vs the same model in transformers
(`generate` per request, one thread per request), side by side in one run.

C clients each send one streaming request at once (C = 1, 8, 32), every request generating
N tokens at temperature 1; throughput = all generated tokens / wall time until the last one
ends. The model is a Llama initialised at random by transformers (default 26M parameters:
hidden 512, 8 layers, vocabulary 512 with stories260K's tokenizer), saved as an HF folder
that both sides load.
    .venv/bin/python bench/serve_vs_transformers.py [--concurrency 1 8 32] [--new-tokens 64]
                                                    [--hidden 512 --layers 8]
"""
import argparse, concurrent.futures, json, os, platform, shutil, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("RLHF_DATA", os.path.join(ROOT, "..", "shared", "data"))
PROMPTS = ["Once upon a time", "The little dog", "Lily and Tom", "One day, a big bird", "Sam had a ball",
           "The sun was hot", "Mom said", "There was a cat"]


def make_model(dir_, rlhf, hidden, layers):
    import torch, transformers
    subprocess.run([rlhf, "convert", "--in", os.path.join(DATA, "stories260K", "stories260K.gguf"), "--out", dir_],
                   check=True, capture_output=True)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3 // 32 * 32),
                                   num_hidden_layers=layers, num_attention_heads=hidden // 64,
                                   num_key_value_heads=hidden // 64, max_position_embeddings=1024,
                                   bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(dir_)
    return sum(p.numel() for p in model.parameters())


class Server:
    def __init__(self, rlhf, model, parallel):
        self.proc = subprocess.Popen([rlhf, "serve", "--model", model, "--port", "0", "--parallel", str(parallel)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            if line.startswith("serving "):
                self.port = int(line.rsplit(":", 1)[1].split("/")[0])
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


def ours(port, concurrency, new_tokens):
    import openai
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=600)

    def one(i):
        n = 0
        for chunk in client.completions.create(model="m", prompt=PROMPTS[i % len(PROMPTS)], max_tokens=new_tokens,
                                               temperature=1.0, seed=i, stream=True,
                                               stream_options={"include_usage": True}):
            if chunk.usage:
                n = chunk.usage.completion_tokens
        return n

    one(0)  # warm-up
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, range(concurrency)))
    return tokens / (time.perf_counter() - t0)


def theirs(model, tok, concurrency, new_tokens):
    import torch

    def one(i):
        ids = tok(PROMPTS[i % len(PROMPTS)], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        return out.shape[1] - ids["input_ids"].shape[1]

    one(0)
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, range(concurrency)))
    return tokens / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    rlhf = os.path.join(args.build, "bin", "rlhf")

    import torch, transformers
    torch.set_num_threads(args.threads)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.machine())
    with tempfile.TemporaryDirectory() as tmp:
        params = make_model(tmp, rlhf, args.hidden, args.layers)
        print(f"machine: {cpu}, {os.cpu_count()} cpus, threads={args.threads}; torch {torch.__version__}, "
              f"transformers {transformers.__version__}")
        print(f"model: random Llama, {params / 1e6:.0f}M parameters (hidden {args.hidden}, {args.layers} layers), "
              f"float32; {args.new_tokens} tokens per request, T=1")
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        tok = transformers.AutoTokenizer.from_pretrained(tmp)
        srv = Server(rlhf, tmp, max(args.concurrency))
        rows = []
        try:
            for c in args.concurrency:
                a = ours(srv.port, c, args.new_tokens)
                b = theirs(model, tok, c, args.new_tokens)
                rows.append((c, a, b))
                print(f"concurrency {c}: rlhf serve {a:.1f} tok/s, transformers {b:.1f} tok/s", flush=True)
        finally:
            srv.stop()
    weight_bytes = params * 4
    print("\n| concurrent streams | rlhf serve tokens/s | transformers tokens/s | ratio | rlhf serve: weight traffic | matmul rate |")
    print("|---:|---:|---:|---:|---:|---:|")
    for c, a, b in rows:
        # Each decode step reads every weight once, whatever the batch (steps/s x bytes; the
        # limit at batch 1, against ~56 GB/s here); each token costs 2 x params flops (the
        # limit at large batches, against the ~320-360 GFLOP/s sgemm peak).
        steps = a / c
        print(f"| {c} | {a:.1f} | {b:.1f} | {a / b:.1f}x | {steps * weight_bytes / 1e9:.1f} GB/s "
              f"({steps * weight_bytes / 56e9:.0%}) | {2 * params * a / 1e9:.1f} GFLOP/s ({2 * params * a / 340e9:.0%}) |")


if __name__ == "__main__":
    sys.exit(main())
