#!/usr/bin/env python3
"""Makes kiln's mixture-of-experts parity fixtures on the GPU machine (torch + transformers; no network).

Like make_fixtures.py (same randomization, prompts, recorded logits, greedy ids and beams, same tokenizer),
for two tiny random MoE models:
  qwen2_moe_shared  Qwen2-MoE: 4 experts, top 2 without renormalization (norm_topk_prob false), a shared
                    expert with its sigmoid gate, layer 1 a dense MLP (mlp_only_layers), qkv bias.
  mixtral_top2      Mixtral: 4 experts, top 2, renormalized.
The model dir is saved the way Hugging Face Hub checkpoints hold experts (one tensor per expert and
projection); a transformers that saves them fused is undone here, and the reload checks the round trip.

Usage: PYTHONPATH=scripts python3 scripts/make_moe_fixtures.py --out test/fixtures
"""
import argparse
import os

import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import MixtralConfig, MixtralForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

from make_fixtures import TOKENIZER_VOCAB, randomize, reload_and_record, write_tokenizer_files

SPECS = [
    dict(name="qwen2_moe_shared", cls=Qwen2MoeForCausalLM, config=lambda eos: Qwen2MoeConfig(
        vocab_size=TOKENIZER_VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        shared_expert_intermediate_size=48, num_experts=4, num_experts_per_tok=2, norm_topk_prob=False,
        decoder_sparse_step=1, mlp_only_layers=[1], num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=False, use_sliding_window=False, bos_token_id=eos, eos_token_id=eos,
        pad_token_id=eos, output_router_logits=False)),
    dict(name="mixtral_top2", cls=MixtralForCausalLM, config=lambda eos: MixtralConfig(
        vocab_size=TOKENIZER_VOCAB, hidden_size=64, intermediate_size=48, num_local_experts=4,
        num_experts_per_tok=2, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=1000000.0, sliding_window=None,
        tie_word_embeddings=False, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        output_router_logits=False)),
]


def unfuse_experts(path, names):
    """Per-expert tensors as Hub checkpoints hold them, if this transformers saved the experts fused."""
    tensors = load_file(path)
    fused = [k for k in tensors if k.endswith("experts.gate_up_proj") or k.endswith("experts.down_proj")]
    if not fused:
        return False
    out = {}
    for k, v in tensors.items():
        if k.endswith("experts.gate_up_proj"):
            prefix = k[: -len("gate_up_proj")]
            inter = v.shape[1] // 2
            for e in range(v.shape[0]):
                out[f"{prefix}{e}.{names['gate']}.weight"] = v[e, :inter].contiguous()
                out[f"{prefix}{e}.{names['up']}.weight"] = v[e, inter:].contiguous()
        elif k.endswith("experts.down_proj"):
            prefix = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                out[f"{prefix}{e}.{names['down']}.weight"] = v[e].contiguous()
        else:
            out[k] = v
    save_file(out, path, metadata={"format": "pt"})
    return True


def make(spec, out_root, tok_path, tok):
    hf_dir = os.path.join(out_root, spec["name"], "hf")
    os.makedirs(hf_dir, exist_ok=True)
    eos_id = tok.token_to_id("<|endoftext|>")
    config = spec["config"](eos_id)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = spec["cls"](config).float().eval()
    randomize(model, seed=sum(spec["name"].encode()))
    model.save_pretrained(hf_dir, safe_serialization=True)
    names = {"gate": "w1", "up": "w3", "down": "w2"} if spec["cls"] is MixtralForCausalLM else \
        {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
    weights = os.path.join(hf_dir, "model.safetensors")
    unfused = unfuse_experts(weights, names)
    write_tokenizer_files(hf_dir, tok_path, False)
    _, tensors = reload_and_record(model, hf_dir, spec["name"], tok, eos_id, out_root)
    keys = sorted(load_file(weights).keys())
    print(spec["name"], "unfused" if unfused else "saved per expert", len(keys), "tensors, e.g.",
          [k for k in keys if "layers.0." in k][:12], "greedy3", tensors["prompt3.greedy_ids"].tolist())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    tok_path = os.path.join(args.out, "fixture-tokenizer.json")
    tok = Tokenizer.from_file(tok_path)
    for spec in SPECS:
        make(spec, args.out, tok_path, tok)
    print("transformers", transformers.__version__, "torch", torch.__version__)


if __name__ == "__main__":
    main()
