"""The labeling page in a real browser (headless Chromium driven by Selenium): sign in (a wrong
token first), rank one prompt by drag and drop with a tie, flags and a note, one by the keys
1..K and Enter, and one whose texts hold HTML/script (shown as text, never run); then the done
view, /stats, and `rlhf label export` (rankings and pairs) against what was ranked. The
database is checked after every submission."""
import json, os, shutil, sqlite3, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
from browser_util import fail, start_chromium  # noqa: E402
from label_util import RLHF, Server  # noqa: E402

TOKEN = "s3cret-shared-token"
NAME = "alice"
K = 4

PROMPTS = [
    {"prompt": "Name a fruit.",
     "completions": ["An apple.", "A banana, yellow and sweet.", "Cherry.", "A dog is not a fruit."]},
    {"prompt": "Say something <b>bold</b>.",
     "completions": ["I am <b>bold</b>.", "Bold text: **bold**.", "Nothing bold here.", "BOLD!"]},
    {"prompt": "Greet me <script>window.__xss=1</script> please.",
     "completions": ["Hello <script>window.__xss=1</script> there.",
                     'Hi <img src=x onerror="window.__xss=2"> friend.',
                     "Good day & welcome <i>&amp;</i>.",
                     "Hey."]},
]


try:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as e:
    fail(f"selenium is not installed in this Python ({sys.executable}): {e}; run scripts/setup.sh")


def start_server(tmp, db):
    prompts = os.path.join(tmp, "prompts.jsonl")
    with open(prompts, "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in PROMPTS)
    # The test must pass against the page compiled into the binary: no RLHF_WEB_DIR unless the
    # caller set it (to try page edits without a rebuild).
    server = Server(["--db", db, "--prompts", prompts, "--k", str(K), "--token", TOKEN], timeout=20)
    return server, f"http://127.0.0.1:{server.port}/"


def submissions(db):
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT prompt_id, labeler, ranking, flags, note FROM submissions ORDER BY id").fetchall()
    finally:
        con.close()


def prompt_ids(db):
    con = sqlite3.connect(db)
    try:
        return {text: pid for pid, text in con.execute("SELECT id, text FROM prompts")}
    finally:
        con.close()


def completion_index(db):
    """completion id -> (prompt text, its index in the prompt's completions)"""
    con = sqlite3.connect(db)
    try:
        return {cid: (text, idx) for cid, text, idx in
                con.execute("SELECT c.id, p.text, c.idx FROM completions c JOIN prompts p ON p.id = c.prompt_id")}
    finally:
        con.close()


class Page:
    def __init__(self, driver):
        self.d = driver

    def wait(self, cond, what, timeout=10):
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.05).until(lambda d: cond())
        except Exception as e:
            fail(f"timed out waiting for {what}: {type(e).__name__} {e}")

    def q(self, sel):
        return self.d.find_element(By.CSS_SELECTOR, sel)

    def qa(self, sel):
        return self.d.find_elements(By.CSS_SELECTOR, sel)

    def visible(self, sel):
        return self.q(sel).is_displayed()

    def cards(self):
        return self.qa("#ranking > li.card")

    def order(self):
        """data-id of the cards, top to bottom (DOM order)"""
        return [int(c.get_attribute("data-id")) for c in self.cards()]

    def keys(self):
        return [c.find_element(By.CSS_SELECTOR, ".key").text for c in self.cards()]

    def card(self, cid):
        return self.q(f'#ranking > li.card[data-id="{cid}"]')

    def prompt(self):
        return self.d.execute_script("return document.querySelector('#prompt').textContent")

    def wait_task(self, prompt_text):
        self.wait(lambda: self.visible("#task-view") and self.prompt() == prompt_text and len(self.cards()) == K,
                  f"the task of prompt {prompt_text!r}")

    def drag(self, cid, onto_cid, where):
        """Drags card `cid` by its handle onto card `onto_cid`, a quarter of its height from its
        top ("upper") or bottom ("lower"), and releases it there."""
        handle = self.card(cid).find_element(By.CSS_SELECTOR, ".handle")
        target = self.card(onto_cid)
        dy = target.size["height"] // 4 * (-1 if where == "upper" else 1)
        (ActionChains(self.d).click_and_hold(handle).pause(0.05).move_by_offset(0, 5).pause(0.05)
         .move_to_element_with_offset(target, 0, dy).pause(0.05).release().perform())


