#!/usr/bin/env python3
"""A small synthetic world for the application-layer example (stdlib only, seeded, deterministic).

  (a) arithmetic word problems: a start amount and two to four operations (+, -, *, //),
      integer answers, numbers up to three digits in the question;
  (b) a knowledge base of invented towns and people, one short document per entity, with
      single-hop questions (one fact) and two-hop questions (two lookups and a calculation).

Training and held-out problems come from disjoint pools of names and question templates, and
every held-out arithmetic problem starts from an amount in 900..999, a range no training
question contains; check_disjoint() asserts all of it. The world has two halves (training and
held-out entities) whose relations stay inside their half, so no held-out name ever appears in
a training prompt, document or completion.

SFT data is written in each app's format, with prompts made from the same template files the
app commands get via --template (templates/*.txt), so training and inference prompts match
byte for byte:
  direct  templates/direct.txt  -> "The answer is N."                       (rlhf cot)
  cot     templates/cot.txt     -> one line per step, then "The answer is N." (rlhf cot)
  pal     templates/pal.txt     -> a Lua program ending in `return x`, then "\\n```" (rlhf pal)
  closed  templates/closed.txt  -> "The answer is A."                       (rlhf cot)
  rag     templates/rag.txt     -> "A [i]" with the retrieved context       (rlhf rag ask)
  react   templates/react.txt   -> one example per step of a trajectory     (rlhf react)

Usage: python3 world.py --out DIR [--seed 0] [--quick]
"""
import argparse
import json
import math
import os
import random
import re

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(HERE, "templates")

# ---------------------------------------------------------------------------------------------
# Names: invented words from syllables; every word (first name, last name, town) is distinct, so
# a name's terms point BM25 at that entity's own document.

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr",
          "tr", "st", "th", "sh"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "or", "el"]
FIRST_ENDS = ["in", "a", "o", "an", "is", "el", "ia"]
LAST_ENDS = ["ell", "ard", "wick", "mont", "ley", "ton", "ski", "berg"]
TOWN_ENDS = ["mora", "holm", "ford", "vale", "wick", "gard", "port", "stead", "mere"]


def make_words(rng, n, syllables, ends, taken):
    words = []
    while len(words) < n:
        w = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables)) + rng.choice(ends)
        w = w.capitalize()
        if w not in taken and len(w) <= 11:
            taken.add(w)
            words.append(w)
    return words


JOBS = ["baker", "sailor", "weaver", "potter", "miller", "smith", "farmer", "teacher", "doctor", "painter",
        "carpenter", "fisher"]
ITEMS = ["apples", "marbles", "coins", "stickers", "shells", "pencils", "stamps", "cards", "beads", "buttons"]

# ---------------------------------------------------------------------------------------------
# Question templates: disjoint training and held-out pools per task.

ARITH_TEMPLATES = {
    "train": {
        "start": ["{name} has {n} {item}."],
        "add": ["{name} finds {n} more {item}.", "{name} gets {n} {item} from a friend.", "{name} buys {n} more {item}."],
        "sub": ["{name} gives away {n} {item}.", "{name} loses {n} {item}.", "{name} sells {n} {item}."],
        "mul": ["Then the number of {item} is multiplied by {n}.", "{name} makes the pile {n} times as big."],
        "div": ["{name} splits the {item} into {n} equal groups and keeps one group.",
                "{name} shares the {item} equally among {n} friends and keeps one share."],
        "ask": ["How many {item} does {name} have now?", "How many {item} does {name} have at the end?"],
    },
    "heldout": {
        # new frames around the operation words the model knows (a 260K-parameter model trained
        # only on this world cannot learn synonyms it never saw, e.g. "are sold" for "sells")
        "start": ["{name} starts with {n} {item}."],
        "add": ["Later {name} finds another {n} {item}."],
        "sub": ["Later {name} sells {n} of the {item}."],
        "mul": ["Then the number of {item} is {n} times as big."],
        "div": ["Next the {item} are split into {n} equal groups and {name} keeps one group."],
        "ask": ["How many {item} are there at the end?"],
    },
}

