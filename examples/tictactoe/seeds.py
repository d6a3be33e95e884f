#!/usr/bin/env python3
"""The tic-tac-toe example (`rlhf tictactoe`) over several seeds: whether every seed ends with
a greedy policy that perfect play never beats, after how many training games, and how it does
against a random player. Runs the command once per seed and prints one row per seed and the
range over seeds.

    python3 examples/tictactoe/seeds.py [--seeds 0 1 ... 11] [-- --games 16384]

Flags after `--` go to every run.
"""
import argparse, json, os, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(12)))
    ap.add_argument("--rlhf", default=os.path.join(ROOT, "build", "bin", "rlhf"))
    args = ap.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in args.seeds:
            out = os.path.join(tmp, f"seed{s}.json")
            subprocess.run([args.rlhf, "tictactoe", "--seed", str(s), "--out", out, *extra], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
            with open(out) as f:
                r = json.load(f)
            a, t = r["after"], r["training"]
            rows.append({
                "seed": s,
                "losing": a["perfect"]["X"]["losses"] + a["perfect"]["O"]["losses"],
                "first": t["first_unbeaten_games"],
                "since": t["unbeaten_since_games"],
                "x": (a["random"]["X"]["p_win"], a["random"]["X"]["p_loss"]),
                "o": (a["random"]["O"]["p_win"], a["random"]["O"]["p_loss"]),
                "seconds": t["seconds"],
            })

    def games(v):
        return "never" if v is None else f"{v:,}"

    print("rlhf tictactoe " + " ".join(extra))
    print("| seed | games lost to perfect play (X + O) | first unbeaten after | unbeaten from | "
          "vs random as X: win / loss | vs random as O: win / loss | seconds |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['losing']} | {games(r['first'])} | {games(r['since'])} | "
              f"{100 * r['x'][0]:.1f}% / {100 * r['x'][1]:.1f}% | {100 * r['o'][0]:.1f}% / {100 * r['o'][1]:.1f}% | "
              f"{r['seconds']:.0f} |")
    unbeaten = [r for r in rows if r["losing"] == 0]
    print(f"\n{len(unbeaten)} of {len(rows)} seeds end unbeaten by perfect play", end="")
    if unbeaten:
        first = [r["first"] for r in unbeaten]
        since = [r["since"] for r in unbeaten]
        print(f"; first unbeaten after {min(first):,}-{max(first):,} games, unbeaten from {min(since):,}-{max(since):,}", end="")
    print(f"; vs random as X {100 * min(r['x'][0] for r in rows):.1f}-{100 * max(r['x'][0] for r in rows):.1f}% wins, "
          f"as O {100 * min(r['o'][0] for r in rows):.1f}-{100 * max(r['o'][0] for r in rows):.1f}% wins and "
          f"{100 * min(r['o'][1] for r in rows):.1f}-{100 * max(r['o'][1] for r in rows):.1f}% losses")


if __name__ == "__main__":
    main()
