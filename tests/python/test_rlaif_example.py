"""examples/rlaif/run.py in --smoke mode (tiny sizes, seconds): it writes its files; the train and
held-out prompts are disjoint; its Python copy of the gold score equals the C++
SentimentLexicon::score (through rlhf_lexicon_tool); each judge question it trains on is the
question FeedbackModel sends (captured by a fake OpenAI endpoint that `rlhf rlaif agreement`
asks), answered with the gold-better option's letter, and the SFT record encodes to the same
token ids as the question plus that letter, which is where FeedbackModel reads the answer."""
import http.server, importlib.util, json, math, os, subprocess, sys, tempfile, threading

BUILD = os.environ["RLHF_BUILD"]
DATA = os.environ["RLHF_DATA"]
RLHF = os.path.join(BUILD, "bin", "rlhf")
MODEL = os.path.join(DATA, "stories260K", "stories260K.gguf")
TOKENIZER = os.path.join(DATA, "stories260K", "tok512.bin")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_PY = os.path.join(ROOT, "examples", "rlaif", "run.py")

spec = importlib.util.spec_from_file_location("rlaif_run", RUN_PY)
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)


def jsonl(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


class FakeEndpoint(http.server.ThreadingHTTPServer):
    """An OpenAI-compatible /v1/completions that records each prompt and answers with fixed
    log-probabilities of the option letters."""

    def __init__(self):
        self.prompts, self.lock = [], threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.reply({"object": "list", "data": [{"id": "fake", "object": "model"}]})

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.prompts.append(req["prompt"])
                self.reply({"object": "text_completion", "model": "fake", "choices": [
                    {"index": 0, "text": "A", "finish_reason": "length",
                     "logprobs": {"tokens": ["A"], "token_logprobs": [-0.4], "top_logprobs": [{"A": -0.4, "B": -1.1}]}}]})

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def tokenize(texts, add_bos):
    """stories260K's tokenizer (tok512.bin, as in its GGUF; checked below) on many texts at once."""
    tool = os.path.join(BUILD, "tests", "rlhf_tokenize_tool")
    r = subprocess.run([tool, "--tokenizer", TOKENIZER] + (["--add-bos"] if add_bos else []),
                       input="".join(json.dumps(t) + "\n" for t in texts), capture_output=True, text=True, check=True)
    return [json.loads(l) for l in r.stdout.splitlines()]


def main():
    out = tempfile.mkdtemp(prefix="rlaif_example_")
    r = subprocess.run([sys.executable, RUN_PY, "--smoke", "--out", out, "--rlhf", RLHF], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

    # The files, and a table row per judge with its interval.
    results = json.load(open(os.path.join(out, "results.json")))
    held, train, sft = (jsonl(os.path.join(out, f)) for f in ("heldout_pairs.jsonl", "train_pairs.jsonl", "judge_sft.jsonl"))
    assert train and held, "smoke run gave no train or no held-out pairs"
    assert [row["judge"] for row in results["rows"]] == ["stories260K", "stories260K + judge SFT"], results["rows"]
    for row in results["rows"]:
        lo, hi = row["agreement_ci95"]
        assert row["n"] == len(held) and 0 <= lo <= row["agreement"] <= hi <= 1, row
        assert f"| {row['judge']} | held-out | {row['n']} | {row['agreement']:.3f} |" in r.stdout, r.stdout
    assert os.path.exists(os.path.join(out, "judge", "model", "config.json"))
    assert not {p["prompt"] for p in held} & {p["prompt"] for p in train}, "a prompt is in both train and held-out"

    # The gold score equals the C++ one, on every sample and on the tokenizer's corner cases.
    texts = [c for s in jsonl(os.path.join(out, "samples.jsonl")) for c in s["completions"]]
    texts += ["", "Happy HAPPY happy!", "Don't cry, it's a happy-go-lucky day.", "sad\nand\tlonely, yet kind",
              "'tis the kids' joy", "naïve smile"]
    lexicon = example.load_lexicon()
    tool = os.path.join(BUILD, "tests", "rlhf_lexicon_tool")
    cpp = subprocess.run([tool], input="".join(json.dumps(t) + "\n" for t in texts), capture_output=True, text=True,
                         check=True).stdout.split()
    assert len(cpp) == len(texts)
    for t, c in zip(texts, cpp):
        assert math.isclose(example.gold_score(lexicon, t), float(c), rel_tol=1e-12, abs_tol=1e-15), (t, c)
    assert any(float(c) != 0 for c in cpp), "no text scored: the lexicon was not read"
    for p in train + held:
        assert p["gold_chosen"] > p["gold_rejected"], p
        assert example.gold_score(lexicon, p["chosen"]) == p["gold_chosen"]

    # Each SFT question answers the gold-better option: both orders of every train pair.
    templates, principles = example.load_constitution()
    by_question = {s["question"]: s for s in sft}
    assert len(sft) == 2 * len(train) == len(by_question)
    for p in train:
        for order, letter in ((0, "A"), (1, "B")):
            a, b = (p["chosen"], p["rejected"]) if order == 0 else (p["rejected"], p["chosen"])
            hits = [by_question[q] for q in (example.question(templates, p["prompt"], pr, a, b) for pr in principles)
                    if q in by_question]
            assert len(hits) == 1 and hits[0]["answer"] == letter, (p, hits)

    # The questions FeedbackModel sends (through `rlhf rlaif agreement` to a fake endpoint) are
    # the SFT questions, up to the principle each draws.
    server = FakeEndpoint()
    try:
        a = subprocess.run([RLHF, "rlaif", "agreement", "--pairs", os.path.join(out, "train_pairs.jsonl"),
                            "--constitution", example.CONSTITUTION, "--limit", "0", "--feedback-model",
                            f"http://127.0.0.1:{server.server_address[1]}/v1"], capture_output=True, text=True)
        assert a.returncode == 0, a.stdout + a.stderr
    finally:
        server.shutdown()

    def unprincipled(q):
        found = [pr for pr in principles if "\n" + pr + "\n" in q]
        assert len(found) == 1, q
        return q.replace("\n" + found[0] + "\n", "\n<principle>\n")

    assert sorted(map(unprincipled, server.prompts)) == sorted(unprincipled(s["question"]) for s in sft)

    # `rlhf sft` encodes prompt and completion apart; together they give the ids of question +
    # letter, so training teaches the very token FeedbackModel reads.
    prompt_ids = tokenize([s["prompt"] for s in sft], add_bos=True)
    completion_ids = tokenize([s["completion"] for s in sft], add_bos=False)
    asked_ids = tokenize([s["question"] + s["answer"] for s in sft], add_bos=True)
    model_ids = subprocess.run([RLHF, "tokenize", "--model", MODEL], input=sft[0]["question"] + sft[0]["answer"],
                               capture_output=True, text=True, check=True).stdout
    assert json.loads(model_ids) == asked_ids[0], "tok512.bin is not the GGUF's tokenizer"
    for s, p, c, q in zip(sft, prompt_ids, completion_ids, asked_ids):
        assert p + c == q, (s, p[-4:], c, q[-4:])
        assert len(q) < 512, "a question does not fit stories260K's context"
    print(f"ok: {len(train)} train / {len(held)} held-out pairs, {len(server.prompts)} questions compared")


if __name__ == "__main__":
    main()
