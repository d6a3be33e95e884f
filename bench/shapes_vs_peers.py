#!/usr/bin/env python3
"""rlhf.cpp against transformers / TRL / llama.cpp at the shapes people use, side by side in one run.

Random-initialised Llama models with the exact shapes of real ones, made from a config (nothing
downloaded): 26m (d512 L8, FF 1344, vocab 512), 86m (d768 L12, FF 2048, vocab 512), smollm2-135m
(d576 L30, 9 / 3 KV heads, FF 1536, vocab 49152, tied), qwen2.5-0.5b (d896 L24, 14 / 2 KV heads,
FF 4864, vocab 151936, tied; without Qwen's q/k/v biases). The tokenizer is stories260K's with
its vocabulary padded to the model's (pieces "<xN>" no merge reaches), so both sides decode
every id. Workloads (each side in its own process, peak RSS from wait4):
  generate  batch 1/16/64, prompt 64 random ids, 128 new tokens sampled at T = 1 (EOS ignored);
            rlhf.cpp: bench/bench_generate (also --weights bf16 / q8_0 at batch 1 when it has
            them), transformers: model.generate, llama.cpp (llama-cpp-python, when installed):
            F32 and Q8_0 GGUFs written by this script, batch 1.
  sft / rm / dpo  batch 8 x max_length 256 (HH-RLHF pairs cut to 240-252 tokens, as
            bench/train_vs_trl.py does): s per optimizer step, median after 2 warm-up steps;
            TRL's SFTTrainer / RewardTrainer / DPOTrainer (precompute_ref_log_probs).
  ppo       one PPO iteration: policy, reference, reward and value model of the shape, rollout
            batch 16, 128-token responses, 1 minibatch, 1 PPO epoch; TRL 0.29.1's PPOTrainer
            (as bench/ppo_vs_trl.py). rlhf.cpp twice: recomputing the old log-probs (as TRL)
            and with old_logprobs = "generator".
Limits, measured in the same run through the same libtorch both sides use: memory read
bandwidth (sum over a 1 GiB tensor) and the sgemm peak (float32 matmul, best of several
shapes). Shares: batch-1 decode = weight bytes read per token x tokens/s / bandwidth; the rest =
model FLOPs / sgemm peak, with FLOPs = 2 x matmul params x tokens for generation and
6 x params x tokens + 6 x layers x length x hidden x tokens (attention) for training, counting
the tokens rlhf.cpp computes (a pair's prompt once: share_prompt).
    env -u OMP_WAIT_POLICY .venv/bin/python bench/shapes_vs_peers.py [--shapes 26m,86m,smollm2-135m,qwen2.5-0.5b]
        [--workloads generate,sft,rm,dpo,ppo] [--batches 1,16,64] [--steps 5] [--device cpu|cuda] [--out results.json]
With --device cuda (bench/gpu_check.sh) both sides run on the GPU and the limits are the GPU's
(float32 matmul without TF32); PPO and llama.cpp stay CPU-only here.
"""
import argparse, json, os, platform, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("RLHF_DATA", os.path.join(ROOT, "..", "shared", "data"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SHAPES = {  # name: hidden, layers, heads, kv heads, FF, vocab, tied, rope theta
    "26m": (512, 8, 8, 8, 1344, 512, False, 10000.0),
    "86m": (768, 12, 12, 12, 2048, 512, False, 10000.0),
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152, True, 100000.0),
    "qwen2.5-0.5b": (896, 24, 14, 2, 4864, 151936, True, 1000000.0),
    "tiny": (64, 2, 4, 2, 128, 512, True, 10000.0),  # a smoke run of the script itself, not a figure
}
PROMPT, NEW = 64, 128


def shape_counts(name):
    C, L, H, KV, FF, V, tied, _ = SHAPES[name]
    D = C // H
    layer = C * (H * D) + 2 * C * (KV * D) + (H * D) * C + 3 * C * FF
    body = L * layer
    return {"body": body, "head": V * C, "embed": V * C, "total": body + V * C * (1 if tied else 2), "L": L, "C": C}


# ----------------------------------------------------------------------------- models

def make_model(name, cache):
    """HF folder (f32) with a padded tokenizer; a sequence-classification twin for rm/ppo."""
    d = os.path.join(cache, name)
    if os.path.exists(os.path.join(d, "done")):
        return d
    import torch, transformers
    C, L, H, KV, FF, V, tied, theta = SHAPES[name]
    os.makedirs(d, exist_ok=True)
    lm, cls = os.path.join(d, "lm"), os.path.join(d, "cls")
    subprocess.run([RLHF, "convert", "--in", os.path.join(DATA, "stories260K", "stories260K.gguf"), "--out", lm],
                   check=True, capture_output=True)
    tj = json.load(open(os.path.join(lm, "tokenizer.json")))
    vocab = tj["model"]["vocab"]
    for i in range(len(vocab), V):
        vocab[f"<x{i}>"] = i
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=C, intermediate_size=FF, num_hidden_layers=L,
                                   num_attention_heads=H, num_key_value_heads=KV, max_position_embeddings=2048,
                                   rope_theta=theta, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                   tie_word_embeddings=tied)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(lm)
    json.dump(tj, open(os.path.join(lm, "tokenizer.json"), "w"))
    cfg.num_labels = 1
    transformers.LlamaForSequenceClassification(cfg).save_pretrained(cls)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(lm, f)):
            with open(os.path.join(lm, f)) as a, open(os.path.join(cls, f), "w") as b:
                b.write(a.read())
    open(os.path.join(d, "done"), "w").close()
    return d


