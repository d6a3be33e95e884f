#!/usr/bin/env python3
"""Initialise a small Llama with stories260K's tokenizer (tok512) as a Hugging Face folder.

Needs the project's .venv (torch, transformers). The tokenizer files come from a folder written by
`rlhf convert` (run.py makes one from stories260K.gguf).

Usage: .venv/bin/python examples/apps/init_model.py --tokenizer-from DIR --out DIR [--dim 128] [--layers 6] [--heads 8]
"""
import argparse
import json
import os
import shutil

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer-from", required=True, help="folder with tokenizer.json, tokenizer_config.json")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--dim", type=int, default=128, help="hidden size")
    ap.add_argument("--layers", type=int, default=6, help="transformer blocks")
    ap.add_argument("--heads", type=int, default=8, help="attention heads")
    ap.add_argument("--max-positions", type=int, default=1024, help="max_position_embeddings")
    ap.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    args = ap.parse_args()

    with open(os.path.join(args.tokenizer_from, "config.json")) as f:
        src = json.load(f)
    torch.manual_seed(args.seed)
    config = LlamaConfig(vocab_size=src["vocab_size"], hidden_size=args.dim,
                         intermediate_size=(args.dim * 8 // 3 + 7) // 8 * 8, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.heads,
                         max_position_embeddings=args.max_positions, tie_word_embeddings=True,
                         bos_token_id=src["bos_token_id"], eos_token_id=src["eos_token_id"], rms_norm_eps=1e-5)
    model = LlamaForCausalLM(config)
    model.save_pretrained(args.out, safe_serialization=True)
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(args.tokenizer_from, name), args.out)
    print(json.dumps({"out": args.out, "parameters": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
