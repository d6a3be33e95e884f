"""A reward model trained by `rlhf rm train` opens in transformers as a sequence classifier
(LlamaForSequenceClassification, one label) and gives the same raw scores as `rlhf rm score`."""
import json, os, random, subprocess, tempfile

import tokenizers
import torch
import transformers

BUILD = os.environ["RLHF_BUILD"]
DATA = os.environ["RLHF_DATA"]
RLHF = os.path.join(BUILD, "bin", "rlhf")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        rng = random.Random(0)
        words = "the dog ran to a big tree and saw Lily ball red park".split()
        with open(os.path.join(tmp, "prefs.jsonl"), "w") as f:
            for _ in range(32):
                a = " ".join(rng.choice(words) for _ in range(5))
                f.write(json.dumps({"prompt": "Once upon a time", "chosen": f" {a} happy.", "rejected": f" {a} sad."}) + "\n")
        run = os.path.join(tmp, "rm")
        subprocess.run([RLHF, "rm", "train", "--model", os.path.join(DATA, "stories260K", "stories260K.gguf"),
                        "--train-data", os.path.join(tmp, "prefs.jsonl"), "--run-dir", run, "--max-steps", "4",
                        "--batch-size", "8", "--norm-samples", "8", "--norm-max-new-tokens", "16", "--progress", "false"],
                       check=True, stdout=subprocess.DEVNULL)
        model_dir = os.path.join(run, "model")
        texts = [{"prompt": "Once upon a time", "completion": " the dog ran to the park happy."},
                 {"prompt": "Once upon a time", "completion": " Lily saw a big red ball and was sad."},
                 {"text": "One day, a cat jumped over the tree."}]
        with open(os.path.join(tmp, "texts.jsonl"), "w") as f:
            f.writelines(json.dumps(t) + "\n" for t in texts)
        out = subprocess.run([RLHF, "rm", "score", "--model", model_dir, "--in", os.path.join(tmp, "texts.jsonl")],
                             check=True, capture_output=True, text=True).stdout
        ours = [json.loads(l) for l in out.splitlines()]

        model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        assert type(model).__name__ == "LlamaForSequenceClassification", type(model).__name__
        assert model.config.num_labels == 1
        # The `tokenizers` library reads our tokenizer.json exactly as we encode; transformers 5's
        # LlamaTokenizer wrapper drops the dummy-prefix space before text that starts with one
        # (see tests/python/test_tokenizers_crosscheck.py), so it is not used for the ids here.
        tok = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        cfg = json.load(open(os.path.join(model_dir, "config.json")))
        gain, bias = cfg["rlhf_reward_gain"], cfg["rlhf_reward_bias"]
        for t, mine in zip(texts, ours):
            # Same token ids as ours: prompt and completion encoded separately, no EOS.
            if "text" in t:
                ids = tok.encode(t["text"]).ids
            else:
                ids = tok.encode(t["prompt"]).ids + tok.encode(t["completion"], add_special_tokens=False).ids
            with torch.no_grad():
                raw = model(torch.tensor([ids])).logits[0, 0].item()
            assert abs(raw - mine["raw_score"]) < 1e-4, (raw, mine)
            assert abs(gain * raw + bias - mine["score"]) < 1e-4
        print("reward model export: transformers scores equal ours")


if __name__ == "__main__":
    main()