SINGLE_TEMPLATES = {  # relation -> templates; {e} is the entity
    "train": {
        "mayor": ["Who is the mayor of {e}?", "Who leads {e} as mayor?", "Tell me the mayor of {e}."],
        "population": ["How many people live in {e}?", "What number of people does {e} have?",
                       "Give the population of {e}."],
        "founded": ["In what year was {e} founded?", "What year was {e} founded in?", "Give the founding year of {e}."],
        "age": ["How old is {e}?", "Give the age of {e}.", "How many years old is {e}?"],
        "job": ["What does {e} do for a living?", "What job does {e} have?", "Give the job of {e}."],
        "born": ["Where was {e} born?", "In which town was {e} born?", "What town does {e} come from?"],
    },
    "heldout": {
        "mayor": ["Name the mayor of {e}."],
        "population": ["What is the population of {e}?"],
        "founded": ["When was {e} founded?"],
        "age": ["What is the age of {e}?"],
        "job": ["What is the job of {e}?"],
        "born": ["Which town is {e} from?"],
    },
}

TWO_HOP_TEMPLATES = {  # kind -> templates; {e} the entity, {n} the number
    "train": {
        "mayor_age_plus": ["How old will the mayor of {e} be in {n} years?",
                           "What age will the mayor of {e} be {n} years from now?"],
        "mayor_age_minus": ["How old was the mayor of {e} {n} years ago?",
                            "How many years old was the mayor of {e} {n} years ago?"],
        "birthplace_pop_plus": ["If {n} people moved to the town where {e} was born, how many people would live there?",
                                "After {n} more people arrive in the birthplace of {e}, how many people live there?"],
        "birthplace_founded": ["How many years before 2000 was the town where {e} was born founded?",
                               "How many years before 2000 was the birthplace of {e} founded?"],
    },
    "heldout": {
        "mayor_age_plus": ["In {n} years, what age will the mayor of {e} reach?"],
        "mayor_age_minus": ["What age did the mayor of {e} have {n} years ago?"],
        "birthplace_pop_plus": ["How many people would live in the birthplace of {e} after {n} more arrive?"],
        "birthplace_founded": ["The birthplace of {e} was founded how many years before 2000?"],
    },
}

HELDOUT_START = (900, 999)  # every held-out arithmetic problem starts here; no training question has such a number
TRAIN_NUMBERS = (2, 899)

# ---------------------------------------------------------------------------------------------
# Arithmetic


def arith_problem(rng, split, names):
    """A start amount and 2..4 operations; (question, steps, answer). steps: [(a, op, b, result)]."""
    pool = ARITH_TEMPLATES[split]
    train_pool = ARITH_TEMPLATES["train"]
    while True:
        name, item = rng.choice(names), rng.choice(ITEMS)
        lo, hi = HELDOUT_START if split == "heldout" else (10, TRAIN_NUMBERS[1])
        x = rng.randint(lo, hi)
        sentences = [rng.choice(pool["start"]).format(name=name, n=x, item=item)]
        steps, n_ops = [], rng.randint(2, 4)
        for _ in range(n_ops):
            ops = ["add", "sub", "mul", "div"]
            rng.shuffle(ops)
            for op in ops:
                if op == "add":
                    b = rng.randint(2, TRAIN_NUMBERS[1])
                    if x + b > 9999: continue
                    y = x + b
                elif op == "sub":
                    if x < 4: continue
                    b = rng.randint(2, min(x - 1, TRAIN_NUMBERS[1]))
                    y = x - b
                elif op == "mul":
                    b = rng.randint(2, 9)
                    if x * b > 9999: continue
                    y = x * b
                else:
                    divisors = [d for d in range(2, 10) if x % d == 0]
                    if not divisors: continue
                    b = rng.choice(divisors)
                    y = x // b
                break
            # held-out sentences: half the steps from the held-out pool (the question always is)
            p = pool if split == "heldout" and rng.random() < 0.5 else train_pool
            sentences.append(rng.choice(p[op]).format(name=name, n=b, item=item))
            steps.append((x, op, b, y))
            x = y
        if split == "heldout" and all(s in _train_sentences(train_pool, name, item, steps) for s in sentences[1:]):
            continue  # at least one held-out step sentence
        sentences.append(rng.choice(pool["ask"]).format(name=name, item=item))
        return " ".join(sentences), steps, x


