"""Cross-check against Hugging Face transformers: models move between the two unchanged.

1. stories260K (GGUF) exported by `rlhf convert` opens in transformers, and its logits equal
   ours within 1e-4 on the same input.
2. Tiny random GPT-2 and Qwen2 models saved by transformers load here with equal logits.
"""
import json, os, subprocess, sys, tempfile

import torch
import transformers

BUILD = os.environ["RLHF_BUILD"]
DATA = os.environ["RLHF_DATA"]
RLHF = os.path.join(BUILD, "bin", "rlhf")
LOGITS = os.path.join(BUILD, "bin", "rlhf_logits_tool")


def our_logits(model_dir, batch):
    out = subprocess.run([LOGITS, model_dir, json.dumps(batch)], check=True, capture_output=True, text=True)
    return [torch.tensor(x) for x in json.loads(out.stdout)]


def compare(model_dir, batch, atol=1e-4):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ours = our_logits(model_dir, batch)
    for ids, mine in zip(batch, ours):
        with torch.no_grad():
            theirs = model(torch.tensor([ids])).logits[0]
        diff = (theirs - mine).abs().max().item()
        assert diff < atol, f"{model_dir}: logits differ by {diff}"
    return model


def test_stories260k_export(tmp):
    out = os.path.join(tmp, "stories-hf")
    subprocess.run([RLHF, "convert", "--in", os.path.join(DATA, "stories260K", "stories260K.gguf"), "--out", out],
                   check=True)
    ids = [[1, 403, 407, 261, 378, 432, 383, 286], [1, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310]]
    model = compare(out, ids)
    assert model.config.model_type == "llama"
    # transformers' greedy generation from BOS reproduces the reference ids as well.
    ref = json.load(open(os.path.join(DATA, "stories260K", "expected_greedy_ids.json")))["greedy_next_ids_64"]
    with torch.no_grad():
        gen = model.generate(torch.tensor([[1]]), do_sample=False, max_new_tokens=64, min_new_tokens=64)
    assert gen[0, 1:].tolist() == ref, "transformers' greedy ids on our export differ from the reference"
    print("stories260K export: logits match transformers")


def save_tiny(tmp, name, config):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    path = os.path.join(tmp, name)
    model.save_pretrained(path, safe_serialization=True)
    return path


def test_tiny_gpt2(tmp):
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=48, n_layer=2, n_head=4)
    path = save_tiny(tmp, "gpt2", cfg)
    compare(path, [[5, 17, 299, 3, 42, 0, 7], [1, 2]])
    print("tiny GPT-2: logits match")


def test_tiny_qwen2(tmp):
    cfg = transformers.Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   rope_theta=1000000.0, tie_word_embeddings=False)
    path = save_tiny(tmp, "qwen2", cfg)
    compare(path, [[5, 17, 319, 3, 42, 0, 7, 8, 9], [11]])
    print("tiny Qwen2: logits match")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        test_stories260k_export(tmp)
        test_tiny_gpt2(tmp)
        test_tiny_qwen2(tmp)
    print("ok")
