#!/usr/bin/env python3
"""Makes kiln's parity fixtures on the GPU machine (torch + transformers + tokenizers; no network).

For each tiny random model it writes test/fixtures/<name>/:
  hf/                    a standard Hugging Face model dir (config.json, model.safetensors, tokenizer files)
  reference.safetensors  what transformers computes, in float32 on the CPU with eager attention:
                         prompt{i}.input_ids [L] I64, prompt{i}.context_logits [L, V] F32,
                         prompt{i}.greedy_ids [n] I64 and prompt{i}.generation_logits [n, V] F32
                         (greedy, max_new_tokens 16, stops at eos),
                         prompt{i}.beam_ids [4, n] I64 (padded with -1) and prompt{i}.beam_scores [4] F32
                         (num_beams 4, length_penalty 1, early_stopping True).
It also writes tokenizer_reference.json: ids from the Python tokenizers library for Qwen2.5's
tokenizer.json and for the fixtures' own byte-level BPE tokenizer.

Usage: python3 scripts/make_fixtures.py --out test/fixtures --brown DIR --qwen_tokenizer FILE
"""
import argparse
import glob
import json
import os
import re
import shutil

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOKENIZER_VOCAB = 384
PROMPT_LENGTHS = [1, 6, 17, 45]
NEW_TOKENS = 16


def brown_sentences(brown_dir, max_files):
    """Brown corpus files hold `word/tag` tokens; strip the tags and undo the tokenization roughly."""
    out = []
    for path in sorted(glob.glob(os.path.join(brown_dir, "c[a-r][0-9][0-9]")))[:max_files]:
        for line in open(path, encoding="utf-8", errors="replace"):
            words = [w.rsplit("/", 1)[0] for w in line.split()]
            if not words:
                continue
            text = " ".join(words).replace("``", '"').replace("''", '"')
            text = re.sub(r" ([.,;:?!')])", r"\1", text)
            out.append(text)
    return out


