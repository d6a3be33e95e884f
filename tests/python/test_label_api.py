"""The labeling server's JSON API over loopback: sign-in (shared and per-labeler tokens),
tasks (completions generated in the background by a real model, or given), submissions and
their validation errors (wrong token, not a permutation, unknown prompt, not shown, duplicate),
agreement statistics, and `rlhf label export` of rankings and pairs. Bad command lines fail
with a clear message. Then what one client can do to the server (hardening()): slow and huge
requests, many ranges, chunked bodies over the limit, sign-ins that expire, outlive their
token or are guessed."""
import http.client, itertools, json, os, socket, sqlite3, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(__file__))
from label_util import DATA, RLHF, Client, Server, ranking_best_first, rss_kb, send_raw  # noqa: E402

TOKEN = "shared-token-1"
MODEL = os.path.join(DATA, "stories260K", "stories260K.gguf")


def kendall_tau_b(a, b):
    """Independent reference: a, b map item -> tier index (smaller is better)."""
    conc = disc = ua = ub = 0
    for i, j in itertools.combinations(sorted(a), 2):
        da, db = a[i] - a[j], b[i] - b[j]
        ua += da != 0
        ub += db != 0
        conc += da * db > 0
        disc += da * db < 0
    return (conc - disc) / (ua * ub) ** 0.5, conc, conc + disc


def tiers_to_rank(tiers):
    return {cid: t for t, tier in enumerate(tiers) for cid in (tier if isinstance(tier, list) else [tier])}


def expect(status_body, status, fragment=""):
    st, body = status_body
    assert st == status, (st, body, status)
    if fragment:
        assert fragment in body["error"], (body, fragment)
    return body


