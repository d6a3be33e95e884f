"""The pipeline with labeler = "web": it serves the labeling page, waits until the configured
number of rankings exists (two labelers rank over the API while it waits), exports them and
goes on through the reward model, PPO and the evaluation. Rerunning skips the labeling."""
import json, os, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
from label_util import DATA, RLHF, Client, PipelineRun, ranking_best_first  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "pipeline-token"


def main():
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        cfg = os.path.join(tmp, "web.toml")
        with open(cfg, "w") as f:
            f.write(f'''policy = "{os.path.join(DATA, 'stories260K', 'stories260K.gguf')}"
prompts = "{os.path.join(ROOT, 'examples', 'happy_stories_prompts.jsonl')}"
run_dir = "{run}"
labeler = "web"
web_port = 0
web_token = "{TOKEN}"
labelers_per_prompt = 2
label_prompts = 6
k = 3
eval_prompts = 4
eval_samples = 1

[rm]
epochs = 1
eval_fraction = 0.15

[ppo]
max_new_tokens = 16
max_steps = 2
rollout_batch = 4
minibatches = 2
ppo_epochs = 1
''')
        run_ = PipelineRun(cfg)
        port = run_.wait_for_page(120)
        out = run_.out
        assert any("waiting for 12 rankings" in l for l in out), out

        ranked = {}
        for name in ("ann", "bob"):
            c = Client(port)
            c.sign_in(name, TOKEN)
            deadline = time.time() + 120
            while True:
                st, body = c.call("GET", "/api/task")
                assert st == 200, body
                t = body["task"]
                if t is None:
                    if body["generating"] == 0:
                        break
                    assert time.time() < deadline, "completions never arrived"
                    time.sleep(0.3)
                    continue
                assert len(t["completions"]) == 3
                ranking = ranking_best_first(t)
                st, body = c.call("POST", "/api/submit", {"prompt_id": t["prompt_id"], "ranking": ranking})
                assert st == 200 and body["status"] == "stored", body
                ranked[(name, t["prompt"])] = [next(x["text"] for x in t["completions"] if x["id"] == i) for i in ranking]
        assert len(ranked) == 12, len(ranked)

        rc, stdout, err = run_.finish()
        assert rc == 0, (rc, stdout, err)
        rows = [json.loads(l) for l in open(os.path.join(run, "rankings.jsonl"))]
        assert len(rows) == 12
        for r in rows:
            order = [r["completions"][i] for i in r["ranking"]]
            assert order == ranked[(r["labeler"], r["prompt"])], (order, r)
        summary = json.load(open(os.path.join(run, "summary.json")))
        assert "gold_after" in summary and os.path.exists(os.path.join(run, "ppo", "model", "config.json"))

        # A rerun finds the rankings and skips the labeling (no page served, nothing to wait for).
        r = subprocess.run([RLHF, "pipeline", cfg], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        assert "[skip] sample + label" in r.stderr and "serving http://" not in r.stdout, (r.stdout, r.stderr)
        print("pipeline with labeler = web: served, waited for 12 rankings, trained on them")


if __name__ == "__main__":
    main()