def write_gguf(hf_dir, out, qtype):
    """A llama-architecture GGUF of an HF Llama folder (F32 or Q8_0 matrices), as llama.cpp's converter writes it."""
    if os.path.exists(out):
        return out
    import numpy as np, gguf, torch
    from safetensors.torch import load_file
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    tj = json.load(open(os.path.join(hf_dir, "tokenizer.json")))
    w = load_file(os.path.join(hf_dir, "model.safetensors"))
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    g = gguf.GGUFWriter(out + ".tmp", "llama")
    g.add_context_length(cfg["max_position_embeddings"])
    g.add_embedding_length(cfg["hidden_size"])
    g.add_block_count(cfg["num_hidden_layers"])
    g.add_feed_forward_length(cfg["intermediate_size"])
    g.add_head_count(H)
    g.add_head_count_kv(KV)
    g.add_rope_dimension_count(cfg["hidden_size"] // H)
    g.add_rope_freq_base(cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0))
    g.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    g.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == "q8_0" else gguf.LlamaFileType.ALL_F32)
    inv = {i: p for p, i in tj["model"]["vocab"].items()}
    V = cfg["vocab_size"]
    g.add_tokenizer_model("llama")
    g.add_token_list([inv[i].encode() for i in range(V)])
    g.add_token_scores([0.0] * V)
    g.add_token_types([3 if i < 3 else (6 if inv[i].startswith("<0x") else 1) for i in range(V)])
    g.add_bos_token_id(1)
    g.add_eos_token_id(2)
    g.add_unk_token_id(0)

    def permute(t, heads):  # HF rotate_half rows -> llama.cpp's interleaved rotary rows
        return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for k, t in w.items():
        t = t.float().numpy()
        if k in names:
            n = names[k]
        else:
            parts = k.split(".")  # model.layers.N.<module>.<sub>.weight
            mod = ".".join(parts[3:-1])
            n = f"blk.{parts[2]}.{per[mod]}.weight"
            if mod == "self_attn.q_proj":
                t = permute(t, H)
            elif mod == "self_attn.k_proj":
                t = permute(t, KV)
        if qtype == "q8_0" and t.ndim == 2:
            g.add_tensor(n, gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            g.add_tensor(n, np.ascontiguousarray(t, dtype=np.float32))
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()
    os.replace(out + ".tmp", out)
    return out


# ----------------------------------------------------------------------------- running and measuring

# Peak RSS of a child from wait4 is wrong when the parent is large: Linux carries the parent's
# high-water mark into a vfork'd child at exec. So each command runs under a small launcher
# (plain Python, no torch) that forks it and reports its wait4 peak on stderr's last line.
LAUNCH = ("import os, resource, sys\n"
          "pid = os.fork()\n"
          "if pid == 0:\n    os.execvp(sys.argv[1], sys.argv[1:])\n"
          "_, st, ru = os.wait4(pid, 0)\n"
          "print('MAXRSS_KIB', ru.ru_maxrss, file=sys.stderr)\n"
          "sys.exit(os.waitstatus_to_exitcode(st))\n")


def child(cmd, env=None):
    """Runs cmd; returns (stdout, peak RSS in MiB of that process alone)."""
    p = subprocess.run([sys.executable, "-c", LAUNCH, *map(str, cmd)], capture_output=True, text=True, env=env)
    if p.returncode:
        raise RuntimeError(f"exit {p.returncode}: {' '.join(map(str, cmd[:6]))} ...\n{p.stderr[-4000:]}")
    rss = next(l for l in reversed(p.stderr.splitlines()) if l.startswith("MAXRSS_KIB "))
    return p.stdout, int(rss.split()[1]) / 1024


def limits(threads, device):
    import torch
    torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    x = torch.ones(256 * 1024 * 1024, device=device)  # 1 GiB, far beyond every cache
    bw = 0.0
    for _ in range(5):
        sync()
        t0 = time.perf_counter()
        x.sum()
        sync()
        bw = max(bw, x.numel() * 4 / (time.perf_counter() - t0) / 1e9)
    del x
    peak = 0.0
    for m, k, n in ((2048, 2048, 2048), (4096, 4096, 4096), (2048, 1024, 4096)):
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        a @ b
        for _ in range(3):
            sync()
            t0 = time.perf_counter()
            a @ b
            sync()
            peak = max(peak, 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
    return {"bandwidth_gbs": bw, "sgemm_gflops": peak}


def worker(cfg):
    """Peer side of one workload, in its own process; prints RESULT json."""
    import warnings
    warnings.filterwarnings("ignore")
    import torch, transformers
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(cfg["threads"])
    kind = cfg["kind"]
    dev = cfg.get("device", "cpu")
    if kind == "generate":
        model = transformers.AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32).eval().to(dev)
        sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
        g = torch.Generator().manual_seed(0)
        V = min(512, model.config.vocab_size)
        res = {}
        for b in cfg["batches"]:
            ids = torch.randint(3, V, (1, PROMPT), generator=g).repeat(b, 1).to(dev)
            kw = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0)
            with torch.no_grad():
                model.generate(ids, **kw, max_new_tokens=8, min_new_tokens=8)
                sync()
                t0 = time.perf_counter()
                model.generate(ids, **kw, max_new_tokens=1, min_new_tokens=1)
                sync()
                pre = time.perf_counter() - t0
                t0 = time.perf_counter()
                out = model.generate(ids, **kw, max_new_tokens=NEW, min_new_tokens=NEW)
                sync()
                s = time.perf_counter() - t0
            res[b] = {"tokens_per_s": (out.shape[1] - PROMPT) * b / s, "prefill_s": pre}
        print("RESULT " + json.dumps(res), flush=True)
    elif kind == "llama.cpp":
        import llama_cpp
        res = {}
        for path in cfg["ggufs"]:
            llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=cfg["threads"], n_batch=64, verbose=False)
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(3, 512, (PROMPT,), generator=g).tolist()
            llm.reset()
            llm.eval(ids)
            t0 = time.perf_counter()
            for _ in range(NEW):  # one token at a time, batch 1: the decode path
                tok = llm.sample(temp=1.0, top_k=0, top_p=1.0)
                llm.eval([tok])
            res[os.path.basename(path)] = {"tokens_per_s": NEW / (time.perf_counter() - t0)}
            del llm
        print("RESULT " + json.dumps(res), flush=True)
    elif kind in ("rm", "dpo"):
        import train_vs_trl
        args = argparse.Namespace(batch_size=8, rm_lr=1e-4, dpo_lr=1e-5, steps=cfg["steps"], max_length=256,
                                  trl_attn="sdpa", use_cpu=dev == "cpu")
        pairs = [json.loads(l) for l in open(cfg["data"])]
        r = train_vs_trl.run_trl(kind, cfg["model"], pairs, args, cfg["out"])
        print("RESULT " + json.dumps(r), flush=True)
    elif kind == "sft":
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer
        import train_vs_trl
        tok = transformers.AutoTokenizer.from_pretrained(cfg["model"])
        tok.pad_token = tok.pad_token or tok.unk_token
        model = transformers.AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
        rows = [json.loads(l) for l in open(cfg["data"])]
        times = []

        class T(transformers.TrainerCallback):
            def on_step_begin(self, *a, **k):
                self.t0 = time.perf_counter()

            def on_step_end(self, *a, **k):
                times.append(time.perf_counter() - self.t0)

        args = SFTConfig(output_dir=cfg["out"], per_device_train_batch_size=8, max_steps=cfg["steps"],
                         max_length=256, learning_rate=5e-5, lr_scheduler_type="linear", eval_strategy="no",
                         save_strategy="no", logging_strategy="no", report_to="none", use_cpu=dev == "cpu",
                         dataloader_num_workers=0, disable_tqdm=True, bf16=False, gradient_checkpointing=False)
        tr = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                        callbacks=[T()])
        tr.remove_callback(transformers.PrinterCallback)
        tr.train()
        print("RESULT " + json.dumps({"s_per_step": train_vs_trl.median_after_warmup(times)}), flush=True)


