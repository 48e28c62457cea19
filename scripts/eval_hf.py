#!/usr/bin/env python3
"""Sliding-window perplexity with transformers, to compare with `kiln eval` on the same text (GPU machine).

The text is encoded whole with the model dir's tokenizer.json (the tokenizers library), optionally cut to the
first --max_tokens tokens, and scored in float32 with windows of --window tokens every --stride tokens, each
token scored once (the transformers documentation's method, as scripts/train_demo.py does).

Usage: python3 scripts/eval_hf.py --model models/demo --dataset models/demo/heldout.txt [--max_tokens N ...]
"""
import argparse
import json
import math

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


@torch.no_grad()
def ppl(model, ids, window, stride):
    nll, scored, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        x = torch.tensor([ids[begin:end]], device="cuda")
        labels = x.clone()
        labels[:, : -(end - prev_end)] = -100
        loss = model(x, labels=labels).loss.float().item()
        n = int((labels[:, 1:] != -100).sum())
        nll += loss * n
        scored += n
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll / scored), scored


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--max_tokens", type=int, nargs="*", default=[0])
    args = ap.parse_args()
    ids = Tokenizer.from_file(f"{args.model}/tokenizer.json").encode(open(args.dataset).read()).ids
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").cuda().eval()
    for n in args.max_tokens:
        p, scored = ppl(model, ids[:n] if n else ids, args.window, args.stride)
        print(json.dumps({"max_tokens": n or len(ids), "tokens_scored": scored, "perplexity": p}), flush=True)


if __name__ == "__main__":
    main()