def main():
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "labels.sqlite")
        prompts = os.path.join(tmp, "prompts.jsonl")
        with open(prompts, "w") as f:
            f.write(json.dumps({"prompt": "Name a colour.", "completions": ["Red.", "Blue!", "Green, like grass.", "Seven."]}) + "\n")
            f.write(json.dumps({"prompt": "Once upon a time"}) + "\n")  # completions come from the model
            f.write(json.dumps({"prompt": "Lily and Tom"}) + "\n")

        # Bad command lines: a malformed prompts file, a missing model, a port in use.
        bad = os.path.join(tmp, "bad.jsonl")
        with open(bad, "w") as f:
            f.write('{"prompt": "ok"}\n{"prompt": 3}\n')
        r = subprocess.run([RLHF, "label", "serve", "--db", os.path.join(tmp, "x.sqlite"), "--prompts", bad, "--port", "0"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "bad.jsonl:2" in r.stderr, r.stderr
        r = subprocess.run([RLHF, "label", "serve", "--db", os.path.join(tmp, "y.sqlite"), "--prompts", prompts, "--port", "0",
                            "--token", TOKEN], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "--model" in r.stderr, r.stderr
        r = subprocess.run([RLHF, "label", "export", "--db", os.path.join(tmp, "none.sqlite"), "--out", os.path.join(tmp, "o.jsonl")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "none.sqlite" in r.stderr and not os.path.exists(os.path.join(tmp, "o.jsonl")), r.stderr

        server = Server(["--db", db, "--prompts", prompts, "--model", MODEL, "--k", "4", "--max-new-tokens", "24",
                         "--labelers-per-prompt", "2", "--token", TOKEN, "--labeler", "carol=carols-token"])
        try:
            # The port is taken now: a second server must say so.
            r = subprocess.run([RLHF, "label", "serve", "--db", os.path.join(tmp, "z.sqlite"), "--prompts", prompts,
                                "--port", str(server.port), "--token", TOKEN, "--model", MODEL],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode != 0 and "cannot listen" in r.stderr, r.stderr

            ann, bob, carol, anon = Client(server.port), Client(server.port), Client(server.port), Client(server.port)
            # --- sign-in
            expect(anon.call("POST", "/api/signin", {"name": "ann", "token": "wrong"}), 401, "wrong name or access token")
            expect(anon.call("POST", "/api/signin", {"name": "carol", "token": TOKEN}), 401)  # carol has her own token
            expect(anon.call("POST", "/api/signin", {"name": "ann"}), 400, "token")
            expect(anon.call("POST", "/api/signin", b"{not json"), 400, "JSON")
            expect(anon.call("GET", "/api/task"), 401)
            expect(anon.call("GET", "/api/task", session="made-up-session"), 401)
            ann.sign_in("ann", TOKEN)
            bob.sign_in("bob", TOKEN)
            carol.sign_in("carol", "carols-token")

            # --- the page and its headers
            conn = anon
            conn.call("GET", "/api/progress")  # opens the connection
            conn.conn.request("GET", "/")
            res = conn.conn.getresponse()
            page = res.read().decode()
            assert res.status == 200 and "<ol id=\"ranking\">" in page
            csp = res.getheader("Content-Security-Policy")
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp, csp

            # --- completions are generated in the background
            deadline = time.time() + 120
            while True:
                st, prog = ann.call("GET", "/api/progress")
                assert st == 200
                if prog["ready"] == 3:
                    break
                assert time.time() < deadline, prog
                time.sleep(0.5)
            con = sqlite3.connect(db)
            rows = con.execute("SELECT prompt_id, COUNT(*), MIN(length(text)) FROM completions GROUP BY prompt_id").fetchall()
            assert [r[1] for r in rows] == [4, 4, 4], rows
            assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

            # --- a task, and every way a submission can be wrong
            st, body = ann.call("GET", "/api/task")
            task = body["task"]
            assert st == 200 and task["prompt"] == "Name a colour." and len(task["completions"]) == 4
            assert sorted(c["text"] for c in task["completions"]) == sorted(["Red.", "Blue!", "Green, like grass.", "Seven."])
            assert body["flags"] == ["unhelpful", "toxic", "aggressive", "dangerous", "made_up_facts", "overconfident"]
            ids = [c["id"] for c in task["completions"]]
            pid = task["prompt_id"]
            sub = lambda ranking, **kw: ann.call("POST", "/api/submit", {"prompt_id": pid, "ranking": ranking, **kw})
            expect(sub(ids[:3]), 400, "ranks 3 of the 4")
            expect(sub(ids[:3] + [ids[0]]), 400, "appears twice")
            expect(sub(ids[:3] + [ids[3] + 1000]), 400, "is not one of")
            expect(sub("first is best"), 400, "ranking")
            expect(sub([ids]), 400, "everything tied")
            expect(sub(ids, flags={str(ids[0]): ["rude"]}), 400, "unknown flag")
            expect(ann.call("POST", "/api/submit", {"prompt_id": 999, "ranking": ids}), 404, "unknown prompt")
            other = pid + 1  # exists, never shown to ann
            expect(ann.call("POST", "/api/submit", {"prompt_id": other, "ranking": ids}), 409, "not shown")
            expect(anon.call("POST", "/api/submit", {"prompt_id": pid, "ranking": ids}), 401)
            assert con.execute("SELECT COUNT(*) FROM submissions").fetchone()[0] == 0

            good = [[ids[1]], [ids[0], ids[3]], ids[2]]  # a tie in the middle
            flags = {str(ids[2]): ["made_up_facts", "overconfident"], str(ids[0]): ["unhelpful"]}
            body = expect(sub(good, flags=flags, note="the last one is <b>wrong</b>"), 200)
            assert body["status"] == "stored" and body["progress"]["mine"] == 1
            body = expect(sub(good, flags=flags, note="the last one is <b>wrong</b>"), 200)
            assert body["status"] == "duplicate"
            expect(sub(list(reversed(ids))), 409, "different ranking")
            assert con.execute("SELECT COUNT(*) FROM submissions").fetchone()[0] == 1

            # --- everyone ranks everything they are given; each prompt goes to two labelers
            submitted = {("ann", pid): good}
            for name, c in (("ann", ann), ("bob", bob), ("carol", carol)):
                while True:
                    st, body = c.call("GET", "/api/task")
                    assert st == 200
                    if body["task"] is None:
                        break
                    t = body["task"]
                    ranking = ranking_best_first(t)
                    if name == "bob":
                        ranking = ranking[1:2] + ranking[:1] + ranking[2:]  # bob disagrees on the top pair
                    assert c.call("POST", "/api/submit", {"prompt_id": t["prompt_id"], "ranking": ranking})[1]["status"] == "stored"
                    submitted[(name, t["prompt_id"])] = ranking
            per_prompt = con.execute("SELECT prompt_id, COUNT(*), COUNT(DISTINCT labeler) FROM submissions GROUP BY prompt_id").fetchall()
            assert all(n == 2 and d == 2 for _, n, d in per_prompt) and len(per_prompt) == 3, per_prompt
            assert len(submitted) == 6

            # --- stats: per-labeler counts and agreement, against an independent computation
            st, stats = ann.call("GET", "/api/stats")
            assert st == 200
            assert sum(stats["counts"].values()) == 6
            by_prompt = {}
            for (name, p), ranking in submitted.items():
                by_prompt.setdefault(p, {})[name] = tiers_to_rank(ranking)
            conc = comparable = 0
            taus = []
            for rankings in by_prompt.values():
                (_, ra), (_, rb) = sorted(rankings.items())
                tau, c_, n_ = kendall_tau_b(ra, rb)
                taus.append(tau)
                conc += c_
                comparable += n_
            assert abs(stats["agreement"] - conc / comparable) < 1e-9, (stats, conc, comparable)
            assert abs(stats["kendall_tau"] - sum(taus) / len(taus)) < 1e-9, (stats, taus)
            assert stats["shared_prompts"] == 3 and stats["agreement"] < 1
            expect(anon.call("GET", "/api/stats"), 401)
        finally:
            server.kill()

        # --- export: rankings as the trainers read them, and pairs
        out = os.path.join(tmp, "rankings.jsonl")
        subprocess.run([RLHF, "label", "export", "--db", db, "--out", out], check=True, capture_output=True)
        rows = [json.loads(l) for l in open(out)]
        assert len(rows) == 6
        texts = {cid: (p, idx, text) for cid, p, idx, text in con.execute("SELECT id, prompt_id, idx, text FROM completions")}
        for row in rows:
            ranking = submitted[(row["labeler"], row["prompt_id"])]
            want = [sorted(texts[c][1] for c in (t if isinstance(t, list) else [t])) for t in ranking]
            got = [t if isinstance(t, list) else [t] for t in row["ranking"]]
            assert got == want, (got, want)
            assert row["completions"] == [texts[c][2] for c in sorted(c for c in texts if texts[c][0] == row["prompt_id"])]
            assert len(row["flags"]) == 4
        first = next(r for r in rows if r["labeler"] == "ann" and r["prompt"] == "Name a colour.")
        assert first["note"] == "the last one is <b>wrong</b>"
        flagged = {first["completions"][i]: f for i, f in enumerate(first["flags"]) if f}
        assert flagged == {texts[ids[2]][2]: ["made_up_facts", "overconfident"], texts[ids[0]][2]: ["unhelpful"]}, flagged
        # The reward trainer reads this file directly (rankings -> pairs inside).
        pairs_out = os.path.join(tmp, "pairs.jsonl")
        subprocess.run([RLHF, "label", "export", "--db", db, "--out", pairs_out, "--pairs"], check=True, capture_output=True)
        pairs = [json.loads(l) for l in open(pairs_out)]
        assert len(pairs) == 5 + 5 * 6, len(pairs)  # ann's first has one tie; the other five rank four strictly
        assert all(p["chosen"] != p["rejected"] and "chosen_flags" in p for p in pairs)
        print("label API: sign-in, tasks, validation, idempotence, stats and export ok")


def serve_given(tmp, name, *extra):
    """A server over prompts that come with their completions (no model)."""
    prompts = os.path.join(tmp, f"{name}.jsonl")
    with open(prompts, "w") as f:
        for i in range(3):
            f.write(json.dumps({"prompt": f"prompt {i}", "completions": [f"a{i}", f"b{i}", f"c{i}"]}) + "\n")
    return Server(["--db", os.path.join(tmp, f"{name}.sqlite"), "--prompts", prompts, *extra]), os.path.join(tmp, f"{name}.sqlite")


def slow_clients_do_not_stop_the_server(port):
    """300 connections trickling a request head a byte a second (more than the old 64 workers, and
    than the 256 the server keeps waiting): another client is still answered at once."""
    lorises = []
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /api/progress HTTP/1.1\r\nHost: x\r\n")
        lorises.append(s)
    stop = threading.Event()

    def trickle():
        while not stop.wait(1.0):
            for s in lorises:
                try:
                    s.send(b"X")
                except OSError:
                    pass

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        time.sleep(2.5)  # every slow connection has been accepted and is trickling
        c = Client(port)
        c.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # the old server never answered
        st, body = c.call("GET", "/api/progress")
        assert st == 401 and "not signed in" in body["error"], (st, body)  # answered (by the handler)
    finally:
        stop.set()
        t.join()
        for s in lorises:
            s.close()


def many_ranges_get_the_content_once(port):
    """2000 ranges in a 6 KB request gave 18.4 MB; ranges are not served now."""
    page = Client(port)
    page.call("GET", "/api/progress")
    page.conn.request("GET", "/")
    res = page.conn.getresponse()
    html = res.read()
    assert res.status == 200

    page.conn.request("GET", "/", headers={"Range": "bytes=" + ",".join(["0-"] * 2000)})
    res = page.conn.getresponse()
    body = res.read()
    assert res.status == 200 and body == html, (res.status, len(body), len(html))


def huge_heads_are_refused(port, pid):
    """64 MB of headers: refused after 16 KB, without the server holding them (they took 222 MB)."""
    rss = rss_kb(pid)
    line = b"X-Pad: " + b"a" * 1000 + b"\r\n"
    sent, status, body = send_raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n", [line * 1024] * 64)
    assert sent < 24 << 20 and status in (None, 431), (sent, status, body)
    assert rss_kb(pid) - rss < 50 << 10, (rss, rss_kb(pid))


def chunked_bodies_are_cut_at_the_limit(port):
    """At 1 MB (413), however long the client goes on (30 MB were read)."""
    head = (b"POST /api/signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
    sent, status, body = send_raw(port, head, [chunk] * 24)  # 1.5 MB, then the client stops
    assert status == 413 and b"larger than 1048576 bytes" in body, (sent, status, body)
    sent, status, body = send_raw(port, head, [chunk] * 480)  # 30 MB
    assert sent < 24 << 20 and status in (None, 413), (sent, status, body)
    sent, status, body = send_raw(port, b"POST /api/signin HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n")
    assert status == 413, (sent, status, body)


def sign_ins_expire_and_end_with_their_token(tmp):
    server, db = serve_given(tmp, "sessions", "--token", TOKEN)
    try:
        # expire after 12 h (the default)
        ann = Client(server.port)
        ann.sign_in("ann", TOKEN)
        expect(ann.call("GET", "/api/progress"), 200)
        con = sqlite3.connect(db)
        con.execute("UPDATE sessions SET created = created - 13 * 3600")
        con.commit()
        con.close()
        expect(ann.call("GET", "/api/progress"), 401, "expired")
        ann.sign_in("ann", TOKEN)
        bob = Client(server.port)
        bob.sign_in("bob", TOKEN)
    finally:
        server.kill()

    # a changed token, a removed labeler: their sign-ins end with the restart
    server, _ = serve_given(tmp, "sessions", "--token", "another-token", "--labeler", "carol=carols-token")
    try:
        for c in (ann, bob):
            c.port, c.conn = server.port, None
            expect(c.call("GET", "/api/progress"), 401, "token has changed")
        ann.sign_in("ann", "another-token")
        carol = Client(server.port)
        carol.sign_in("carol", "carols-token")
        expect(carol.call("GET", "/api/progress"), 200)
    finally:
        server.kill()
    server, _ = serve_given(tmp, "sessions", "--labeler", "dave=daves-token")
    try:
        carol.port, carol.conn = server.port, None
        expect(carol.call("GET", "/api/progress"), 401, "token has changed")
        ann.port, ann.conn = server.port, None
        expect(ann.call("GET", "/api/progress"), 200)  # the shared token was kept
    finally:
        server.kill()


def failed_sign_ins_are_limited(port):
    """Per address: 429 with Retry-After, even for the right token, until the wait is over."""
    anon = Client(port)
    statuses = []
    while 429 not in statuses and len(statuses) < 12:
        statuses.append(anon.call("POST", "/api/signin", {"name": "eve", "token": f"guess-{len(statuses)}"})[0])
    assert statuses[:5] == [401] * 5 and statuses[-1] == 429, statuses
    anon.conn.request("POST", "/api/signin", body=json.dumps({"name": "ann", "token": TOKEN}),
                      headers={"Content-Type": "application/json"})
    res = anon.conn.getresponse()
    body = json.loads(res.read())
    assert res.status == 429 and "too many failed sign-ins" in body["error"], (res.status, body)
    wait = int(res.getheader("Retry-After"))
    assert 1 <= wait <= 5, wait
    time.sleep(wait + 0.5)
    anon.sign_in("ann", TOKEN)


def ports_outside_0_to_65535_are_refused(tmp):
    """Not wrapped: --port 99999 listened on 34463."""
    prompts = os.path.join(tmp, "ports.jsonl")
    with open(prompts, "w") as f:
        f.write(json.dumps({"prompt": "p", "completions": ["a", "b"]}) + "\n")
    try:
        r = subprocess.run([RLHF, "label", "serve", "--db", os.path.join(tmp, "ports.sqlite"), "--prompts", prompts,
                            "--token", TOKEN, "--port", "99999"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"--port 99999 served: {e.stdout}")
    assert r.returncode != 0 and "99999" in r.stderr and "65535" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def hardening():
    with tempfile.TemporaryDirectory() as tmp:
        server, _ = serve_given(tmp, "hard", "--token", TOKEN)
        try:
            many_ranges_get_the_content_once(server.port)
            huge_heads_are_refused(server.port, server.proc.pid)
            chunked_bodies_are_cut_at_the_limit(server.port)
            slow_clients_do_not_stop_the_server(server.port)
            failed_sign_ins_are_limited(server.port)
        finally:
            server.kill()
        sign_ins_expire_and_end_with_their_token(tmp)
        ports_outside_0_to_65535_are_refused(tmp)
        print("label API hardening: ranges, huge heads, chunked bodies, slow clients, rate limit, sessions, ports ok")


if __name__ == "__main__":
    main()
    hardening()
