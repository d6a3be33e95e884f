"""LoRA adapters cross-checked with peft, both directions:
1. `rlhf sft` with LoRA on stories260K (HF layout) writes RUN_DIR/adapter; transformers +
   peft.PeftModel load the base and that adapter and give the logits of our merged model
   (RUN_DIR/model, read by rlhf_logits_tool), which differ from the base's;
2. `rlhf rm train` with LoRA: peft's sequence classifier with our adapter (its score head in
   modules_to_save) gives the raw scores of our merged reward model;
3. an adapter peft made (random A and B on every projection, fused ones included) merged by
   `rlhf lora merge` gives peft's logits."""
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import peft
import torch
import transformers

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("RLHF_BUILD", REPO / "build"))
RLHF = BUILD / "bin" / "rlhf"
LOGITS = BUILD / "bin" / "rlhf_logits_tool"
DATA = Path(os.environ.get("RLHF_DATA", REPO.parent / "shared" / "data"))
IDS = [[1, 403, 407, 261, 378, 426, 306, 263, 385, 262, 500, 412], [1, 365, 411, 344, 297, 433, 276, 292, 46, 77]]  # no pad or EOS id: a classifier reads the last token
TOL = 1e-4


def run(*args):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed:\n{r.stderr[-2000:]}")
    return r.stdout


def our_logits(model_dir):
    return [np.array(seq, dtype=np.float32) for seq in json.loads(run(LOGITS, model_dir, json.dumps(IDS)))]


def hf_logits(model):
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].float().numpy() for ids in IDS]


def max_gap(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def write_data(tmp):
    rng = random.Random(0)
    words = "the dog ran to a big tree and saw Lily ball red park cat jumped over mom".split()
    with open(tmp / "sft.jsonl", "w") as f:
        for _ in range(16):
            f.write(json.dumps({"prompt": "Once upon a time", "completion": " " + " ".join(rng.choice(words) for _ in range(10)) + "."}) + "\n")
    with open(tmp / "prefs.jsonl", "w") as f:
        for _ in range(16):
            a = " ".join(rng.choice(words) for _ in range(5))
            f.write(json.dumps({"prompt": "Once upon a time", "chosen": f" {a} happy.", "rejected": f" {a} sad."}) + "\n")


def train_args(base, data, run_dir):
    return ["--model", base, "--train-data", data, "--run-dir", run_dir, "--max-steps", "4", "--batch-size", "4",
            "--lr", "1e-2", "--max-length", "48", "--progress", "false", "--lora-r", "4", "--lora-alpha", "8",
            "--lora-target-modules", "all-linear"]


def main():
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        write_data(tmp)
        base = tmp / "base"
        run(RLHF, "convert", "--in", DATA / "stories260K" / "stories260K.gguf", "--out", base)
        base_model = lambda: transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        base_logits = hf_logits(base_model())

        # 1. Our SFT adapter in peft.
        run(RLHF, "sft", *train_args(base, tmp / "sft.jsonl", tmp / "sft"))
        cfg = json.load(open(tmp / "sft" / "adapter" / "adapter_config.json"))
        assert cfg["peft_type"] == "LORA" and cfg["r"] == 4, cfg
        model = peft.PeftModel.from_pretrained(base_model(), tmp / "sft" / "adapter").eval()
        adapted = hf_logits(model)
        ours = our_logits(tmp / "sft" / "model")
        assert max_gap(adapted, base_logits) > 1e-2, "the adapter changes nothing: the check below would prove nothing"
        gap = max_gap(adapted, ours)
        assert gap < TOL, f"peft with our adapter vs our merged model: logits differ by {gap}"
        print(f"sft adapter: peft == our merged model (max |diff| {gap:.2e})")

        # 2. Our reward model's adapter (score head in modules_to_save) in peft.
        run(RLHF, "rm", "train", *train_args(base, tmp / "prefs.jsonl", tmp / "rm"), "--norm-samples", "0")
        cfg = json.load(open(tmp / "rm" / "adapter" / "adapter_config.json"))
        assert cfg["task_type"] == "SEQ_CLS" and cfg["modules_to_save"] == ["score"], cfg
        cls = lambda path: transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32).eval()
        rm = peft.PeftModel.from_pretrained(cls(base), tmp / "rm" / "adapter").eval()
        merged_rm = cls(tmp / "rm" / "model")
        for ids in IDS:
            with torch.no_grad():
                a = rm(torch.tensor([ids])).logits[0, 0].item()
                b = merged_rm(torch.tensor([ids])).logits[0, 0].item()
            assert abs(a - b) < TOL, f"reward model: peft {a} vs our merged {b}"
        print("rm adapter: peft scores == our merged reward model")

        # 3. A peft adapter (B drawn, not zero) merged by `rlhf lora merge`.
        torch.manual_seed(0)
        lcfg = peft.LoraConfig(r=3, lora_alpha=7, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                               init_lora_weights=False, task_type="CAUSAL_LM")
        theirs = peft.get_peft_model(base_model(), lcfg).eval()
        with torch.no_grad():  # B as small as a trained adapter's: logits move by O(1), not O(10)
            for name, p in theirs.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.05)
        theirs.save_pretrained(tmp / "peft_adapter")
        want = hf_logits(theirs)
        assert max_gap(want, base_logits) > 1e-2
        run(RLHF, "lora", "merge", "--base", base, "--adapter", tmp / "peft_adapter", "--out", tmp / "merged")
        gap = max_gap(our_logits(tmp / "merged"), want)
        assert gap < TOL, f"peft's adapter merged by us: logits differ by {gap}"
        # Our merged weights are peft's merge_and_unload() ones.
        ours_sd = transformers.AutoModelForCausalLM.from_pretrained(tmp / "merged", dtype=torch.float32).state_dict()
        theirs_sd = theirs.merge_and_unload().state_dict()
        assert set(ours_sd) == set(theirs_sd), sorted(set(ours_sd) ^ set(theirs_sd))
        wgap = max(float((ours_sd[k] - theirs_sd[k]).abs().max()) for k in ours_sd)
        assert wgap < 1e-6, f"merged weights differ from peft's merge_and_unload by {wgap}"
        print(f"peft adapter merged by rlhf lora merge == peft (logits max |diff| {gap:.2e}, weights {wgap:.1e})")


if __name__ == "__main__":
    main()