def no_alert(driver, when):
    try:
        text = driver.switch_to.alert.text
    except NoAlertPresentException:
        return
    fail(f"an alert is open {when}: {text!r}")


def main():
    if not os.path.isfile(RLHF):
        fail(f"{RLHF} is missing: build the rlhf CLI first")
    tmp = tempfile.mkdtemp(prefix="rlhf_label_browser_")
    db = os.path.join(tmp, "labels.db")
    server = driver = None
    try:
        server, url = start_server(tmp, db)
        driver = start_chromium()
        page = Page(driver)
        pids = prompt_ids(db)
        expected = {}   # prompt text -> (tiers of completion ids, {id: [flags]}, note)

        # ---- sign in: a wrong token is refused with a message, the right one is let in ----
        driver.get(url)
        page.wait(lambda: page.visible("#signin-view"), "the sign-in view")
        page.q("#name").send_keys(NAME)
        page.q("#token").send_keys("not-the-token")
        page.q("#signin-button").click()
        page.wait(lambda: page.q("#signin-error").text.strip() != "", "the sign-in error message")
        assert page.visible("#signin-view") and not page.visible("#task-view")
        page.q("#token").clear()
        page.q("#token").send_keys(TOKEN)
        page.q("#signin-button").click()
        page.wait_task(PROMPTS[0]["prompt"])
        assert page.q("#signin-error").text.strip() == "", page.q("#signin-error").text
        assert NAME in page.q("#who").text, page.q("#who").text

        # ---- prompt 1: drag and drop, a tie, flags, a note, the Submit button ---------------
        before = page.order()
        assert len(set(before)) == K, before
        a, b, c, d = before
        page.drag(d, a, "upper")                 # the last card to the top
        want = [d, a, b, c]
        page.wait(lambda: page.order() == want, f"order {want} after dragging {d} to the top (is {page.order()})", 3)
        page.drag(a, b, "lower")                 # the second card one place down
        want = [d, b, a, c]
        page.wait(lambda: page.order() == want, f"order {want} after dragging {a} down (is {page.order()})", 3)
        assert [x.text for x in page.qa("#ranking .rank")] == ["#1", "#2", "#3", "#4"]
        assert not page.qa("#ranking .dragging"), "a card is still marked as dragged"
        page.card(a).find_element(By.CSS_SELECTOR, ".tie-box").click()          # a ties with b
        page.wait(lambda: "tied" in page.card(a).get_attribute("class"), "the tied card's style")
        ranks = [x.text for x in page.qa("#ranking .rank")]
        assert ranks[:2] == ["#1", "#2"] and ranks[2].startswith("#2") and ranks[3] == "#3", ranks   # shares #2
        page.card(c).find_element(By.CSS_SELECTOR, '.flags input[value="made_up_facts"]').click()
        page.card(c).find_element(By.CSS_SELECTOR, '.flags input[value="overconfident"]').click()
        page.card(d).find_element(By.CSS_SELECTOR, '.flags input[value="unhelpful"]').click()
        note = "b and a are equally good; c makes things up"
        page.q("#note").send_keys(note)
        driver.save_screenshot("/tmp/label_page.png")
        page.q("#submit").click()
        page.wait_task(PROMPTS[1]["prompt"])
        rows = submissions(db)
        assert len(rows) == 1, rows
        pid, who, ranking, flags, got_note = rows[0]
        assert pid == pids[PROMPTS[0]["prompt"]] and who == NAME, rows[0]
        assert json.loads(ranking) == [[d], sorted([a, b]), [c]], (ranking, want)
        assert json.loads(flags) == {str(c): ["made_up_facts", "overconfident"], str(d): ["unhelpful"]}, flags
        assert got_note == note, got_note
        expected[PROMPTS[0]["prompt"]] = ([[d], [b, a], [c]], {c: ["made_up_facts", "overconfident"], d: ["unhelpful"]}, note)

        # ---- prompt 2: the keys 3, 1, 4, 2 and Enter ------------------------------------------
        assert page.q("#note").get_attribute("value") == "", "the note was not cleared for the next prompt"
        assert not page.qa("#ranking input:checked"), "ticks carried over to the next prompt"
        shown = page.order()
        assert page.keys() == ["1", "2", "3", "4"], page.keys()
        body = page.q("body")
        body.send_keys("2")
        page.wait(lambda: page.keys()[0] == "2", "card 2 on top after the key 2")
        body.send_keys(Keys.ESCAPE)     # the key order starts over
        page.wait(lambda: not page.qa("#ranking .picked"), "no card marked picked after Esc")
        for k in "3142":
            body.send_keys(k)
        want = [shown[2], shown[0], shown[3], shown[1]]
        page.wait(lambda: page.keys() == ["3", "1", "4", "2"], f"cards 3,1,4,2 after the keys (are {page.keys()})", 3)
        assert page.order() == want, (page.order(), want)
        assert [x.text for x in page.qa("#ranking .rank")] == ["#1", "#2", "#3", "#4"]
        body.send_keys(Keys.ENTER)
        page.wait_task(PROMPTS[2]["prompt"])
        rows = submissions(db)
        assert len(rows) == 2, rows
        assert rows[1][:2] == (pids[PROMPTS[1]["prompt"]], NAME), rows[1]
        assert json.loads(rows[1][2]) == [[x] for x in want], (rows[1], want)
        assert json.loads(rows[1][3]) == {} and rows[1][4] == "", rows[1]
        expected[PROMPTS[1]["prompt"]] = ([[x] for x in want], {}, "")

        # ---- prompt 3: HTML and script in the texts are shown as text and never run -------------
        no_alert(driver, "on the page with script in its texts")
        texts = driver.execute_script(
            "return Array.from(document.querySelectorAll('#ranking .completion')).map(e => e.textContent)")
        assert sorted(texts) == sorted(PROMPTS[2]["completions"]), texts
        assert any("<script>window.__xss=1</script>" in t for t in texts), texts
        assert any('<img src=x onerror="window.__xss=2">' in t for t in texts), texts
        assert page.prompt() == PROMPTS[2]["prompt"]
        for sel in ("#ranking img", "#ranking script", "#prompt *", "#ranking .completion *"):
            assert not page.qa(sel), f"model text became markup: {sel} matches {len(page.qa(sel))} elements"
        assert not page.qa("main img, main script, main b, main i"), "model text became markup in the page"
        assert driver.execute_script("return typeof window.__xss") == "undefined"
        time.sleep(1.0)   # an onerror handler or a late script would have run by now
        assert driver.execute_script("return window.__xss") is None, driver.execute_script("return window.__xss")
        no_alert(driver, "a second after the page with script in its texts was shown")
        shown = page.order()
        body = page.q("body")
        body.send_keys("2")             # one key, then the Submit button: 2 first, the rest as shown
        want = [shown[1], shown[0], shown[2], shown[3]]
        page.wait(lambda: page.order() == want, f"card 2 on top (order {page.order()})", 3)
        page.card(shown[3]).find_element(By.CSS_SELECTOR, ".tie-box").click()   # the last two tie
        page.wait(lambda: [x.text for x in page.qa("#ranking .rank")][:3] == ["#1", "#2", "#3"]
                  and page.qa("#ranking .rank")[3].text.startswith("#3"), "the last two cards sharing #3")
        page.q("#submit").click()

        # ---- done: the "nothing left" view, the progress line, /stats ---------------------------
        page.wait(lambda: page.visible("#done-view"), "the done view")
        title = page.q("#done-title").get_attribute("textContent")   # .text is the CSS-uppercased one
        assert "Nothing left to rank" in title, title
        assert not page.visible("#task-view")
        progress = page.q("#progress").text
        assert "you: 3 ranked" in progress and "3 / 3 rankings" in progress and "prompts done: 3 / 3" in progress, progress
        rows = submissions(db)
        assert len(rows) == 3, rows
        assert json.loads(rows[2][2]) == [[shown[1]], [shown[0]], sorted([shown[2], shown[3]])], (rows[2], shown)
        expected[PROMPTS[2]["prompt"]] = ([[shown[1]], [shown[0]], [shown[2], shown[3]]], {}, "")
        assert driver.execute_script("return window.__xss") is None

        driver.get(url.rstrip("/") + "/stats")
        page.wait(lambda: page.visible("#stats-view") and page.qa("#counts tbody tr"), "the stats view")
        counts = [[td.text for td in tr.find_elements(By.CSS_SELECTOR, "td")] for tr in page.qa("#counts tbody tr")]
        assert counts == [[NAME, "3"]], counts
        assert page.q("#overall").text.strip() != ""
        page.wait(lambda: "you: 3 ranked" in page.q("#progress").text and "3 / 3 rankings" in page.q("#progress").text,
                  f"the progress line on /stats (is {page.q('#progress').text!r})")
        no_alert(driver, "on /stats")
        driver.quit()
        driver = None
        server.kill()
        server = None

        # ---- export: the rankings and pairs are what was ranked ------------------------------------
        index = completion_index(db)
        out = os.path.join(tmp, "rankings.jsonl")
        subprocess.run([RLHF, "label", "export", "--db", db, "--out", out], check=True, capture_output=True)
        exported = [json.loads(l) for l in open(out)]
        assert len(exported) == 3, exported
        n_pairs = 0
        for row, p in zip(exported, PROMPTS):
            tiers, flags, note = expected[p["prompt"]]
            assert row["prompt"] == p["prompt"] and row["completions"] == p["completions"], row
            assert row["labeler"] == NAME and row["prompt_id"] == pids[p["prompt"]], row
            want_ranking = [sorted(index[i][1] for i in t) for t in tiers]
            want_ranking = [t[0] if len(t) == 1 else t for t in want_ranking]
            assert row["ranking"] == want_ranking, (row["ranking"], want_ranking)
            want_flags = [[] for _ in range(K)]
            for cid, fl in flags.items():
                want_flags[index[cid][1]] = fl
            assert row["flags"] == want_flags, (row["flags"], want_flags)
            assert row.get("note", "") == note, row
            assert isinstance(row["submitted_at"], (int, float))
            ties = sum(len(t) * (len(t) - 1) // 2 for t in tiers)
            n_pairs += K * (K - 1) // 2 - ties

        pairs_out = os.path.join(tmp, "pairs.jsonl")
        subprocess.run([RLHF, "label", "export", "--db", db, "--out", pairs_out, "--pairs"], check=True, capture_output=True)
        pairs = [json.loads(l) for l in open(pairs_out)]
        assert len(pairs) == n_pairs == (6 - 1) + 6 + (6 - 1), (len(pairs), n_pairs)
        text_rank, text_flags = {}, {}   # (prompt, completion text) -> tier number, flags
        for p in PROMPTS:
            tiers, flags, _ = expected[p["prompt"]]
            for t, tier in enumerate(tiers):
                for cid in tier:
                    key = (p["prompt"], p["completions"][index[cid][1]])
                    text_rank[key], text_flags[key] = t, flags.get(cid, [])
        for pr in pairs:
            chosen, rejected = (pr["prompt"], pr["chosen"]), (pr["prompt"], pr["rejected"])
            assert pr["labeler"] == NAME and pr["prompt_id"] == pids[pr["prompt"]], pr
            assert text_rank[chosen] < text_rank[rejected], pr
            assert pr["chosen_flags"] == text_flags[chosen] and pr["rejected_flags"] == text_flags[rejected], pr
        assert len({(pr["prompt"], pr["chosen"], pr["rejected"]) for pr in pairs}) == len(pairs), "duplicate pairs"
        print("label page in Chromium: sign-in, drag and drop, keys, ties, flags, note, text-only model output, "
              "done view, stats and export all as ranked")
    finally:
        if driver is not None:
            try:
                driver.quit()
            except Exception:
                pass
        if server is not None:
            server.kill()
        if not os.environ.get("KEEP_TMP"): shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