def _train_sentences(pool, name, item, steps):
    return {t.format(name=name, n=b, item=item) for (_, op, b, _) in steps for t in pool[op]}


SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
LUA = {"add": "+", "sub": "-", "mul": "*", "div": "//"}


def cot_text(steps, answer):
    lines = [f"We start with {steps[0][0]}."]
    lines += [f"{a} {SYMBOL[op]} {b} = {y}." for (a, op, b, y) in steps]
    return "\n".join(lines) + f"\nThe answer is {answer}."


def pal_program(steps):
    lines = [f"local x = {steps[0][0]}"] + [f"x = x {LUA[op]} {b}" for (_, op, b, _) in steps] + ["return x"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Knowledge base


def make_kb(rng, split, towns, firsts, lasts):
    """Towns and people of one half of the world. Each town's mayor is one of its people, born
    in another town of the same half (so the mayor's own document never names the town)."""
    people = [f"{f} {l}" for f, l in zip(firsts, lasts)]
    kb = {"towns": {}, "people": {}}
    for t in towns:
        kb["towns"][t] = {"population": rng.randint(1000, 9999), "founded": rng.randint(1200, 1899), "mayor": None}
    mayors = rng.sample(people, len(towns))
    for p in people:
        kb["people"][p] = {"age": rng.randint(25, 80), "job": rng.choice(JOBS), "born": rng.choice(towns)}
    for t, m in zip(towns, mayors):
        kb["towns"][t]["mayor"] = m
        while kb["people"][m]["born"] == t:
            kb["people"][m]["born"] = rng.choice(towns)
    kb["split"] = split
    return kb


def doc_id(name):
    return name.lower().replace(" ", "-")


def town_doc(t, f):
    return f"{t} is a town with {f['population']} people. {t} was founded in {f['founded']} and its mayor is {f['mayor']}."


def person_doc(p, f):
    return f"{p} is a {f['job']}. {p} is {f['age']} years old and was born in {f['born']}."


def kb_docs(kb):
    docs = [{"id": doc_id(t), "text": town_doc(t, f)} for t, f in kb["towns"].items()]
    docs += [{"id": doc_id(p), "text": person_doc(p, f)} for p, f in kb["people"].items()]
    return docs


def single_hop(rng, kb, split):
    rel = rng.choice(["mayor", "population", "founded", "age", "job", "born"])
    if rel in ("mayor", "population", "founded"):
        e = rng.choice(sorted(kb["towns"]))
        answer = kb["towns"][e][rel]
    else:
        e = rng.choice(sorted(kb["people"]))
        answer = kb["people"][e][rel]
    q = rng.choice(SINGLE_TEMPLATES[split][rel]).format(e=e)
    return {"question": q, "answer": str(answer), "kind": rel, "gold_docs": [doc_id(e)]}


def two_hop(rng, kb, split):
    """The question, its answer, and the ReAct trajectory that solves it (thought, tool, argument)."""
    kind = rng.choice(sorted(TWO_HOP_TEMPLATES[split]))
    n = rng.randint(2, 20)
    if kind.startswith("mayor"):
        e = rng.choice(sorted(kb["towns"]))
        m = kb["towns"][e]["mayor"]
        age = kb["people"][m]["age"]
        op = "+" if kind == "mayor_age_plus" else "-"
        answer = age + n if op == "+" else age - n
        expr = f"{age} {op} {n}"
        plan = [(f"Find the mayor of {e}.", "search", e),
                (f"The mayor is {m}. Find the age of {m}.", "search", m),
                (f"{m} is {age}. Compute {expr}.", "calculate", expr)]
        gold = [doc_id(e), doc_id(m)]
    else:
        e = rng.choice(sorted(kb["people"]))
        b = kb["people"][e]["born"]
        if kind == "birthplace_pop_plus":
            v = kb["towns"][b]["population"]
            expr, fact = f"{v} + {n}", f"{b} has {v} people"
        else:
            v = kb["towns"][b]["founded"]
            expr, fact = f"2000 - {v}", f"{b} was founded in {v}"
        answer = eval(expr)  # two integers and one operator, written above
        attr = "population" if kind == "birthplace_pop_plus" else "founding year"
        plan = [(f"Find where {e} was born.", "search", e),
                (f"{e} was born in {b}. Find the {attr} of {b}.", "search", b),
                (f"{fact}. Compute {expr}.", "calculate", expr)]
        gold = [doc_id(e), doc_id(b)]
    q = rng.choice(TWO_HOP_TEMPLATES[split][kind]).format(e=e, n=n)
    return {"question": q, "answer": str(answer), "kind": kind, "gold_docs": gold, "plan": plan}


# ---------------------------------------------------------------------------------------------
# BM25 (the ranking SQLite FTS5 uses: k1 = 1.2, b = 0.75, unicode61-style tokens), for the
# contexts of RAG training examples and the observations of ReAct trajectories.

def terms(text):
    return re.findall(r"[a-z0-9]+", text.lower())


class Bm25:
    def __init__(self, docs):
        self.docs = docs
        self.tf = [{} for _ in docs]
        self.len = []
        df = {}
        for i, d in enumerate(docs):
            ts = terms(d["text"])
            self.len.append(len(ts))
            for t in ts:
                self.tf[i][t] = self.tf[i].get(t, 0) + 1
            for t in set(ts):
                df[t] = df.get(t, 0) + 1
        self.avg = sum(self.len) / len(docs)
        n = len(docs)
        self.idf = {t: max(1e-6, math.log((n - c + 0.5) / (c + 0.5))) for t, c in df.items()}
        self.postings = {}
        for i, tf in enumerate(self.tf):
            for t in tf:
                self.postings.setdefault(t, []).append(i)

    def search(self, query, k):
        scores = {}
        for t in set(terms(query)):
            for i in self.postings.get(t, []):
                f = self.tf[i][t]
                s = self.idf[t] * f * 2.2 / (f + 1.2 * (0.25 + 0.75 * self.len[i] / self.avg))
                scores[i] = scores.get(i, 0.0) + s
        ranked = sorted(scores, key=lambda i: (-scores[i], i))[:k]
        return [self.docs[i] for i in ranked]


def rag_context(chunks):
    return "\n".join(f"[{i}] {c['text']}" for i, c in enumerate(chunks, 1))


def search_observation(bm25, query):
    hit = bm25.search(query, 1)
    return f"[{hit[0]['id']}#0] {hit[0]['text']}" if hit else "No results."


# ---------------------------------------------------------------------------------------------
# Formats. One function per app, used for training examples (and their gold completions).

def load_templates():
    out = {}
    for name in ["direct", "cot", "pal", "closed", "rag", "react"]:
        with open(os.path.join(TEMPLATES, name + ".txt"), encoding="utf-8") as f:
            out[name] = f.read()
    return out


def fill(template, question, context=None):
    text = template.replace("{question}", question)
    return text.replace("{context}", context) if context is not None else text


def react_step(thought, tool, arg):
    return f"Thought: {thought}\nAction: {tool}[{arg}]"


def react_observation(obs):
    """What the react command appends after a step the model generated (cut before its stop
    string "\\nObservation:")."""
    return f"\nObservation: {obs}\n"


def react_examples(tpl, bm25, q, plan, answer):
    """One SFT example per step: the prompt is the template plus the trajectory so far.

    A completion is encoded on its own, and SentencePiece tokenizers (tok512) start it with a
    word-boundary piece, so the model writes " Thought: ..." with a leading space and the react
    command keeps that text in the trajectory; the history here has the same space."""
    history, out = fill(tpl, q), []
    for thought, tool, arg in plan:
        step = react_step(thought, tool, arg)
        out.append({"prompt": history, "completion": step + "\nObservation:"})
        obs = search_observation(bm25, arg) if tool == "search" else str(eval(arg))
        history += " " + step + react_observation(obs)
    out.append({"prompt": history, "completion": react_step(f"The answer is {answer}.", "finish", answer)})
    return out


def rag_example(tpl, bm25, item, k):
    """The context is what BM25 retrieves from the training index; citations mark the gold docs in it."""
    chunks = bm25.search(item["question"], k)
    cites = "".join(f"[{i}]" for i, c in enumerate(chunks, 1) if c["id"] in item["gold_docs"])
    completion = item["answer"] + (f" {cites}" if cites else "")
    return {"prompt": fill(tpl, item["question"], rag_context(chunks)), "completion": completion}


# ---------------------------------------------------------------------------------------------

def build(out, seed=0, quick=False):
    rng = random.Random(seed)
    sizes = dict(towns=(40, 12), people=(120, 36), arith=1200, single=800, two=800) if quick else \
        dict(towns=(200, 40), people=(600, 120), arith=6000, single=4000, two=3000)
    n_eval = 30 if quick else 200  # held-out questions per task
    k = 3

    taken = set()
    towns = make_words(rng, sum(sizes["towns"]), 1, TOWN_ENDS, taken)
    firsts = make_words(rng, sum(sizes["people"]), 1, FIRST_ENDS, taken)
    lasts = make_words(rng, sum(sizes["people"]), 2, LAST_ENDS, taken)
    arith_names = make_words(rng, 120, 1, FIRST_ENDS, taken)
    nt, npp = sizes["towns"][0], sizes["people"][0]
    kb_train = make_kb(rng, "train", towns[:nt], firsts[:npp], lasts[:npp])
    kb_held = make_kb(rng, "heldout", towns[nt:], firsts[npp:], lasts[npp:])
    arith_pool = {"train": arith_names[:90], "heldout": arith_names[90:]}

    docs_train, docs_held = kb_docs(kb_train), kb_docs(kb_held)
    bm25_train, bm25_all = Bm25(docs_train), Bm25(docs_train + docs_held)
    check_search(bm25_all, kb_train, kb_held)
    tpl = load_templates()

    # Training problems (every one distinct from the held-out ones by construction; see check_disjoint)
    sft, train_q = [], []
    for _ in range(sizes["arith"]):
        q, steps, a = arith_problem(rng, "train", arith_pool["train"])
        train_q.append(q)
        sft.append({"prompt": fill(tpl["direct"], q), "completion": f"The answer is {a}."})
        sft.append({"prompt": fill(tpl["cot"], q), "completion": cot_text(steps, a)})
        sft.append({"prompt": fill(tpl["pal"], q), "completion": pal_program(steps) + "\n```"})
    for _ in range(sizes["single"]):
        it = single_hop(rng, kb_train, "train")
        train_q.append(it["question"])
        sft.append({"prompt": fill(tpl["closed"], it["question"]), "completion": f"The answer is {it['answer']}."})
        sft.append(rag_example(tpl["rag"], bm25_train, it, k))
    for _ in range(sizes["two"]):
        it = two_hop(rng, kb_train, "train")
        train_q.append(it["question"])
        sft.append(rag_example(tpl["rag"], bm25_train, it, k))
        sft += react_examples(tpl["react"], bm25_train, it["question"], it["plan"], it["answer"])
    rng.shuffle(sft)

    # Held-out problems
    # Held-out problems, and their gold completions in every format (sft_heldout.jsonl: an
    # evaluation loss for choosing the model, never trained on)
    held, sft_held = {"arith": [], "single": [], "two": []}, []
    for i in range(n_eval):
        q, steps, a = arith_problem(rng, "heldout", arith_pool["heldout"])
        held["arith"].append({"id": f"arith-{i}", "question": q, "gold": str(a), "ops": len(steps)})
        sft_held.append({"prompt": fill(tpl["direct"], q), "completion": f"The answer is {a}."})
        sft_held.append({"prompt": fill(tpl["cot"], q), "completion": cot_text(steps, a)})
        sft_held.append({"prompt": fill(tpl["pal"], q), "completion": pal_program(steps) + "\n```"})
    for i in range(n_eval):
        it = single_hop(rng, kb_held, "heldout")
        held["single"].append({"id": f"single-{i}", "question": it["question"], "gold": it["answer"], "kind": it["kind"]})
        sft_held.append(rag_example(tpl["rag"], bm25_all, it, k))
    for i in range(n_eval):
        it = two_hop(rng, kb_held, "heldout")
        held["two"].append({"id": f"two-{i}", "question": it["question"], "gold": it["answer"], "kind": it["kind"]})
        sft_held += react_examples(tpl["react"], bm25_all, it["question"], it["plan"], it["answer"])

    check_disjoint(train_q, sft, held, docs_train, kb_held, arith_pool)

    os.makedirs(out, exist_ok=True)
    write_jsonl(os.path.join(out, "docs.jsonl"), docs_train + docs_held)
    write_jsonl(os.path.join(out, "docs_train.jsonl"), docs_train)
    write_jsonl(os.path.join(out, "sft_train.jsonl"), sft)
    write_jsonl(os.path.join(out, "sft_heldout.jsonl"), sft_held)
    for task, rows in held.items():
        write_jsonl(os.path.join(out, f"heldout_{task}.jsonl"), rows)
    return {"sft_examples": len(sft), "docs": len(docs_train) + len(docs_held),
            "heldout": {t: len(r) for t, r in held.items()}}


def check_search(bm25, *kbs):
    """Searching an entity's name must find its own document first: ReAct's observations rely on it."""
    for kb in kbs:
        for name in list(kb["towns"]) + list(kb["people"]):
            top = bm25.search(name, 1)[0]["id"]
            assert top == doc_id(name), f"search[{name}] finds {top}"


def check_disjoint(train_q, sft, held, docs_train, kb_held, arith_pool):
    """Held-out problems share no name, no question template and no start range with training."""
    train_text = "\n".join([x["prompt"] + x["completion"] for x in sft] + [d["text"] for d in docs_train])
    train_words = set(re.findall(r"[A-Za-z]+", train_text))
    held_names = set(kb_held["towns"]) | {w for p in kb_held["people"] for w in p.split()} | set(arith_pool["heldout"])
    leaked = held_names & train_words
    assert not leaked, f"held-out names in training data: {sorted(leaked)[:5]}"
    assert not set(arith_pool["heldout"]) & set(arith_pool["train"])
    for split_a, split_b in [("train", "heldout")]:
        for pools in (SINGLE_TEMPLATES, TWO_HOP_TEMPLATES):
            a = {t for ts in pools[split_a].values() for t in ts}
            b = {t for ts in pools[split_b].values() for t in ts}
            assert not a & b, f"shared templates: {a & b}"
        a = {t for key, ts in ARITH_TEMPLATES[split_a].items() for t in ts}
        b = {t for key, ts in ARITH_TEMPLATES[split_b].items() for t in ts}
        assert not a & b, f"shared arithmetic templates: {a & b}"
    # numbers: no training question has one in the held-out start range; every held-out problem has one
    lo, hi = HELDOUT_START
    for q in train_q:
        assert not any(lo <= int(n) <= hi for n in re.findall(r"\d+", q)), q
    for it in held["arith"]:
        assert any(lo <= int(n) <= hi for n in re.findall(r"\d+", it["question"])), it["question"]
    # question templates: each held-out question is built from a held-out question sentence
    train_set = set(train_q)
    for rows in held.values():
        for it in rows:
            assert it["question"] not in train_set


def write_jsonl(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="seed of everything random")
    ap.add_argument("--quick", action="store_true", help="tiny sizes for smoke runs")
    args = ap.parse_args()
    print(json.dumps(build(args.out, args.seed, args.quick)))


if __name__ == "__main__":
    main()
