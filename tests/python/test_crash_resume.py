"""Crash safety of the one checkpoint path (train/run_dir.h), through the CLI as a user runs it:
SFT and PPO runs killed with SIGKILL at random moments (checkpoint writes slowed down by the
test hook RLHF_TEST_CHECKPOINT_DELAY_MS, so many kills land inside a save), each time resumed
with --resume, end with the same model bytes and the same metrics.jsonl (timings aside) as an
uninterrupted run, and no resume ever starts before the newest complete checkpoint on disk
(a run that silently started over would end the same, only later)."""
import json, os, random, signal, subprocess, sys, tempfile, time

BUILD = os.environ["RLHF_BUILD"]
DATA = os.environ["RLHF_DATA"]
RLHF = os.path.join(BUILD, "bin", "rlhf")
STORIES = os.path.join(DATA, "stories260K", "stories260K.gguf")
MAX_KILLS = 6


def run(args, env=None):
    p = subprocess.run([RLHF, *args], capture_output=True, text=True, env=env)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def metrics(run_dir):
    """metrics.jsonl without the wall-clock timings (the only figures that may differ)."""
    out = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            out.append({k: v for k, v in row.items() if not k.startswith("time/")})
    return out


def model_bytes(run_dir):
    with open(os.path.join(run_dir, "model", "model.safetensors"), "rb") as f:
        return f.read()


def newest_complete_checkpoint(run_dir):
    """The largest step of a complete checkpoint folder (state.json present) a kill left, or 0."""
    steps = [0]
    for d in ("checkpoint", "checkpoint.tmp", "checkpoint.old"):
        state = os.path.join(run_dir, d, "state.json")
        if os.path.exists(state):
            with open(state) as f:
                steps.append(json.load(f)["step"])
    return max(steps)


def killed_and_resumed(args, run_dir, rng, env):
    """Runs `args` until it completes, SIGKILLing it at a random moment up to MAX_KILLS times;
    every start after the first passes --resume, and must continue from the newest complete
    checkpoint on disk. Returns how many kills landed."""
    kills, first = 0, True
    while True:
        cmd = [RLHF, *args, "--run-dir", run_dir] + ([] if first else ["--resume"])
        on_disk = 0 if first else newest_complete_checkpoint(run_dir)
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
            first = False
            killed = False
            if kills < MAX_KILLS:
                try:
                    proc.wait(timeout=rng.uniform(0.3, 2.5))
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    killed = True
            proc.wait()
            err.seek(0)
            text = err.read()
        resumed = [int(l.split("continuing from step ")[1].split()[0]) for l in text.splitlines()
                   if "continuing from step " in l]
        if resumed:
            assert resumed[0] >= on_disk, f"resumed from step {resumed[0]} with a complete checkpoint of step {on_disk} on disk"
        elif on_disk > 0 and not killed:
            raise AssertionError(f"did not resume with a checkpoint of step {on_disk} on disk: {text}")
        if killed:
            kills += 1
            continue
        assert proc.returncode == 0, (cmd, proc.returncode, text)
        return kills


def check(name, args, tmp, seed):
    straight = os.path.join(tmp, name + "_straight")
    run([*args, "--run-dir", straight])
    rng = random.Random(seed)
    env = dict(os.environ, RLHF_TEST_CHECKPOINT_DELAY_MS="150")
    crashed = os.path.join(tmp, name + "_crashed")
    kills = killed_and_resumed(args, crashed, rng, env)
    assert kills >= 2, f"{name}: only {kills} kills landed; the runs ended too fast to test anything"
    a, b = metrics(straight), metrics(crashed)
    assert [r["step"] for r in b] == [r["step"] for r in a], (name, [r["step"] for r in b])
    assert a == b, f"{name}: metrics differ after {kills} kills"
    assert model_bytes(straight) == model_bytes(crashed), f"{name}: the final model differs after {kills} kills"
    assert not os.path.exists(os.path.join(crashed, "checkpoint.tmp"))
    assert not os.path.exists(os.path.join(crashed, "checkpoint.old"))
    print(f"{name}: {kills} kills, {len(a)} steps, metrics and model identical")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        # SFT on a small prompt/completion set.
        sft_data = os.path.join(tmp, "sft.jsonl")
        with open(sft_data, "w") as f:
            for i in range(48):
                f.write(json.dumps({"prompt": f"Once upon a time {i}", "completion": " there was a happy dog."}) + "\n")
        check("sft", ["sft", "--model", STORIES, "--train-data", sft_data, "--batch-size", "4", "--max-steps", "12",
                      "--save-every", "1", "--lr", "1e-3", "--progress", "false"], tmp, seed=1)

        # PPO against a reward model trained here (a tiny rankings set).
        rankings = os.path.join(tmp, "rankings.jsonl")
        with open(rankings, "w") as f:
            for i in range(16):
                f.write(json.dumps({"prompt": f"Tom {i}", "completions": [" was happy.", " was sad.", " ran."],
                                    "ranking": [0, 2, 1]}) + "\n")
        rm_dir = os.path.join(tmp, "rm")
        run(["rm", "train", "--model", STORIES, "--train-data", rankings, "--run-dir", rm_dir, "--max-steps", "4",
             "--norm-samples", "8", "--norm-max-new-tokens", "8", "--progress", "false"])
        prompts = os.path.join(tmp, "prompts.jsonl")
        with open(prompts, "w") as f:
            for p in ["Once upon a time", "The cat", "Tom and his dog", "One day"]:
                f.write(json.dumps({"prompt": p}) + "\n")
        check("ppo", ["ppo", "--model", STORIES, "--train-data", prompts, "--reward-model", os.path.join(rm_dir, "model"),
                      "--max-steps", "10", "--save-every", "1", "--rollout-batch", "8", "--minibatches", "2",
                      "--ppo-epochs", "2", "--max-new-tokens", "16", "--adaptive-kl", "true", "--progress", "false"],
              tmp, seed=2)


if __name__ == "__main__":
    main()
