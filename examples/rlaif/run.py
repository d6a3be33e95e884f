#!/usr/bin/env python3
"""RLAIF on a task a tiny model can learn: which continuation of a children's story is happier
and kinder. stories260K samples pairs of continuations; the gold preference is the sentiment
lexicon the pipeline's simulated labeler uses (src/feedback/labeler.cpp, read from there at run
time); a judge is fine-tuned from stories260K on multiple-choice questions shaped exactly as
FeedbackModel asks them (constitution kindness.toml); `rlhf rlaif agreement` then measures how
often the untrained and the trained judge agree with the gold labels on held-out prompts.

    .venv/bin/python examples/rlaif/run.py [--out runs/rlaif] [--seed 0] [--smoke] [--pipeline]

Run from the repository root after building. Writes results.json in --out (and in
examples/rlaif/ for a full run with --publish) and prints a markdown table.
"""
import argparse
import datetime
import json
import math
import os
import random
import re
import subprocess
import sys
import time
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CONSTITUTION = os.path.join(HERE, "kindness.toml")
T0 = time.time()

# The defaults of src/feedback/constitution.h for the templates kindness.toml leaves out.
DEFAULT_TEMPLATES = {
    "conversation": "Human: {prompt}\n\nAssistant:",
    "comparison": "Consider the following conversation between a human and an assistant:\n{conversation}\n"
                  "{principle}\nOptions:\n(A) {a}\n(B) {b}\n",
    "answer_cue": "The answer is: (",
}


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def run(cmd, log_file=None):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), OMP_WAIT_POLICY="PASSIVE")
    cmd = [str(c) for c in cmd]
    r = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if log_file:
        with open(log_file, "w") as f:
            f.write(r.stdout)
    if r.returncode != 0:
        sys.exit(f"run.py: `{' '.join(cmd)}` failed (exit {r.returncode}):\n{r.stdout[-3000:]}")
    return r.stdout


def data_dir():
    return os.environ.get("RLHF_DATA") or os.path.join(ROOT, "..", "shared", "data")


# ---------------------------------------------------------------------------------------------
# The gold score: SentimentLexicon::score of src/feedback/labeler.cpp, its word lists read from
# that file so there is one truth (tests/python/test_rlaif_example.py checks it against C++).

def load_lexicon(source=os.path.join(ROOT, "src", "feedback", "labeler.cpp")):
    text = open(source).read()

    def words(array):
        m = re.search(r"\b" + array + r"\[\]\s*=\s*\{(.*?)\};", text, re.S)
        if not m:
            sys.exit(f"run.py: {source}: no word list {array}[] (has the lexicon moved?)")
        return re.findall(r'"([^"]*)"', m.group(1))

    # The same order as SentimentLexicon::builtin(): strong weights override the plain ones.
    lexicon = {}
    for array, weight in (("kPositive", 1.0), ("kNegative", -1.0), ("kStrongPositive", 2.0), ("kStrongNegative", -2.0)):
        for w in words(array):
            lexicon[w] = weight
    return lexicon


def split_words(text):
    """labeler.cpp's split_words: runs of ASCII letters, lower-cased, with inner apostrophes."""
    words, cur = [], []
    for i, c in enumerate(text):
        if ("a" <= c <= "z") or ("A" <= c <= "Z"):
            cur.append(c.lower())
        elif c == "'" and cur and i + 1 < len(text) and (("a" <= text[i + 1] <= "z") or ("A" <= text[i + 1] <= "Z")):
            cur.append(c)
        elif cur:
            words.append("".join(cur))
            cur = []
    if cur:
        words.append("".join(cur))
    return words


def gold_score(lexicon, text):
    """(sum of the weights of the words found) / sqrt(number of words + 1)."""
    words = split_words(text)
    return sum(lexicon.get(w, 0.0) for w in words) / math.sqrt(len(words) + 1)


# ---------------------------------------------------------------------------------------------
# The question, exactly as judge_pairs (src/feedback/ai_feedback.cpp) builds it.

def load_constitution(path=CONSTITUTION):
    with open(path, "rb") as f:
        c = tomllib.load(f)
    templates = dict(DEFAULT_TEMPLATES, **{k: v for k, v in c.get("templates", {}).items() if k in DEFAULT_TEMPLATES})
    return templates, [x["text"] for x in c["comparisons"]]