def peer(cfg, env=None, pythonpath=None):
    e = dict(env or os.environ)
    if pythonpath:
        e["PYTHONPATH"] = pythonpath + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    out, rss = child([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)], env=e)
    line = next(l for l in out.splitlines() if l.startswith("RESULT "))
    return json.loads(line[7:]), rss


def median_steps(run_dir, warmup=2):
    st = [json.loads(l).get("time/step_s") for l in open(os.path.join(run_dir, "metrics.jsonl")) if l.strip()]
    st = [s for s in st if s is not None]
    st = st[warmup:] if len(st) > warmup else st
    return statistics.median(st)


# ----------------------------------------------------------------------------- main

def main():
    global RLHF
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="26m,86m,smollm2-135m,qwen2.5-0.5b", help=f"of {', '.join(SHAPES)}")
    ap.add_argument("--workloads", default="generate,sft,rm,dpo,ppo")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--weights", default="bf16,q8_0", help="extra rlhf.cpp weight formats at batch 1 (if supported)")
    ap.add_argument("--steps", type=int, default=5, help="training steps per run (median after 2)")
    ap.add_argument("--ppo-iterations", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where both sides run")
    ap.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "rlhf-bench", "shapes"))
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--out", help="also write all figures as JSON here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    RLHF = os.path.join(args.build, "bin", "rlhf")
    if args.worker:
        return worker(json.loads(args.worker))
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    env = dict(os.environ)
    import torch, transformers, trl
    try:
        import llama_cpp
        llama = f"llama-cpp-python {llama_cpp.__version__}"
    except ImportError:
        llama_cpp, llama = None, "not installed (pip install llama-cpp-python to include it)"
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.machine())
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"{time.strftime('%Y-%m-%d')}, commit {commit}; machine: {cpu}, {os.cpu_count()} cpus; threads "
          f"{args.threads}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
          f"llama.cpp: {llama}", flush=True)
    lim = limits(args.threads, args.device)
    print(f"limits: memory read {lim['bandwidth_gbs']:.1f} GB/s, sgemm peak {lim['sgemm_gflops']:.0f} GFLOP/s "
          f"(float32 matmul through libtorch, {args.device})", flush=True)
    work = set(args.workloads.split(","))
    batches = [int(b) for b in args.batches.split(",")]
    os.makedirs(args.cache, exist_ok=True)
    results = {"limits": lim, "commit": commit, "shapes": {}}
    help_gen = subprocess.run([os.path.join(args.build, "bench", "bench_generate")], capture_output=True,
                              text=True).stderr

    for name in args.shapes.split(","):
        cnt = shape_counts(name)
        d = make_model(name, args.cache)
        lm, cls = os.path.join(d, "lm"), os.path.join(d, "cls")
        rows = []  # (workload, ours, theirs, unit, higher_is_better, share, rss_ours, rss_theirs)
        print(f"\n## {name}: {cnt['total'] / 1e6:.1f}M parameters", flush=True)

        def add(label, o, t, unit, share, ro, rt, higher=True):
            ratio = (o / t if higher else t / o) if o and t else None
            rows.append(dict(workload=label, ours=o, theirs=t, unit=unit, ratio=ratio, share=share, rss_ours=ro,
                             rss_theirs=rt))
            f = lambda x: "-" if x is None else f"{x:.3g}"
            print(f"  {label}: rlhf.cpp {f(o)} {unit}, peer {f(t)} {unit}, ratio {f(ratio)}, share "
                  f"{'-' if share is None else f'{100 * share:.0f}%'}, RSS {f(ro)} / {f(rt)} MiB", flush=True)

        if "generate" in work:
            gen = [os.path.join(args.build, "bench", "bench_generate"), lm, str(NEW)] + [str(b) for b in batches] + \
                  ["--prompt-tokens", str(PROMPT), "--device", args.device]
            ours, ro = child(gen, env)
            ours = {json.loads(l)["batch"]: json.loads(l) for l in ours.splitlines() if l.startswith("{")}
            theirs, rt = peer({"kind": "generate", "model": lm, "batches": batches, "threads": args.threads,
                               "device": args.device})
            mat = cnt["body"] + cnt["head"]
            for b in batches:
                o, t = ours[b]["tokens_per_s"], theirs[str(b)]["tokens_per_s"]
                share = o * mat * 4 / 1e9 / lim["bandwidth_gbs"] if b == 1 else 2 * mat * o / 1e9 / lim["sgemm_gflops"]
                add(f"decode batch {b} (tokens/s)", o, t, "tok/s", share, ro, rt)
                po, pt = ours[b]["prefill_s"], theirs[str(b)]["prefill_s"]
                add(f"prefill batch {b} x {PROMPT} (s)", po, pt, "s",
                    2 * (cnt["body"] * PROMPT + cnt["head"]) * b / po / 1e9 / lim["sgemm_gflops"], ro, rt,
                    higher=False)  # the LM head runs on the last prompt position only
            packed = {}  # weight format -> rlhf.cpp's batch-1 tokens/s
            if "--weights" in help_gen and args.device == "cpu":
                for wf in ("bf16", "q8_0"):
                    if wf not in args.weights.split(","):
                        continue
                    out, r = child(gen[:3] + ["1", "--prompt-tokens", str(PROMPT), "--weights", wf], env)
                    line = json.loads(out.splitlines()[-1])  # bench_generate counts the bytes it streams
                    packed[wf] = line["tokens_per_s"]
                    add(f"decode batch 1, {wf} weights (tokens/s)", packed[wf], None, "tok/s",
                        line["weight_gb_per_s"] / lim["bandwidth_gbs"], r, None)
            if llama_cpp is not None and args.device == "cpu":
                f32 = write_gguf(lm, os.path.join(d, "f32.gguf"), "f32")
                q8 = write_gguf(lm, os.path.join(d, "q8_0.gguf"), "q8_0")
                lr, rl = peer({"kind": "llama.cpp", "ggufs": [f32, q8], "threads": args.threads})
                add("llama.cpp decode batch 1, F32 (tokens/s)", ours[1]["tokens_per_s"] if 1 in ours else None,
                    lr["f32.gguf"]["tokens_per_s"], "tok/s", None, None, rl)
                add("llama.cpp decode batch 1, Q8_0 (tokens/s; rlhf.cpp q8_0 when it has it)",
                    packed.get("q8_0"),
                    lr["q8_0.gguf"]["tokens_per_s"], "tok/s", None, None, rl)

        need_pairs = work & {"sft", "rm", "dpo"}
        if need_pairs:
            import train_vs_trl
            tok = transformers.AutoTokenizer.from_pretrained(lm)
            pairs = train_vs_trl.make_pairs(tok, 64, 256)
            tmp = tempfile.mkdtemp(prefix="shapes-")
            prefs, sft = os.path.join(tmp, "prefs.jsonl"), os.path.join(tmp, "sft.jsonl")
            with open(prefs, "w") as f:
                f.writelines(json.dumps(p) + "\n" for p in pairs)
            with open(sft, "w") as f:
                f.writelines(json.dumps({"prompt": p["prompt"], "completion": p["chosen"]}) + "\n" for p in pairs)
            n = lambda t: len(tok(t, add_special_tokens=False)["input_ids"])
            seq = statistics.mean(1 + n(p["prompt"]) + n(p["chosen"]) for p in pairs)  # one SFT row
            # A pair as rlhf.cpp computes it (share_prompt): the prompt once, then both completions.
            pair = statistics.mean(1 + n(p["prompt"]) + n(p["chosen"]) + n(p["rejected"]) for p in pairs)
            common = ["--train-data", None, "--max-steps", str(args.steps), "--batch-size", "8", "--max-length",
                      "256", "--progress", "false", "--device", args.device]
            for kind in ("sft", "rm", "dpo"):
                if kind not in work:
                    continue
                rd = os.path.join(tmp, f"ours-{kind}")
                c = list(common)
                c[1] = sft if kind == "sft" else prefs
                cmd = {"sft": [RLHF, "sft", "--model", lm],
                       "rm": [RLHF, "rm", "train", "--model", lm, "--norm-samples", "0", "--lr", "1e-4"],
                       "dpo": [RLHF, "dpo", "--model", lm, "--lr", "1e-5"]}[kind] + c + ["--run-dir", rd]
                _, ro = child(cmd, env)
                o = median_steps(rd)
                t, rt = peer({"kind": kind, "model": cls if kind == "rm" else lm, "data": sft if kind == "sft" else prefs,
                              "steps": args.steps, "threads": args.threads, "out": os.path.join(tmp, f"trl-{kind}"),
                              "device": args.device})
                # rlhf.cpp's own work: 8 rows of `seq` tokens (SFT) or 8 shared-prompt rows of `pair` tokens.
                row = seq if kind == "sft" else pair
                params = cnt["body"] + (0 if kind == "rm" else cnt["head"])
                flops = 8 * (6 * params * row + 6 * cnt["L"] * row * cnt["C"] * row)
                add(f"{kind} step, batch 8 x 256 (s)", o, t["s_per_step"], "s",
                    flops / o / 1e9 / lim["sgemm_gflops"], ro, rt, higher=False)

        if "ppo" in work and args.device == "cpu":
            import ppo_vs_trl
            tmp = tempfile.mkdtemp(prefix="shapes-ppo-")
            pa = argparse.Namespace(iterations=args.ppo_iterations + 1, rollout_batch=16, minibatches=1, ppo_epochs=1,
                                    max_new_tokens=NEW, threads=args.threads)
            ours = {}  # old_logprobs source -> (median s per iteration, peak RSS)
            for source in ("recompute", "generator"):
                rd = os.path.join(tmp, "ours-" + source)
                cmd = [RLHF, "ppo", "--model", lm, "--reward-model", cls, "--train-data", ppo_vs_trl.PROMPTS,
                       "--run-dir", rd, "--max-steps", str(pa.iterations), "--rollout-batch", "16", "--minibatches",
                       "1", "--ppo-epochs", "1", "--max-new-tokens", str(NEW), "--temperature", "1", "--progress",
                       "false", "--penalize-missing-eos", "false", "--old-logprobs", source]
                _, rss = child(cmd, dict(env))
                ms = [json.loads(l) for l in open(os.path.join(rd, "metrics.jsonl")) if l.strip()]
                ms = [m for m in ms if "time/generation_s" in m][1:]
                ours[source] = (statistics.median(m["time/generation_s"] + m["time/scoring_s"] + m["time/training_s"]
                                                  for m in ms), rss)
            trl_dir = ppo_vs_trl.ensure_trl_ppo(os.path.join(os.path.expanduser("~"), ".cache", "rlhf-bench",
                                                             f"trl-{ppo_vs_trl.TRL_PPO_VERSION}"))
            cfg = dict(policy=lm, rm=cls, out=os.path.join(tmp, "trl"), threads=args.threads, rollout_batch=16,
                       minibatches=1, ppo_epochs=1, max_new_tokens=NEW, max_prompt_length=128,
                       iterations=pa.iterations, attn="sdpa", flush_denormal=False)
            e = dict(env, TRL_EXPERIMENTAL_SILENCE="1",
                     PYTHONPATH=trl_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""))
            out, rt = child([sys.executable, ppo_vs_trl.__file__, "--trl-worker", json.dumps(cfg)], e)
            t = json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:])
            for source, label in (("recompute", ""), ("generator", ", old log-probs from the sampler")):
                o, ro = ours[source]
                add(f"PPO iteration, 16 x {NEW} tokens, 1 epoch{label} (s)", o, t["total"], "s", None, ro, rt,
                    higher=False)
        results["shapes"][name] = rows

    print("\nratio: above 1, rlhf.cpp is faster. share: of the measured limit (see the docstring).")
    for name, rows in results["shapes"].items():
        print(f"\n### {name}\n\n| workload | rlhf.cpp | peer | ratio | rlhf.cpp share of limit | peak RSS rlhf.cpp / peer (MiB) |")
        print("|---|---:|---:|---:|---:|---:|")
        f = lambda x, p=3: "-" if x is None else f"{x:.{p}g}"
        for r in rows:
            share = "-" if r["share"] is None else f"{100 * r['share']:.0f}%"
            print(f"| {r['workload']} | {f(r['ours'])} | {f(r['theirs'])} | {f(r['ratio'])}x | {share} | "
                  f"{f(r['rss_ours'], 4)} / {f(r['rss_theirs'], 4)} |")
    if args.out:
        json.dump(results, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())
