"""Q8_0 cross-check against llama.cpp's own `gguf` package: one tiny llama written twice from
the same float values, in F32 and quantized to Q8_0 by gguf. `rlhf generate --weights q8_0`
on the F32 file quantizes at load with our pack(); `--weights auto` on the Q8_0 file keeps
gguf's blocks as stored. Same blocks, same kernels: the greedy tokens and their logprobs must
be identical, which holds only if pack() rounds exactly as llama.cpp's quantize_row_q8_0."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_gguf_dtypes import write_llama  # noqa: E402  (the tiny llama with stories' tokenizer)

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("RLHF_BUILD", REPO / "build"))
CLI = BUILD / "bin" / "rlhf"


def generate(model, weights):
    r = subprocess.run([str(CLI), "generate", "--model", str(model), "--weights", weights, "--prompt", "Once upon a time",
                        "--temperature", "0", "--max-new-tokens", "24", "--json"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, f"rlhf generate {model} --weights {weights} failed: {r.stderr}"
    return json.loads(r.stdout.splitlines()[0])


def main():
    assert CLI.exists(), f"{CLI} is missing: build the rlhf_cli target"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_llama(tmp / "f32.gguf", Q.F32, 3, np.random.default_rng(7))
        write_llama(tmp / "q8.gguf", Q.Q8_0, 3, np.random.default_rng(7))  # the same values
        ours = generate(tmp / "f32.gguf", "q8_0")
        theirs = generate(tmp / "q8.gguf", "auto")
        assert ours["tokens"] == theirs["tokens"], (ours["tokens"], theirs["tokens"])
        assert ours["logprobs"] == theirs["logprobs"], (ours["logprobs"], theirs["logprobs"])
        # And the float model differs (the check above would be empty if q8_0 were ignored).
        floats = generate(tmp / "f32.gguf", "f32")
        assert floats["logprobs"] != ours["logprobs"], "--weights q8_0 gave the float32 model's logprobs"
        print("ok: pack() matches gguf's Q8_0 blocks;", len(ours["tokens"]), "tokens identical")


if __name__ == "__main__":
    main()
    sys.exit(0)
