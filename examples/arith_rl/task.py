"""The verifiable-reward task: two-number arithmetic with an exact answer, small enough for a model
trained here on 2 CPU cores (stdlib only, deterministic for a seed).

A problem is `a + b` or `a - b` with a, b in 10..99 (subtraction keeps a >= b), asked as

    Question: What is 47 + 25?
    Answer:

The fine-tuning data answer half the problems directly, ` The answer is 72.`, and half with a
scratchpad that works digit by digit first, ` 7+5=12, 4+2+1=7. The answer is 72.` (subtraction
borrows: ` 12-5=7, 4-1-2=1. The answer is 17.` for 42 - 25); EOS follows. The fine-tuned model
picks either style about half the time, and the scratchpad is right far more often: a policy
rewarded for right answers can learn to choose it. Held out: a fixed tenth of the (a, op, b)
triples, chosen by a hash, never appears in the fine-tuning data nor among the RL prompts, so
held-out accuracy measures the skill, not memory.
"""
import hashlib
import json
import random

PROMPT = "Question: What is {a} {op} {b}?\nAnswer:"
ANSWER = " The answer is {c}."
# The reward's settings for this format (rlhf ppo --answer-pattern / --format-pattern).
ANSWER_PATTERN = r"The answer is (-?[0-9]+)\."


def held_out(a, op, b):
    return hashlib.sha256(f"{a}{op}{b}".encode()).digest()[0] < 26  # about 10%


def scratchpad(a, op, b):
    """The digit-by-digit working of a op b, without the final answer sentence."""
    (a1, a0), (b1, b0) = divmod(a, 10), divmod(b, 10)
    if op == "+":
        carry = (a0 + b0) // 10
        tens = f"{a1}+{b1}+{carry}" if carry else f"{a1}+{b1}"
        return f" {a0}+{b0}={a0 + b0}, {tens}={a1 + b1 + carry}."
    borrow = a0 < b0
    units = f"{a0 + 10 * borrow}-{b0}={a0 + 10 * borrow - b0}"
    tens = f"{a1}-1-{b1}" if borrow else f"{a1}-{b1}"
    return f" {units}, {tens}={a1 - borrow - b1}."


def problems(split):
    """Every problem of a split ("train" or "heldout") in a fixed order, with both completions."""
    out = []
    for a in range(10, 100):
        for b in range(10, 100):
            for op in "+-":
                if op == "-" and a < b:
                    continue
                if held_out(a, op, b) == (split == "heldout"):
                    c = a + b if op == "+" else a - b
                    out.append({"prompt": PROMPT.format(a=a, op=op, b=b), "answer": str(c),
                                "direct": ANSWER.format(c=c), "scratchpad": scratchpad(a, op, b) + ANSWER.format(c=c)})
    return out


def uses_scratchpad(response):
    """Whether a response works digit by digit before answering (starts with a digit)."""
    return response.lstrip()[:1].isdigit()


def write(path, rows, fields):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in fields}) + "\n")


def make(out_dir, seed=0, n_sft=4000, n_rl=2000, n_eval=500):
    """sft.jsonl (prompt, completion: half direct, half scratchpad), rl_prompts.jsonl (prompt,
    answer: problems disjoint from sft's), heldout.jsonl (question, gold)."""
    rng = random.Random(seed)
    train, heldout = problems("train"), problems("heldout")
    rng.shuffle(train)
    rng.shuffle(heldout)
    assert n_sft + n_rl <= len(train) and n_eval <= len(heldout)
    for r in train[:n_sft]:
        r["completion"] = r["scratchpad"] if rng.random() < 0.5 else r["direct"]
    write(f"{out_dir}/sft.jsonl", train[:n_sft], ["prompt", "completion"])
    write(f"{out_dir}/rl_prompts.jsonl", train[n_sft:n_sft + n_rl], ["prompt", "answer"])
    for r in heldout:
        r["question"], r["gold"] = r["prompt"], r["answer"]
    write(f"{out_dir}/heldout.jsonl", heldout[:n_eval], ["question", "gold"])
    return {"train_problems": len(train), "heldout_problems": len(heldout)}


if __name__ == "__main__":
    import sys
    print(make(sys.argv[1]))
