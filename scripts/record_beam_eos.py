#!/usr/bin/env python3
"""Records transformers' beam search where beams finish early, for kiln's beam-search tests.

The fixtures' own eos rarely wins under random weights, so each prompt here takes as its end id the token
greedy decoding produced at step 2 (recorded in reference.safetensors): several beams then meet it.
Writes test/fixtures/<name>/beam_eos.safetensors with prompt{i}.end_id [1], prompt{i}.beam_ids [4, n]
(-1 after the end id), prompt{i}.beam_scores [4], for num_beams 4, length_penalty 1.0 and 0.5,
early_stopping True and False.

Usage: python3 scripts/record_beam_eos.py --fixtures test/fixtures
"""
import argparse
import os

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GenerationConfig

NAMES = ["qwen2_tied_gqa", "qwen2_untied_mqa", "llama3_rope_scaling", "llama_tied_mha"]
VARIANTS = [("lp1_es1", 1.0, True), ("lp05_es1", 0.5, True), ("lp1_es0", 1.0, False)]


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", required=True)
    args = ap.parse_args()
    for name in NAMES:
        d = os.path.join(args.fixtures, name)
        ref = load_file(os.path.join(d, "reference.safetensors"))
        model = AutoModelForCausalLM.from_pretrained(os.path.join(d, "hf"), attn_implementation="eager",
                                                     dtype=torch.float32).eval()
        out = {}
        i = 0
        while f"prompt{i}.input_ids" in ref:
            ids = ref[f"prompt{i}.input_ids"].long()
            end_id = int(ref[f"prompt{i}.greedy_ids"][2])
            out[f"prompt{i}.end_id"] = torch.tensor([end_id])
            for tag, lp, es in VARIANTS:
                cfg = GenerationConfig(max_new_tokens=16, do_sample=False, num_beams=4, num_return_sequences=4,
                                       early_stopping=es, length_penalty=lp, eos_token_id=end_id,
                                       pad_token_id=end_id)
                bo = model.generate(ids[None], generation_config=cfg, return_dict_in_generate=True,
                                    output_scores=True)
                seqs = bo.sequences[:, len(ids):].clone()
                for b in range(seqs.shape[0]):
                    hits = (seqs[b] == end_id).nonzero()
                    if len(hits):
                        seqs[b, hits[0, 0] + 1:] = -1
                out[f"prompt{i}.{tag}.beam_ids"] = seqs.contiguous()
                out[f"prompt{i}.{tag}.beam_scores"] = bo.sequences_scores.float().contiguous()
                finished = int((seqs == end_id).any(dim=1).sum())
                print(name, i, tag, "end id", end_id, "beams ending in it:", finished, flush=True)
            i += 1
        save_file(out, os.path.join(d, "beam_eos.safetensors"), metadata={"variants": ",".join(v[0] for v in VARIANTS)})


if __name__ == "__main__":
    main()
