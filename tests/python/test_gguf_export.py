"""GGUF export read by llama.cpp's own `gguf` package: `rlhf convert --out x.gguf` of
stories260K (a GGUF written by llama.cpp's tools) in each type. The F32 export holds the
source's bytes exactly (names, llama.cpp's interleaved q/k rows, metadata, tokenizer); the
F16/BF16/Q8_0 exports hold what gguf's own quantize() makes of those values, with
one-dimensional tensors in F32 and Q8_0 falling back to F16 for rows that are not whole
blocks, as llama.cpp's converter does."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from gguf.quants import quantize

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("RLHF_BUILD", REPO / "build"))
CLI = BUILD / "bin" / "rlhf"
DATA = Path(os.environ.get("RLHF_DATA", REPO.parent / "shared" / "data"))
SOURCE = DATA / "stories260K" / "stories260K.gguf"

SAME_KEYS = ["general.architecture", "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
             "llama.attention.head_count", "llama.attention.head_count_kv", "llama.block_count",
             "llama.rope.dimension_count", "llama.attention.layer_norm_rms_epsilon", "tokenizer.ggml.model",
             "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
             "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"]


def convert(out, kind):
    r = subprocess.run([str(CLI), "convert", "--in", str(SOURCE), "--out", str(out), "--type", kind],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"rlhf convert --type {kind} failed: {r.stderr}"
    return GGUFReader(out)


def field(reader, key):
    f = reader.fields.get(key)
    assert f is not None, f"{key} missing"
    v = f.contents()
    return [float(x) for x in v] if isinstance(v, list) and v and isinstance(v[0], float) else v


def main():
    assert CLI.exists(), f"{CLI} is missing: build the rlhf_cli target"
    src = GGUFReader(SOURCE)
    src_tensors = {t.name: np.array(t.data) for t in src.tensors}
    # llama.cpp's converter wrote output.weight though the model is tied; we leave it out.
    assert np.array_equal(src_tensors.pop("output.weight"), src_tensors["token_embd.weight"])
    with tempfile.TemporaryDirectory() as tmp:
        for kind, qtype in (("f32", Q.F32), ("f16", Q.F16), ("bf16", Q.BF16), ("q8_0", Q.Q8_0)):
            out = convert(Path(tmp) / f"{kind}.gguf", kind)
            for key in SAME_KEYS:
                assert field(out, key) == field(src, key), (kind, key, field(out, key), field(src, key))
            got = {t.name: t for t in out.tensors}
            assert set(got) == set(src_tensors), (kind, set(got) ^ set(src_tensors))
            fallbacks = 0
            for name, values in src_tensors.items():
                t = got[name]
                want_type = Q.F32 if values.ndim == 1 else qtype
                if want_type == Q.Q8_0 and values.shape[-1] % 32 != 0:
                    want_type, fallbacks = Q.F16, fallbacks + 1
                assert t.tensor_type == want_type, (kind, name, t.tensor_type.name, want_type.name)
                want = values if want_type == Q.F32 else quantize(values, want_type)
                assert np.array_equal(np.array(t.data).view(np.uint8), np.asarray(want).view(np.uint8)), (kind, name)
            if kind == "q8_0":
                assert fallbacks == 5, fallbacks  # ffn_down of the 5 layers: rows of the MLP width, 172
            print(f"ok: {kind}: {len(got)} tensors as gguf makes them, metadata and tokenizer equal to the source")


if __name__ == "__main__":
    main()
    sys.exit(0)