def fill_template(tmpl, values):
    """app_io.cpp's fill_template: one left-to-right pass; values are not expanded again."""
    out, i = [], 0
    while i < len(tmpl):
        for name, value in values.items():
            if tmpl.startswith("{" + name + "}", i):
                out.append(value)
                i += len(name) + 2
                break
        else:
            out.append(tmpl[i])
            i += 1
    return "".join(out)


def trim(s):
    return s.strip(" \t\r\n")


def question(templates, prompt, principle, a, b):
    t = trim(prompt)
    dialogue = t.startswith("Human:") and t.endswith("Assistant:")
    conversation = t if dialogue else fill_template(templates["conversation"], {"prompt": prompt})
    return fill_template(templates["comparison"], {"conversation": conversation, "principle": principle,
                                                   "a": trim(a), "b": trim(b)}) + templates["answer_cue"]


def sft_example(q, letter):
    """The SFT record teaching `letter` after question q. `rlhf sft` encodes the completion on
    its own, and SentencePiece then prepends its dummy-prefix space: so the prompt stops before
    the cue's final " (" and the completion is "(" + letter, which encodes to the same ids as
    q + letter does where FeedbackModel reads the letter's probability (the test checks that)."""
    assert q.endswith(" ("), "the answer cue must end with ' ('"
    return {"prompt": q[:-2], "completion": "(" + letter, "question": q, "answer": letter}


# ---------------------------------------------------------------------------------------------

