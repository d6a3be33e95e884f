"""Load and crash safety of the labeling server over loopback.
1. 20 concurrent labelers x 100 submissions (each prompt wanted from two labelers, every 10th
   submission sent twice): nothing lost, nothing duplicated, no prompt over-assigned.
2. The same load with the server killed by SIGKILL in the middle: every submission it had
   acknowledged is in the database (intact), and a restarted server carries on to the end."""
import json, os, signal, sqlite3, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(__file__))
from label_util import Client, Server, ranking_best_first  # noqa: E402

LABELERS, EACH, PER_PROMPT, K = 20, 100, 2, 4
TOKEN = "load-token"


def write_prompts(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"prompt {i}", "completions": [f"p{i} text {j}" for j in range(K)]}) + "\n")


def labeler(port, name, acked, errors, limit, crash_ok=False, session=None):
    """Gets tasks and submits until `limit` are done (None: until nothing is left) or the server is gone.
    Records (name, prompt_id) -> ranking for every submission the server acknowledged."""
    c = Client(port)
    try:
        if session:
            c.session = session
        else:
            c.sign_in(name, TOKEN)
        done = 0
        while limit is None or done < limit:
            st, body = c.call("GET", "/api/task")
            assert st == 200, (st, body)
            t = body["task"]
            if t is None:
                return c.session
            ranking = ranking_best_first(t)
            sub = {"prompt_id": t["prompt_id"], "ranking": ranking, "flags": {str(ranking[-1]): ["unhelpful"]}}
            st, body = c.call("POST", "/api/submit", sub)
            assert st == 200 and body["status"] == "stored", (st, body)
            acked[(name, t["prompt_id"])] = ranking
            done += 1
            if done % 10 == 0:  # a retry of the same submission (a lost response, a double click)
                st, body = c.call("POST", "/api/submit", sub)
                assert st == 200 and body["status"] == "duplicate", (st, body)
        return c.session
    except (ConnectionError, OSError) as e:
        if not crash_ok:
            errors.append(f"{name}: {e!r}")
    except AssertionError as e:
        errors.append(f"{name}: {e}")


def run_labelers(port, acked, errors, limit, crash_ok=False):
    results = {}

    def work(name):
        results[name] = labeler(port, name, acked, errors, limit, crash_ok)

    threads = [threading.Thread(target=work, args=(f"labeler{i:02d}",)) for i in range(LABELERS)]
    for t in threads:
        t.start()
    return threads, results


def check_db(db, acked):
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = con.execute("SELECT labeler, prompt_id, ranking FROM submissions").fetchall()
    stored = {(l, p): [t[0] for t in json.loads(r)] for l, p, r in rows}
    assert len(stored) == len(rows), "duplicate (labeler, prompt) rows"
    missing = [k for k in acked if k not in stored]
    assert not missing, f"{len(missing)} acknowledged submissions lost, e.g. {missing[:3]}"
    wrong = [k for k in acked if stored[k] != acked[k]]
    assert not wrong, f"stored rankings differ from the acknowledged ones: {wrong[:3]}"
    over = con.execute("SELECT prompt_id, COUNT(*) FROM submissions GROUP BY prompt_id HAVING COUNT(*) > ?",
                       (PER_PROMPT,)).fetchall()
    assert not over, f"prompts ranked more than {PER_PROMPT} times: {over[:3]}"
    con.close()
    return stored


def main():
    # More prompt slots than the 2000 submissions, so no labeler runs out of prompts it has not seen.
    n_prompts = LABELERS * EACH // PER_PROMPT + 100
    with tempfile.TemporaryDirectory() as tmp:
        prompts = os.path.join(tmp, "prompts.jsonl")
        write_prompts(prompts, n_prompts)
        args = ["--prompts", prompts, "--k", str(K), "--labelers-per-prompt", str(PER_PROMPT), "--token", TOKEN]

        # 1. Load: every submission lands exactly once.
        db = os.path.join(tmp, "load.sqlite")
        server = Server(["--db", db, *args])
        acked, errors = {}, []
        t0 = time.time()
        threads, _ = run_labelers(server.port, acked, errors, EACH)
        for t in threads:
            t.join(600)
        elapsed = time.time() - t0
        server.kill()
        assert not errors, errors[:5]
        assert len(acked) == LABELERS * EACH, len(acked)
        stored = check_db(db, acked)
        assert len(stored) == LABELERS * EACH
        print(f"load: {len(acked)} submissions from {LABELERS} concurrent labelers in {elapsed:.1f} s, none lost or doubled")

        # 2. Crash: SIGKILL once about a quarter of the work is acknowledged.
        db = os.path.join(tmp, "crash.sqlite")
        server = Server(["--db", db, *args])
        acked, errors = {}, []
        threads, _ = run_labelers(server.port, acked, errors, EACH, crash_ok=True)
        while len(acked) < LABELERS * EACH // 4 and any(t.is_alive() for t in threads):
            time.sleep(0.01)
        server.kill(signal.SIGKILL)
        for t in threads:
            t.join(120)
        assert not errors, errors[:5]
        at_kill = len(acked)
        assert 0 < at_kill < LABELERS * EACH, at_kill
        check_db(db, acked)
        print(f"crash: killed after {at_kill} acknowledged submissions; all of them are in the database")

        # A restarted server carries on: sign in again, rank every prompt to the end, nothing doubled.
        server = Server(["--db", db, *args])
        errors = []
        threads, _ = run_labelers(server.port, acked, errors, None)
        for t in threads:
            t.join(600)
        server.kill()
        assert not errors, errors[:5]
        stored = check_db(db, acked)
        assert len(stored) == n_prompts * PER_PROMPT, len(stored)
        print(f"restart: {len(stored)} rankings in the end, every prompt ranked by exactly {PER_PROMPT} labelers")


if __name__ == "__main__":
    main()
