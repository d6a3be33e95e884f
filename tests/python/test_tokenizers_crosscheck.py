# Cross-checks our tokenizers against Hugging Face `tokenizers` and `transformers` on real
# text: GPT-2 from OpenAI's files, and the llama2.c tok512 tokenizer exported as tokenizer.json.
# Run by CTest (RLHF_DATA, RLHF_BUILD set); exits non-zero on the first mismatch.
import gzip
import json
import os
import subprocess
import sys
import tempfile

from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import AutoTokenizer, GPT2TokenizerFast, PreTrainedTokenizerFast

DATA = os.environ.get("RLHF_DATA", os.path.join(os.path.dirname(__file__), "../../../shared/data"))
BUILD = os.environ.get("RLHF_BUILD", os.path.join(os.path.dirname(__file__), "../../build"))
TOOL = os.path.join(BUILD, "tests", "rlhf_tokenize_tool")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")


def ours(tokenizer, texts, *flags):
    """Ids from our tokenizer, one list per text (one process for all of them)."""
    stdin = "".join(json.dumps(t) + "\n" for t in texts)
    out = subprocess.run([TOOL, "--tokenizer", tokenizer, *flags], input=stdin, capture_output=True,
                         text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def ours_decode(tokenizer, id_lists):
    stdin = "".join(json.dumps(ids) + "\n" for ids in id_lists)
    out = subprocess.run([TOOL, "--tokenizer", tokenizer, "--decode"], input=stdin, capture_output=True,
                         text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def export_hf(tokenizer, out_dir):
    subprocess.run([TOOL, "--tokenizer", tokenizer, "--export-hf", out_dir], check=True)


def assert_same(name, texts, got, want):
    assert len(got) == len(want) == len(texts), (name, len(got), len(want), len(texts))
    for text, g, w in zip(texts, got, want):
        assert g == w, f"{name}: {text!r}\n  ours: {g}\n  HF:   {w}"
    print(f"{name}: {len(texts)} texts identical")


def corpus():
    with open(os.path.join(DATA, "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    shakespeare = [l for l in lines[:2000] if l.strip()][:400]
    # Multi-line passages too, so newlines and runs of them meet the pre-tokenizer.
    shakespeare += ["\n".join(lines[i:i + 7]) for i in range(0, 700, 7)]
    with gzip.open(os.path.join(DATA, "hh-rlhf-harmless-base-test", "test.jsonl.gz"), "rt",
                   encoding="utf-8") as f:
        hh = []
        for line in f:
            row = json.loads(line)
            hh += [row["chosen"], row["rejected"]]
            if len(hh) >= 240:
                break
    edge = ["", " ", "  leading spaces", "trailing  ", "tabs\tand\r\nCRLF", "naïve café — “quotes” 🙂",
            "日本語のテキスト", "e\u0301 combining", "x" * 300, "1234567890 3.14159", "don't WE'LL it's",
            "Call 555-1234567 or 2024/12/31, it's 99.5% DONE; WE'LL see!", "x\r\n\r\n  y\n\t\n z",
            "  ¿Qué? ¡Sí! — déjà vu… 東京2020年 ١٢٣٤ ⅓ ²³", "A\u00a0B\u2003C\u3000D\u200bE"]
    return shakespeare, hh, edge


def check_gpt2(texts):
    gpt2_dir = os.path.join(DATA, "gpt2-bpe")
    vocab, merges = os.path.join(gpt2_dir, "encoder.json"), os.path.join(gpt2_dir, "vocab.bpe")
    hf = Tokenizer(BPE.from_file(vocab, merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    got = ours(gpt2_dir, texts, "--no-parse-special")
    assert_same("gpt2 vs tokenizers", texts, got, want)

    # transformers reads the same files under their HF names.
    with tempfile.TemporaryDirectory() as d:
        os.symlink(vocab, os.path.join(d, "vocab.json"))
        os.symlink(merges, os.path.join(d, "merges.txt"))
        fast = GPT2TokenizerFast.from_pretrained(d)
        assert_same("gpt2 vs transformers GPT2TokenizerFast", texts, got,
                    [fast.encode(t, add_special_tokens=False) for t in texts])

    decoded = ours_decode(gpt2_dir, got)
    assert decoded == texts, "gpt2: decode(encode(text)) != text"
    assert decoded == [hf.decode(ids) for ids in got], "gpt2: decode differs from tokenizers"
    print(f"gpt2 decode: {len(texts)} texts round-trip and match tokenizers")

    # Our own tokenizer.json export loads in both libraries and encodes the same.
    with tempfile.TemporaryDirectory() as d:
        export_hf(gpt2_dir, d)
        exported = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        assert_same("gpt2 exported tokenizer.json", texts, got,
                    [e.ids for e in exported.encode_batch(texts, add_special_tokens=False)])
        auto = AutoTokenizer.from_pretrained(d)
        assert_same(f"gpt2 exported via AutoTokenizer ({type(auto).__name__})", texts, got,
                    [auto.encode(t, add_special_tokens=False) for t in texts])
        assert auto.encode("a<|endoftext|>b", add_special_tokens=False) == [64, 50256, 65]
        assert ours(d, ["a<|endoftext|>b"]) == [[64, 50256, 65]]

        # Llama-3 and Qwen2 split with their own regexes (Split + ByteLevel without regex):
        # HF runs them with Oniguruma, we with PCRE2. The GPT-2 vocabulary stands in for theirs.
        with open(os.path.join(d, "tokenizer.json"), encoding="utf-8") as f:
            gpt2_json = json.load(f)
        for name, regex, ignore_merges in [("llama3", LLAMA3_PATTERN, True), ("qwen2", QWEN2_PATTERN, False)]:
            variant = dict(gpt2_json)
            variant["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
            variant["model"] = dict(gpt2_json["model"], ignore_merges=ignore_merges)
            vdir = os.path.join(d, name)
            os.mkdir(vdir)
            with open(os.path.join(vdir, "tokenizer.json"), "w", encoding="utf-8") as f:
                json.dump(variant, f)
            hf_variant = Tokenizer.from_file(os.path.join(vdir, "tokenizer.json"))
            assert_same(f"{name} split pattern, tokenizers", texts, ours(vdir, texts),
                        [e.ids for e in hf_variant.encode_batch(texts, add_special_tokens=False)])


def check_spm(texts):
    tok512 = os.path.join(DATA, "stories260K", "tok512.bin")
    got = ours(tok512, texts)
    with tempfile.TemporaryDirectory() as d:
        export_hf(tok512, d)
        hf = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        assert_same("spm exported, tokenizers", texts, got,
                    [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)])
        # The post-processor adds BOS like ours does with add_bos.
        with_bos = ours(tok512, texts, "--add-bos")
        assert_same("spm exported, tokenizers, with BOS", texts, with_bos,
                    [e.ids for e in hf.encode_batch(texts, add_special_tokens=True)])
        # Special tokens inside text, and the dummy prefix after each of them (llama.cpp's rule,
        # which the exported Prepend normalizer reproduces segment by segment).
        special = ["<s>Hello</s><s>[INST] hi [/INST]", "a <unk> b"]
        assert_same("spm exported, tokenizers, special tokens", special, ours(tok512, special),
                    [e.ids for e in hf.encode_batch(special, add_special_tokens=False)])

        decoded = ours_decode(tok512, got)
        assert decoded == texts, "spm: decode(encode(text)) != text"
        want_dec = [hf.decode(ids, skip_special_tokens=True) for ids in got]
        assert decoded == want_dec, "spm: decode differs from tokenizers"
        print(f"spm decode: {len(texts)} texts round-trip and match tokenizers")

        fast = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"))
        assert_same("spm exported, PreTrainedTokenizerFast", texts, got,
                    [fast.encode(t, add_special_tokens=False) for t in texts])
        # AutoTokenizer picks LlamaTokenizerFast from tokenizer_config.json; transformers 5
        # rebuilds its Metaspace pipeline from our vocab and merges. Its Metaspace skips the
        # prefix when the text already starts with a space (a known HF difference from
        # SentencePiece), so those texts are compared by the other two libraries only.
        auto = AutoTokenizer.from_pretrained(d)
        plain = [t for t in texts if not t.startswith(" ")]
        assert_same(f"spm exported via AutoTokenizer ({type(auto).__name__})", plain,
                    [g for t, g in zip(texts, got) if not t.startswith(" ")],
                    [auto.encode(t, add_special_tokens=False) for t in plain])
        assert auto.encode("Once upon a time") == ours(tok512, ["Once upon a time"], "--add-bos")[0]
        # legacy=true in our tokenizer_config.json: the prefix after every special token too
        # (special[1] has a space after <unk>, so the Metaspace rule above applies to it).
        assert_same("spm exported via AutoTokenizer, special tokens", special[:1], ours(tok512, special[:1]),
                    [auto.encode(t, add_special_tokens=False) for t in special[:1]])
        assert auto.decode(got[0], skip_special_tokens=True) == texts[0]


def main():
    assert os.path.exists(TOOL), f"{TOOL} is missing: build the rlhf_tokenize_tool target"
    shakespeare, hh, edge = corpus()
    assert len(shakespeare) >= 300 and len(hh) >= 200
    texts = shakespeare + hh + edge
    check_gpt2(texts)
    with open(os.path.join(DATA, "tinystories-sample", "tinystories_sample.txt"), encoding="utf-8") as f:
        stories = [l for l in f.read().split("\n") if l.strip()][:200]
    check_spm(shakespeare + hh + edge + stories)
    print("OK")


if __name__ == "__main__":
    sys.exit(main())