def train_tokenizer(texts, path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.save(path)
    return tok


def write_tokenizer_files(hf_dir, tokenizer_json, chat):
    shutil.copy(tokenizer_json, os.path.join(hf_dir, "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "add_bos_token": False,
        "model_max_length": 4096,
    }
    if chat:
        cfg["chat_template"] = CHAT_TEMPLATE
        cfg["eos_token"] = "<|im_end|>"
    with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def randomize(model, seed):
    """Default init leaves norms at 1 and biases at 0, which would hide bugs in those paths."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def to_transformers4_keys(config_path, rope_theta, rope_scaling):
    """Rewrite a saved config with the keys real hub checkpoints (transformers 4) use."""
    cfg = json.load(open(config_path))
    cfg.pop("rope_parameters", None)
    cfg["torch_dtype"] = cfg.pop("dtype", "float32")
    cfg["rope_theta"] = rope_theta
    cfg["rope_scaling"] = rope_scaling
    cfg["transformers_version"] = "4.43.1"
    with open(config_path, "w") as f:
        json.dump(cfg, f, indent=2)


FIXTURES = [
    # Qwen2.5-0.5B's traits: tied embeddings, qkv bias, GQA; config in transformers-4 keys.
    dict(name="qwen2_tied_gqa", arch="qwen2", t4=True, chat=True, vocab=TOKENIZER_VOCAB, hidden=64, layers=2,
         heads=4, kv=2, inter=160, tied=True, theta=1000000.0, scaling=None, eps=1e-6),
    # untied, one KV head, model vocab larger than the tokenizer's (as Qwen pads 151665 → 151936); transformers-5 keys.
    dict(name="qwen2_untied_mqa", arch="qwen2", t4=False, chat=False, vocab=400, hidden=48, layers=3,
         heads=6, kv=1, inter=96, tied=False, theta=10000.0, scaling=None, eps=1e-6),
    # Llama 3 rope scaling, no biases, GQA; transformers-5 keys.
    dict(name="llama3_rope_scaling", arch="llama", t4=False, chat=False, vocab=TOKENIZER_VOCAB, hidden=64, layers=2,
         heads=4, kv=2, inter=128, tied=False, theta=500000.0, eps=1e-5,
         scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}),
    # Llama-3.2-1B's traits (tied, llama3 scaling) with MHA; transformers-4 keys.
    dict(name="llama_tied_mha", arch="llama", t4=True, chat=False, vocab=TOKENIZER_VOCAB, hidden=32, layers=2,
         heads=4, kv=4, inter=64, tied=True, theta=500000.0, eps=1e-5,
         scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 32}),
]


def build_model(spec, eos_id):
    common = dict(
        vocab_size=spec["vocab"], hidden_size=spec["hidden"], intermediate_size=spec["inter"],
        num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"], num_key_value_heads=spec["kv"],
        max_position_embeddings=512, rms_norm_eps=spec["eps"], tie_word_embeddings=spec["tied"],
        rope_theta=spec["theta"], rope_scaling=spec["scaling"], bos_token_id=eos_id, eos_token_id=eos_id,
        pad_token_id=eos_id, hidden_act="silu",
    )
    if spec["arch"] == "qwen2":
        config = Qwen2Config(**common)
        cls = Qwen2ForCausalLM
    else:
        config = LlamaConfig(attention_bias=False, mlp_bias=False, **common)
        cls = LlamaForCausalLM
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = cls(config).float().eval()
    randomize(model, seed=sum(spec["name"].encode()))
    if spec["tied"]:
        model.tie_weights()
    return model


@torch.no_grad()
def record(model, prompts, eos_id):
    tensors = {}
    for i, ids in enumerate(prompts):
        x = torch.tensor([ids], dtype=torch.long)
        logits = model(x).logits[0].float()
        tensors[f"prompt{i}.input_ids"] = x[0].clone()
        tensors[f"prompt{i}.context_logits"] = logits.contiguous()
        gen = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos_id, pad_token_id=eos_id)
        out = model.generate(x, generation_config=gen, return_dict_in_generate=True, output_logits=True)
        new = out.sequences[0, len(ids):]
        tensors[f"prompt{i}.greedy_ids"] = new.clone()
        tensors[f"prompt{i}.generation_logits"] = torch.stack([s[0] for s in out.logits]).float().contiguous()
        beam = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=4, num_return_sequences=4,
                                early_stopping=True, length_penalty=1.0, eos_token_id=eos_id, pad_token_id=eos_id)
        bo = model.generate(x, generation_config=beam, return_dict_in_generate=True, output_scores=True)
        seqs = bo.sequences[:, len(ids):].clone()
        # HF pads finished beams with pad (= eos); mark the padding after the first eos as -1.
        for b in range(seqs.shape[0]):
            hits = (seqs[b] == eos_id).nonzero()
            if len(hits):
                seqs[b, hits[0, 0] + 1:] = -1
        tensors[f"prompt{i}.beam_ids"] = seqs.contiguous()
        tensors[f"prompt{i}.beam_scores"] = bo.sequences_scores.float().contiguous()
    return tensors


def make_fixture(spec, out_root, tokenizer_json, tok):
    hf_dir = os.path.join(out_root, spec["name"], "hf")
    os.makedirs(hf_dir, exist_ok=True)
    eos_name = "<|im_end|>" if spec["chat"] else "<|endoftext|>"
    eos_id = tok.token_to_id(eos_name)
    model = build_model(spec, eos_id)
    model.save_pretrained(hf_dir, safe_serialization=True)
    write_tokenizer_files(hf_dir, tokenizer_json, spec["chat"])
    if spec["t4"]:
        to_transformers4_keys(os.path.join(hf_dir, "config.json"), spec["theta"], spec["scaling"])

    reloaded, tensors = reload_and_record(model, hf_dir, spec["name"], tok, eos_id, out_root)
    rot = reloaded.model.rotary_emb
    print(spec["name"], "inv_freq[:3]", rot.inv_freq[:3].tolist(), "greedy0", tensors["prompt3.greedy_ids"].tolist())


def reload_and_record(model, hf_dir, name, tok, eos_id, out_root):
    """The reference must be what transformers makes of the files on disk: reload them, check, record."""
    reloaded = type(model).from_pretrained(hf_dir, attn_implementation="eager", dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(len(name))
    prompts = [torch.randint(0, TOKENIZER_VOCAB, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]
    prompts[2] = tok.encode("The jury said it did find that many of Georgia's laws").ids[:PROMPT_LENGTHS[2]]
    probe = torch.tensor([prompts[3]])
    drift = (reloaded(probe).logits - model(probe).logits).abs().max().item()
    assert drift < 1e-5, f"{name}: reloaded model differs from the one saved ({drift})"
    tensors = record(reloaded, prompts, eos_id)
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "eos_id": str(eos_id),
            "num_prompts": str(len(prompts)), "new_tokens": str(NEW_TOKENS)}
    save_file(tensors, os.path.join(out_root, name, "reference.safetensors"), metadata=meta)
    return reloaded, tensors


TOKENIZER_STRINGS = [
    "What is AI?",
    "Hello, world! How are you today?",
    "你好，世界！今天天气怎么样？",
    "emoji 🤖🔥 and flags 🇫🇷 👨‍👩‍👧",
    "digits 1234567890 and 3.14159 and 1,000,000",
    "  leading spaces,\ttabs\t\tand   runs   of    spaces  ",
    "line one\nline two\n\n\nafter blank lines\r\n",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>special then text",
    "Ünïcödé àccents, ß, Ελληνικά, русский, العربية, हिन्दी",
    "code: def f(x):\n    return x**2  # square",
    "",
]


def tokenizer_reference(qwen_tokenizer, fixture_tokenizer):
    out = {}
    for key, path in [("qwen2.5", qwen_tokenizer), ("fixture", fixture_tokenizer)]:
        tok = Tokenizer.from_file(path)
        out[key] = [
            {"text": s, "ids": tok.encode(s, add_special_tokens=False).ids,
             "ids_with_special": tok.encode(s, add_special_tokens=True).ids}
            for s in TOKENIZER_STRINGS
        ]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--brown", required=True)
    ap.add_argument("--qwen_tokenizer", required=True)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    os.makedirs(args.out, exist_ok=True)
    tok_path = os.path.join(args.out, "fixture-tokenizer.json")
    tok = train_tokenizer(brown_sentences(args.brown, 40), tok_path)
    for spec in FIXTURES:
        make_fixture(spec, args.out, tok_path, tok)
    with open(os.path.join(args.out, "tokenizer_reference.json"), "w") as f:
        json.dump(tokenizer_reference(args.qwen_tokenizer, tok_path), f, ensure_ascii=False, indent=1)
    print("transformers", transformers.__version__, "torch", torch.__version__)


if __name__ == "__main__":
    main()
