"""GGUF cross-check: tiny llama and gpt2 models written with llama.cpp's own `gguf` Python
package (F32, F16, BF16, Q8_0 tensors; GGUF v3 and v2) are read by rlhf_dump_tensors, and the
canonical tensors must equal what gguf's dequantize gives, after the layout changes the reader
promises (Meta -> HF rotary rows for llama q/k; fused qkv split for gpt2)."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("RLHF_BUILD", REPO / "build"))
TOOL = BUILD / "bin" / "rlhf_dump_tensors"
DATA = Path(os.environ.get("RLHF_DATA", REPO.parent / "shared" / "data"))

# Tiny llama: C=64 (two Q8_0 blocks a row), H=4, H_kv=2, D=16, I=96, L=2, V=512 (stories' vocab).
C, H, H_KV, I, L = 64, 4, 2, 96, 2
D = C // H


def dump(model_path, out_dir):
    out = Path(out_dir) / (Path(model_path).stem + ".dump.safetensors")
    r = subprocess.run([str(TOOL), str(model_path), str(out)], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"rlhf_dump_tensors {model_path} failed: {r.stderr}")
    return out


def meta_to_hf(w, n_heads):
    """Meta's interleaved rotary rows -> HF's rotate_half rows (what the reader must do)."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def stored(data, qtype):
    """The array to hand to GGUFWriter.add_tensor for `qtype`, and the float32 values the
    file then holds according to gguf's own dequantize."""
    if qtype == Q.F32:
        return data, None, data
    if qtype == Q.F16:
        h = data.astype(np.float16)
        return h, None, h.astype(np.float32)
    q = gguf.quants.quantize(data, qtype)
    return q, qtype, gguf.quants.dequantize(q, qtype).reshape(data.shape).astype(np.float32)


