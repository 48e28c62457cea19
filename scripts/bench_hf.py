#!/usr/bin/env python3
"""The transformers baseline for kiln bench, on the GPU machine: the same random Qwen2.5-0.5B-shaped model
(the HF dir kiln's bench wrote), bf16, batch-1 decode with input 128 and output 128, eager transformers
generate. Writes JSON with hf_batch1_decode_tokens_per_s.

Usage: python3 scripts/bench_hf.py --model DIR --out hf.json
"""
import argparse
import json
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).cuda().eval()
    ids = torch.randint(0, 150000, (1, 128), device="cuda")

    def decode(n):
        cfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(ids, generation_config=cfg)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    decode(8)
    t1, t128 = decode(1), decode(128)
    out = {"hf_transformers": transformers.__version__, "hf_torch": torch.__version__,
           "hf_batch1_decode_tokens_per_s": 127 / (t128 - t1)}
    print(json.dumps(out))
    json.dump(out, open(args.out, "w"))


if __name__ == "__main__":
    main()
