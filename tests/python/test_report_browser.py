"""`rlhf report` in a real browser: headless Chromium (Debian's, driven by Selenium through
Debian's chromedriver; nothing is downloaded) opens the report of a synthetic pipeline run.
Every plot must show a drawn line or drawn markers inside its frame, with one line point per
finite value; model text with markup must show literally, and none of it may run."""
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("RLHF_BUILD", REPO / "build"))
RLHF = BUILD / "bin" / "rlhf"
sys.path.insert(0, str(Path(__file__).parent))
from browser_util import fail, start_chromium  # noqa: E402

XSS = ["<script>window.__xss = 1; alert(1)</script>",
       "<img src=x onerror=\"window.__xss = 2; alert(2)\">",
       "<svg onload=\"window.__xss = 3\"></svg> & 'quotes'"]



def make_run(run):
    """A pipeline-like run: PPO metrics with a null, a one-point metric and a constant one;
    reward-model metrics; summary.json with hostile samples. Returns metric -> finite count."""
    (run / "ppo").mkdir(parents=True)
    (run / "rm").mkdir()
    finite = {}
    lines = []
    for step in range(1, 13):
        m = {"step": step, "objective/scores": 0.1 * step, "objective/gold": 0.05 * step + 0.1 * math.sin(step),
             "objective/kl": None if step in (4, 5) else 0.3 * step, "kl_coef": 0.05, "objective/entropy": 2 - 0.05 * step,
             "loss/policy": -0.01 * step, "loss/value": 1 / step, "policy/clipfrac": 0.02 * (step % 3),
             "response_length": 30 + step, "time/generation_s": 1.0}
        if step == 12:
            m["eval/only_once"] = 0.5
        lines.append(json.dumps(m))
        for k, v in m.items():
            if k != "step" and not k.startswith("time/"):
                finite[k] = finite.get(k, 0) + (v is not None)
    (run / "ppo" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "rm" / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "loss": 0.69, "accuracy": 0.5}) + "\n" +
        json.dumps({"step": 2, "loss": 0.61, "accuracy": 0.62, "eval/loss": 0.64, "eval/accuracy": 0.6875}) + "\n")
    (run / "rm" / "result.json").write_text(json.dumps({"eval/accuracy": 0.6875}))
    samples = [{"prompt": "Once upon a time", "before": XSS[0], "after": XSS[1]},
               {"prompt": XSS[2], "before": "Tom was sad.", "after": "Tom was happy."}]
    (run / "summary.json").write_text(json.dumps({
        "gold_before": 0.14, "gold_after": 0.339, "gold_diff": 0.199, "gold_diff_ci95": [0.098, 0.293],
        "rm_score_before": 0.131, "rm_score_after": 0.637, "rm_accuracy": 0.6875, "kl": 10.8,
        "distinct_2_before": 0.741, "distinct_2_after": 0.631, "length_before": 40.5, "length_after": 44.2,
        "eval_samples": 128, "samples": samples}, indent=2))
    return finite


PLOTS_JS = """
return Array.from(document.querySelectorAll('svg.plot')).map(svg => {
  const line = svg.querySelector('polyline.series');
  const box = line ? line.getBBox() : null;
  const markers = Array.from(svg.querySelectorAll('circle.marker'))
      .filter(c => c.getBoundingClientRect().width > 0).length;
  const r = svg.getBoundingClientRect();
  return {metric: svg.dataset.metric, length: line ? line.getTotalLength() : 0,
          points: line ? line.points.numberOfItems : 0, markers: markers, width: r.width, height: r.height,
          box: box ? [box.x, box.y, box.x + box.width, box.y + box.height] : null,
          view: [svg.viewBox.baseVal.width, svg.viewBox.baseVal.height]};
});
"""


def main():
    if not RLHF.exists():
        fail(f"{RLHF} is missing: build the rlhf_cli target (RLHF_BUILD points at the build folder)")

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        finite = make_run(run)
        r = subprocess.run([str(RLHF), "report", str(run)], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"rlhf report failed: {r.stderr}")
        page = Path(r.stdout.strip())
        assert page == run / "report.html", r.stdout

        driver = start_chromium(window="1280,2000")
        from selenium.common.exceptions import NoAlertPresentException
        try:
            driver.set_page_load_timeout(30)
            driver.get(page.as_uri())

            plots = driver.execute_script(PLOTS_JS)
            metrics = [p["metric"] for p in plots]
            ppo = [m for m in finite]  # every non-time PPO metric, then the reward model's four
            assert sorted(metrics[:len(ppo)]) == sorted(ppo), metrics
            assert metrics[len(ppo):] == ["loss", "eval/loss", "accuracy", "eval/accuracy"], metrics
            for p in plots:
                drawn = p["length"] > 0 or p["markers"] > 0
                assert drawn, f"{p['metric']}: neither a line nor markers are drawn: {p}"
                assert p["width"] > 250 and p["height"] > 150, f"{p['metric']}: plot too small on the page: {p}"
                x0, y0, x1, y1 = p["box"]
                assert 0 <= x0 <= x1 <= p["view"][0] and 0 <= y0 <= y1 <= p["view"][1], f"line outside its plot: {p}"
                if p["metric"] in finite:
                    assert p["points"] == finite[p["metric"]], (p, finite[p["metric"]])
            one = next(p for p in plots if p["metric"] == "eval/only_once")
            assert one["points"] == 1 and one["markers"] == 1, one
            flat = next(p for p in plots if p["metric"] == "kl_coef")
            assert flat["length"] > 0 and flat["box"][1] == flat["box"][3], flat  # a flat line, drawn

            # Model text shows as text; none of it became markup or ran.
            cells = driver.execute_script(
                "return Array.from(document.querySelectorAll('table.samples td')).map(td => td.textContent);")
            for s in XSS:
                assert s in cells, (s, cells)
            counts = driver.execute_script(
                "return [document.querySelectorAll('script').length, document.querySelectorAll('img').length,"
                " document.querySelectorAll('table.samples svg').length, window.__xss === undefined];")
            assert counts == [0, 0, 0, True], counts
            try:
                text = driver.switch_to.alert.text
                fail(f"an alert fired: {text}")
            except NoAlertPresentException:
                pass
            body = driver.find_element("tag name", "body").text
            for s in ("Held-out pair accuracy: 0.6875", "0.339", "[0.098, 0.293]"):
                assert s in body, s
        finally:
            driver.quit()
    print(f"report in chromium: {len(plots)} plots drawn, samples shown as text, nothing ran")


if __name__ == "__main__":
    main()
