"""examples/arith_rl: the task's splits and scratchpads are what its README says, the reward the
RL rows train on (rl.toml's answer_pattern, read by the C++ exact_answer verifier) is the pattern
the evaluation scores with, and run.py --quick runs every algorithm on the same budget of
samples and writes its table."""
import importlib.util, json, os, re, subprocess, sys, tempfile, tomllib

BUILD = os.environ["RLHF_BUILD"]
RLHF = os.path.join(BUILD, "bin", "rlhf")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "examples", "arith_rl")
sys.path.insert(0, HERE)
import task  # noqa: E402


def jsonl(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def check_scratchpads():
    """Each scratchpad's steps are true, and its last step's result followed by the units digit is the answer."""
    for split in ("train", "heldout"):
        for p in task.problems(split):
            a, op, b = re.match(r"Question: What is (\d+) ([+-]) (\d+)\?", p["prompt"]).groups()
            steps = re.findall(r"(\d+(?:[+-]\d+)+)=(\d+)", p["scratchpad"])
            assert len(steps) == 2, p
            for expr, value in steps:
                assert eval(expr) == int(value), (p, expr)
            units, tens = int(steps[0][1]) % 10, int(steps[1][1])
            assert str(tens * 10 + units) == p["answer"], p
            assert p["scratchpad"].endswith(task.ANSWER.format(c=p["answer"]))
            assert task.uses_scratchpad(p["scratchpad"]) and not task.uses_scratchpad(p["direct"])
            assert str(eval(f"{a} {op} {b}")) == p["answer"]


def check_splits(tmp):
    task.make(tmp, seed=3)
    sft, rl, heldout = jsonl(f"{tmp}/sft.jsonl"), jsonl(f"{tmp}/rl_prompts.jsonl"), jsonl(f"{tmp}/heldout.jsonl")
    assert (len(sft), len(rl), len(heldout)) == (4000, 2000, 500)
    sft_p, rl_p, held_p = {r["prompt"] for r in sft}, {r["prompt"] for r in rl}, {r["question"] for r in heldout}
    assert not (sft_p & rl_p) and not (sft_p & held_p) and not (rl_p & held_p)
    styles = sum(task.uses_scratchpad(r["completion"]) for r in sft)
    assert 1800 < styles < 2200, styles  # about half with a scratchpad
    for r in rl:
        a, op, b = re.match(r"Question: What is (\d+) ([+-]) (\d+)\?", r["prompt"]).groups()
        assert str(eval(f"{a} {op} {b}")) == r["answer"]


def check_reward_pattern():
    with open(os.path.join(HERE, "rl.toml"), "rb") as f:
        cfg = tomllib.load(f)
    assert cfg["reward"] == "exact_answer" and cfg["answer_pattern"] == task.ANSWER_PATTERN
    pattern = re.compile(task.ANSWER_PATTERN)
    assert pattern.findall(" 7+5=12, 4+2+1=7. The answer is 72.") == ["72"]


def check_quick_run(tmp):
    out = os.path.join(tmp, "quick")
    subprocess.run([sys.executable, os.path.join(HERE, "run.py"), "--quick", "--out", out, "--rlhf", RLHF,
                    "--algorithms", "grpo,online_dpo,best_of_n"], check=True, capture_output=True, text=True)
    table = json.load(open(os.path.join(out, "table.json")))
    rows = {r["algorithm"]: r for r in table["rows"]}
    assert list(rows) == ["start (SFT)", "grpo", "online_dpo", "best_of_n"], list(rows)
    assert {rows[a]["samples"] for a in ("grpo", "online_dpo", "best_of_n")} == {4 * 64}  # one budget
    for name, r in rows.items():
        assert r["n"] == 100
        for key in ("greedy", "sampled"):
            lo, hi = r[key]["ci95"]
            assert 0 <= lo <= r[key]["accuracy"] <= hi <= 1, (name, r[key])
        if name != "start (SFT)":
            metrics = jsonl(os.path.join(out, "rl", name, "metrics.jsonl"))
            assert len(metrics) == 4 and all("reward/exact_answer" in m for m in metrics), name
            cfg = open(os.path.join(out, "rl", name, "config.toml")).read()
            assert re.search(rf"^algorithm = ['\"]{name}['\"]", cfg, re.M), name
            # The evaluation's answers are the trained model's: rescoring its file gives the row's figure.
            scored = [json.loads(l) for l in open(os.path.join(out, "eval", f"{name}_t0.jsonl"))]
            right = sum(bool(f := re.findall(task.ANSWER_PATTERN, s["reasoning"])) and f[-1] == s["gold"] for s in scored)
            assert right / len(scored) == r["greedy"]["accuracy"], name
    assert open(os.path.join(out, "table.md")).read().count("\n") == 2 + len(rows)


if __name__ == "__main__":
    check_scratchpads()
    check_reward_pattern()
    with tempfile.TemporaryDirectory() as tmp:
        check_splits(tmp)
        check_quick_run(tmp)
    print("ok")