def sample_pairs(args, out, prompts, lexicon):
    """Samples k continuations per prompt with stories260K (through `rlhf rlaif label --policy`,
    whose own AI labels are not used) and returns every untied pair, gold-better first."""
    prompts_file = os.path.join(out, "prompts.jsonl")
    with open(prompts_file, "w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p}) + "\n")
    samples = os.path.join(out, "samples.jsonl")
    log(f"sampling {args.k} continuations of {len(prompts)} prompts with stories260K ...")
    run([args.rlhf, "rlaif", "label", "--policy", args.model, "--prompts", prompts_file, "--k", args.k,
         "--max-new-tokens", args.max_new_tokens, "--feedback-model", args.model, "--constitution", CONSTITUTION,
         "--seed", args.seed, "-o", samples], log_file=os.path.join(out, "sample.log"))
    pairs, ties = {}, 0
    for line in open(samples):
        r = json.loads(line)
        done = set()
        for i in range(len(r["completions"])):
            for j in range(i + 1, len(r["completions"])):
                a, b = r["completions"][i], r["completions"][j]
                if trim(a) == trim(b) or (trim(a), trim(b)) in done:
                    continue
                done.add((trim(a), trim(b)))
                sa, sb = gold_score(lexicon, a), gold_score(lexicon, b)
                if sa == sb:
                    ties += 1
                    continue
                chosen, rejected, sc, sr = (a, b, sa, sb) if sa > sb else (b, a, sb, sa)
                pairs.setdefault(r["prompt"], []).append(
                    {"prompt": r["prompt"], "chosen": chosen, "rejected": rejected, "gold_chosen": sc, "gold_rejected": sr})
    return pairs, ties


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def agreement(args, out, name, judge, pairs_file, limit=0):
    path = os.path.join(out, f"agreement_{name}.json")
    run([args.rlhf, "rlaif", "agreement", "--pairs", pairs_file, "--constitution", CONSTITUTION, "--feedback-model",
         judge, "--limit", limit, "--seed", args.seed, "-o", path], log_file=os.path.join(out, f"agreement_{name}.log"))
    with open(path) as f:
        return json.load(f)


def git_commit():
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "rlaif"), help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split, the samples, the principle draws and training")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds): checks the mechanics, not the figures")
    ap.add_argument("--publish", action="store_true", help="also write examples/rlaif/results.json")
    ap.add_argument("--rlhf", default=os.path.join(ROOT, "build", "bin", "rlhf"), help="the rlhf binary")
    ap.add_argument("--model", default=os.path.join(data_dir(), "stories260K", "stories260K.gguf"),
                    help="the policy and the judge's starting point")
    ap.add_argument("--prompts", default=os.path.join(ROOT, "examples", "happy_stories_prompts.jsonl"))
    ap.add_argument("--heldout-fraction", type=float, default=0.25, help="share of the prompts kept for evaluation")
    ap.add_argument("--k", type=int, default=6, help="continuations per prompt (every untied pair is used)")
    ap.add_argument("--max-new-tokens", type=int, default=40, help="length of the continuations")
    ap.add_argument("--sft-steps", type=int, default=1200, help="judge training steps")
    ap.add_argument("--sft-lr", type=float, default=2e-3, help="judge learning rate")
    ap.add_argument("--sft-batch", type=int, default=16, help="judge batch size")
    ap.add_argument("--pipeline", action="store_true",
                    help="also run rlhf pipeline (examples/happy_stories.toml) with labeler = ai (the judge) and simulated")
    ap.add_argument("--pipeline-ppo-steps", type=int, default=60, help="PPO steps of each --pipeline run (same for both)")
    args = ap.parse_args()
    if args.smoke:
        args.k, args.max_new_tokens, args.sft_steps = 3, 12, 4
    os.makedirs(args.out, exist_ok=True)
    if not os.path.exists(args.rlhf):
        sys.exit(f"run.py: {args.rlhf} not found; build first (cmake --build --preset default)")

    # 1. Prompts, split into train and held-out (disjoint prompts).
    prompts = [json.loads(l)["prompt"] for l in open(args.prompts) if l.strip()]
    prompts = list(dict.fromkeys(prompts))
    random.Random(args.seed).shuffle(prompts)
    if args.smoke:
        prompts = prompts[:8]
    n_held = max(1, round(len(prompts) * args.heldout_fraction))
    held_prompts, train_prompts = prompts[:n_held], prompts[n_held:]

    # 2. Samples and their gold preferences (ties dropped).
    lexicon = load_lexicon()
    pairs, ties = sample_pairs(args, args.out, prompts, lexicon)
    train = [p for pr in train_prompts for p in pairs.get(pr, [])]
    held = [p for pr in held_prompts for p in pairs.get(pr, [])]
    train_file, held_file = os.path.join(args.out, "train_pairs.jsonl"), os.path.join(args.out, "heldout_pairs.jsonl")
    write_jsonl(train_file, train)
    write_jsonl(held_file, held)
    log(f"{len(train)} train pairs ({len(train_prompts)} prompts), {len(held)} held-out pairs "
        f"({len(held_prompts)} prompts); {ties} tied pairs dropped")

    # 3. The judge's training set: each train pair asked in both orders, under a principle drawn
    # per question, answered with the gold-better option's letter.
    templates, principles = load_constitution()
    rng = random.Random(args.seed)
    sft = []
    for p in train:
        sft.append(sft_example(question(templates, p["prompt"], rng.choice(principles), p["chosen"], p["rejected"]), "A"))
        sft.append(sft_example(question(templates, p["prompt"], rng.choice(principles), p["rejected"], p["chosen"]), "B"))
    rng.shuffle(sft)
    sft_file = os.path.join(args.out, "judge_sft.jsonl")
    write_jsonl(sft_file, sft)

    # 4. Train the judge from stories260K.
    judge_dir = os.path.join(args.out, "judge")
    log(f"training the judge: rlhf sft on {len(sft)} questions, {args.sft_steps} steps, lr {args.sft_lr} ...")
    t = time.time()
    run([args.rlhf, "sft", "--model", args.model, "--train-data", sft_file, "--run-dir", judge_dir,
         "--max-steps", args.sft_steps, "--lr", args.sft_lr, "--batch-size", args.sft_batch, "--warmup-steps",
         min(30, args.sft_steps // 10), "--lr-schedule", "cosine", "--max-length", 512, "--seed", args.seed,
         "--progress", "false"], log_file=os.path.join(args.out, "sft.log"))
    sft_secs = time.time() - t
    with open(os.path.join(judge_dir, "metrics.jsonl")) as f:
        metrics = [json.loads(l) for l in f if l.strip()]
    final_loss = next((m["loss"] for m in reversed(metrics) if "loss" in m), float("nan"))
    log(f"judge trained in {sft_secs / 60:.1f} min, final loss {final_loss:.3f}")

    # 5. Agreement with the gold labels on held-out prompts, untrained vs trained judge.
    rows = []
    for name, judge, pairs_file, what in (("untrained", args.model, held_file, "held-out"),
                                          ("trained", os.path.join(judge_dir, "model"), held_file, "held-out"),
                                          ("trained_on_train", os.path.join(judge_dir, "model"), train_file, "train")):
        if args.smoke and name == "trained_on_train":
            continue
        log(f"rlhf rlaif agreement: {name} judge on {what} pairs ...")
        a = agreement(args, args.out, name, judge, pairs_file, limit=0 if what == "held-out" else len(held))
        rows.append({"judge": "stories260K" if name == "untrained" else "stories260K + judge SFT",
                     "pairs": what, "n": a["n"], "agreement": a["agreement"], "agreement_ci95": a["agreement_ci95"],
                     "mean_p_chosen": a["mean_p_chosen"], "order_consistency": a["order_consistency"],
                     "method": a["method"], "file": os.path.relpath(os.path.join(args.out, f"agreement_{name}.json"), ROOT)})

    # 6. Optional: the whole loop with the trained judge as the labeler against the simulated
    # person, at the same budget; the gold gain of the policy with its interval.
    loop = []
    if args.pipeline:
        budget = ["--ppo.max-steps", args.pipeline_ppo_steps, "--seed", args.seed]
        if args.smoke:
            budget += ["--label-prompts", 8, "--eval-prompts", 4, "--ppo.rollout-batch", 4, "--ppo.minibatches", 1]
        for name, extra in (("simulated", ["--labeler", "simulated"]),
                            ("ai", ["--labeler", "ai", "--feedback-model", os.path.join(judge_dir, "model"),
                                    "--constitution", CONSTITUTION])):
            run_dir = os.path.join(args.out, f"pipeline_{name}")
            log(f"rlhf pipeline examples/happy_stories.toml, labeler = {name}, {args.pipeline_ppo_steps} PPO steps ...")
            run([args.rlhf, "pipeline", os.path.join(ROOT, "examples", "happy_stories.toml"), "--run-dir", run_dir,
                 *budget, *extra], log_file=os.path.join(args.out, f"pipeline_{name}.log"))
            with open(os.path.join(run_dir, "summary.json")) as f:
                s = json.load(f)
            loop.append({"labeler": name, "gold_before": s["gold_before"], "gold_after": s["gold_after"],
                         "gold_diff": s["gold_diff"], "gold_diff_ci95": s["gold_diff_ci95"],
                         "rm_accuracy": s.get("rm_accuracy"), "kl": s.get("kl"),
                         "summary": os.path.relpath(os.path.join(run_dir, "summary.json"), ROOT)})

    results = {
        "date": datetime.date.today().isoformat(), "commit": git_commit(), "machine": f"{os.cpu_count()}-core CPU",
        "command": "examples/rlaif/run.py" + (" --smoke" if args.smoke else ""), "seed": args.seed,
        "constitution": os.path.relpath(CONSTITUTION, ROOT), "gold": "SentimentLexicon::score (src/feedback/labeler.cpp)",
        "prompts": {"train": len(train_prompts), "heldout": len(held_prompts)},
        "pairs": {"train": len(train), "heldout": len(held), "ties_dropped": ties},
        "samples": {"k": args.k, "max_new_tokens": args.max_new_tokens},
        "judge_sft": {"examples": len(sft), "steps": args.sft_steps, "lr": args.sft_lr, "batch_size": args.sft_batch,
                      "final_loss": final_loss, "minutes": round(sft_secs / 60, 2)},
        "rows": rows, "pipeline": loop, "minutes_total": round((time.time() - T0) / 60, 2),
    }
    text = json.dumps(results, indent=1) + "\n"
    with open(os.path.join(args.out, "results.json"), "w") as f:
        f.write(text)
    if args.publish:
        with open(os.path.join(HERE, "results.json"), "w") as f:
            f.write(text)

    print("| judge | pairs | n | agreement with gold | 95% interval | mean P(gold's choice) | order consistency |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["agreement_ci95"]
        print(f"| {r['judge']} | {r['pairs']} | {r['n']} | {r['agreement']:.3f} | [{lo:.3f}, {hi:.3f}] "
              f"| {r['mean_p_chosen']:.3f} | {r['order_consistency']:.3f} |")
    if loop:
        print("\n| labeler | gold before -> after | gold gain | 95% interval | RM held-out accuracy | KL |")
        print("|---|---|---|---|---|---|")
        for r in loop:
            lo, hi = r["gold_diff_ci95"]
            print(f"| {r['labeler']} | {r['gold_before']:.3f} -> {r['gold_after']:.3f} | {r['gold_diff']:.3f} "
                  f"| [{lo:.3f}, {hi:.3f}] | {r['rm_accuracy']:.3f} | {r['kl']:.2f} |")
    log(f"done in {(time.time() - T0) / 60:.1f} min; {os.path.join(args.out, 'results.json')}")


if __name__ == "__main__":
    main()
