"""The verifiable-reward task: two-number arithmetic with an exact answer, small enough for a model
trained here on 2 CPU cores (stdlib only, deterministic for a seed).

A problem is `a + b` or `a - b` with a, b in 10..99 (subtraction keeps a >= b), asked as

    Question: What is 47 + 25?
    Answer:

and answered ` The answer is 72.` (then EOS). Held out: a fixed tenth of the (a, op, b) triples,
chosen by a hash, never appears in the fine-tuning data nor among the RL prompts, so held-out
accuracy measures the skill, not memory.
"""
import hashlib
import json
import random

PROMPT = "Question: What is {a} {op} {b}?\nAnswer:"
COMPLETION = " The answer is {c}."
# The reward's settings for this format (rlhf ppo --answer-pattern / --format-pattern).
ANSWER_PATTERN = r"The answer is (-?[0-9]+)\."
FORMAT_PATTERN = r"^ The answer is -?[0-9]+\.$"


def held_out(a, op, b):
    return hashlib.sha256(f"{a}{op}{b}".encode()).digest()[0] < 26  # about 10%


def problems(split):
    """Every problem of a split ("train" or "heldout") in a fixed order."""
    out = []
    for a in range(10, 100):
        for b in range(10, 100):
            for op in "+-":
                if op == "-" and a < b:
                    continue
                if held_out(a, op, b) == (split == "heldout"):
                    c = a + b if op == "+" else a - b
                    out.append({"prompt": PROMPT.format(a=a, op=op, b=b), "answer": str(c),
                                "completion": COMPLETION.format(c=c)})
    return out


def write(path, rows, fields):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in fields}) + "\n")


def make(out_dir, seed=0, n_sft=4000, n_rl=2000, n_eval=500):
    """sft.jsonl (prompt, completion), rl_prompts.jsonl (prompt, answer: disjoint from sft's
    problems), heldout.jsonl (question, gold)."""
    rng = random.Random(seed)
    train, heldout = problems("train"), problems("heldout")
    rng.shuffle(train)
    rng.shuffle(heldout)
    assert n_sft + n_rl <= len(train) and n_eval <= len(heldout)
    write(f"{out_dir}/sft.jsonl", train[:n_sft], ["prompt", "completion"])
    write(f"{out_dir}/rl_prompts.jsonl", train[n_sft:n_sft + n_rl], ["prompt", "answer"])
    for r in heldout:
        r["question"], r["gold"] = r["prompt"], r["answer"]
    write(f"{out_dir}/heldout.jsonl", heldout[:n_eval], ["question", "gold"])
    return {"train_problems": len(train), "heldout_problems": len(heldout)}


if __name__ == "__main__":
    import sys
    print(make(sys.argv[1]))
