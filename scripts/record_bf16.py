#!/usr/bin/env python3
"""Records transformers' bfloat16 outputs for kiln's cuda parity tests (on the GPU machine).

For each fixture, loads hf/ in bfloat16 on the GPU with eager attention and writes
test/fixtures/<name>/reference_bf16.safetensors: prompt{i}.context_logits [L, V] (float32 copies of the bf16
logits) and prompt{i}.greedy_ids [n], for the prompts of reference.safetensors.

Usage: python3 scripts/record_bf16.py --fixtures test/fixtures
"""
import argparse
import os

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GenerationConfig

NAMES = ["qwen2_tied_gqa", "qwen2_untied_mqa", "llama3_rope_scaling", "llama_tied_mha", "qwen2_moe_shared", "mixtral_top2"]


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", required=True)
    args = ap.parse_args()
    for name in NAMES:
        d = os.path.join(args.fixtures, name)
        ref = load_file(os.path.join(d, "reference.safetensors"))
        model = AutoModelForCausalLM.from_pretrained(os.path.join(d, "hf"), attn_implementation="eager",
                                                     dtype=torch.bfloat16).cuda().eval()
        eos = model.config.eos_token_id
        out = {}
        i = 0
        while f"prompt{i}.input_ids" in ref:
            ids = ref[f"prompt{i}.input_ids"].long().cuda()[None]
            out[f"prompt{i}.context_logits"] = model(ids).logits[0].float().cpu().contiguous()
            gen = GenerationConfig(max_new_tokens=16, do_sample=False, eos_token_id=eos, pad_token_id=eos)
            seq = model.generate(ids, generation_config=gen)
            out[f"prompt{i}.greedy_ids"] = seq[0, ids.shape[1]:].cpu().contiguous()
            i += 1
        save_file(out, os.path.join(d, "reference_bf16.safetensors"))
        print(name, "recorded", i, "prompts", flush=True)


if __name__ == "__main__":
    main()