def write_llama(path, qtype, version, rng):
    stories = gguf.GGUFReader(DATA / "stories260K" / "stories260K.gguf")
    fields = stories.fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    scores = fields["tokenizer.ggml.scores"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    V = len(tokens)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(C)
    w.add_block_count(L)
    w.add_feed_forward_length(I)
    w.add_head_count(H)
    w.add_head_count_kv(H_KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    expected = {}

    def add(name, canonical, shape, matrix=True, permute_heads=0):
        data = rng.standard_normal(shape).astype(np.float32)
        # llama.cpp keeps norms in F32 whatever the matrices' type; so do we here.
        arr, raw, values = stored(data, qtype) if matrix else (data, None, data)
        w.add_tensor(name, arr, raw_dtype=raw)
        expected[canonical] = meta_to_hf(values, permute_heads) if permute_heads else values

    add("token_embd.weight", "model.embed_tokens.weight", (V, C))
    add("output_norm.weight", "model.norm.weight", (C,), matrix=False)
    add("output.weight", "lm_head.weight", (V, C))
    for i in range(L):
        b, p = f"blk.{i}.", f"model.layers.{i}."
        add(b + "attn_norm.weight", p + "input_layernorm.weight", (C,), matrix=False)
        add(b + "attn_q.weight", p + "self_attn.q_proj.weight", (H * D, C), permute_heads=H)
        add(b + "attn_k.weight", p + "self_attn.k_proj.weight", (H_KV * D, C), permute_heads=H_KV)
        add(b + "attn_v.weight", p + "self_attn.v_proj.weight", (H_KV * D, C))
        add(b + "attn_output.weight", p + "self_attn.o_proj.weight", (C, H * D))
        add(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", (C,), matrix=False)
        add(b + "ffn_gate.weight", p + "mlp.gate_proj.weight", (I, C))
        add(b + "ffn_up.weight", p + "mlp.up_proj.weight", (I, C))
        add(b + "ffn_down.weight", p + "mlp.down_proj.weight", (C, I))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if version != 3:  # v2 and v3 share the layout; only the version field differs
        raw = bytearray(path.read_bytes())
        raw[4:8] = version.to_bytes(4, "little")
        path.write_bytes(bytes(raw))
    return expected


def write_gpt2(path, qtype, rng):
    """A GPT-2 laid out as llama.cpp's converter writes it: Conv1D weights transposed to
    (out, in), q/k/v fused in attn_qkv, biases everywhere, no tokenizer."""
    V, T = 100, 32
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_context_length(T)
    w.add_embedding_length(C)
    w.add_block_count(L)
    w.add_feed_forward_length(I)
    w.add_head_count(H)
    w.add_layer_norm_eps(1e-5)
    expected = {}

    def add(name, shape, matrix=True):
        data = rng.standard_normal(shape).astype(np.float32)
        arr, raw, values = stored(data, qtype) if matrix else (data, None, data)
        w.add_tensor(name, arr, raw_dtype=raw)
        return values

    expected["model.embed_tokens.weight"] = add("token_embd.weight", (V, C))
    expected["model.embed_positions.weight"] = add("position_embd.weight", (T, C))
    expected["model.norm.weight"] = add("output_norm.weight", (C,), False)
    expected["model.norm.bias"] = add("output_norm.bias", (C,), False)
    expected["lm_head.weight"] = add("output.weight", (V, C))
    for i in range(L):
        b, p = f"blk.{i}.", f"model.layers.{i}."
        for g, c in (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            expected[p + c + ".weight"] = add(b + g + ".weight", (C,), False)
            expected[p + c + ".bias"] = add(b + g + ".bias", (C,), False)
        qkv_w = add(b + "attn_qkv.weight", (3 * C, C))
        qkv_b = add(b + "attn_qkv.bias", (3 * C,), False)
        for k, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            expected[p + f"self_attn.{proj}.weight"] = qkv_w[k * C:(k + 1) * C]
            expected[p + f"self_attn.{proj}.bias"] = qkv_b[k * C:(k + 1) * C]
        expected[p + "self_attn.o_proj.weight"] = add(b + "attn_output.weight", (C, C))
        expected[p + "self_attn.o_proj.bias"] = add(b + "attn_output.bias", (C,), False)
        expected[p + "mlp.up_proj.weight"] = add(b + "ffn_up.weight", (I, C))
        expected[p + "mlp.up_proj.bias"] = add(b + "ffn_up.bias", (I,), False)
        expected[p + "mlp.down_proj.weight"] = add(b + "ffn_down.weight", (C, I))
        expected[p + "mlp.down_proj.bias"] = add(b + "ffn_down.bias", (C,), False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def compare(got, expected, label):
    assert set(got) == set(expected), f"{label}: names differ: {sorted(set(got) ^ set(expected))}"
    for name, want in expected.items():
        have = got[name]
        assert have.dtype == np.float32, f"{label}: {name} is {have.dtype}, expected float32"
        assert have.shape == want.shape, f"{label}: {name} shape {have.shape} != {want.shape}"
        # Dequantization is exact arithmetic on both sides (fp16 scale * int8 in float32).
        np.testing.assert_allclose(have, want, rtol=0, atol=1e-6, err_msg=f"{label}: {name}")


def main():
    assert TOOL.exists(), f"{TOOL} is missing: build the rlhf_dump_tensors target"
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = [(Q.F32, 3), (Q.F16, 3), (Q.BF16, 3), (Q.Q8_0, 3), (Q.Q8_0, 2)]
        for qtype, version in cases:
            label = f"llama {qtype.name} v{version}"
            path = tmp / f"llama_{qtype.name}_v{version}.gguf"
            expected = write_llama(path, qtype, version, rng)
            assert path.read_bytes()[4] == version
            got = load_file(dump(path, tmp))
            compare(got, expected, label)
            cfg = json.loads(load_file_metadata(tmp / (path.stem + ".dump.safetensors"))["config"])
            assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (C, H, H_KV), cfg
            assert cfg["tie_word_embeddings"] is False and cfg["vocab_size"] == 512, cfg
            print(f"ok: {label}")
        for qtype in (Q.F32, Q.Q8_0):
            label = f"gpt2 {qtype.name}"
            path = tmp / f"gpt2_{qtype.name}.gguf"
            expected = write_gpt2(path, qtype, rng)
            compare(load_file(dump(path, tmp)), expected, label)
            cfg = json.loads(load_file_metadata(tmp / (path.stem + ".dump.safetensors"))["config"])
            assert cfg["architectures"] == ["GPT2LMHeadModel"] and cfg["n_inner"] == I, cfg
            print(f"ok: {label}")

        # A type we do not read must be refused with the tensor's name.
        w = gguf.GGUFWriter(str(tmp / "q4.gguf"), "llama")
        w.add_embedding_length(C)
        w.add_head_count(H)
        data = rng.standard_normal((8, C)).astype(np.float32)
        w.add_tensor("token_embd.weight", gguf.quants.quantize(data, Q.Q4_0), raw_dtype=Q.Q4_0)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        r = subprocess.run([str(TOOL), str(tmp / "q4.gguf"), str(tmp / "x.safetensors")], capture_output=True, text=True)
        assert r.returncode == 1 and "token_embd.weight" in r.stderr and "Q4_0" in r.stderr, r.stderr
        print("ok: Q4_0 refused:", r.stderr.strip())


def load_file_metadata(path):
    from safetensors import safe_open
    with safe_open(str(path), "np") as f:
        return f.metadata()


if __name__ == "__main__":
    main()
    sys.exit(0)
