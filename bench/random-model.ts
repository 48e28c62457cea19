// A random-weight Hugging Face Qwen2 (or Qwen2-MoE) model dir of a given shape (default: Qwen2.5-0.5B-Instruct's),
// written tensor by tensor in bfloat16, for benchmarks that need the real shape but not real weights.

import fs from "node:fs";
import path from "node:path";
import { encodeFromFloat32 } from "../src/checkpoint/dtype.js";
import { SafetensorsWriter } from "../src/checkpoint/safetensors.js";

export interface Qwen2Shape {
  vocab: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  inter: number;
  /** An lm_head of its own rather than the embedding's transpose (Qwen2.5-7B's); default tied. */
  untied?: boolean;
  /** Qwen2-MoE: every layer routes through `experts` experts, top `topK`, with a gated shared expert. */
  moe?: { experts: number; topK: number; expertInter: number; sharedInter: number };
}

export const QWEN25_05B: Qwen2Shape = { vocab: 151936, hidden: 896, layers: 24, heads: 14, kvHeads: 2, inter: 4864 };

/** Qwen2.5-7B-Instruct's shape: ~7.6 B parameters, 15.2 GB in bf16. */
export const QWEN25_7B: Qwen2Shape = {
  vocab: 152064,
  hidden: 3584,
  layers: 28,
  heads: 28,
  kvHeads: 4,
  inter: 18944,
  untied: true,
};

/**
 * Qwen2-MoE's layer design (Qwen1.5-MoE-A2.7B: 60 experts, top 4, a shared expert four experts wide) at
 * Qwen2.5-0.5B's size: 24 layers of hidden 896, 60 experts of 608, top 4, shared expert 2432; ~2.7 B
 * parameters (5.4 GB in bf16), ~0.5 B read a token.
 */
export const QWEN2_MOE_SMALL: Qwen2Shape = {
  ...QWEN25_05B,
  moe: { experts: 60, topK: 4, expertInter: 608, sharedInter: 2432 },
};

export function writeRandomQwen2(dir: string, s: Qwen2Shape, seed = 1): void {
  fs.mkdirSync(dir, { recursive: true });
  const head = s.hidden / s.heads;
  const config = {
    architectures: [s.moe ? "Qwen2MoeForCausalLM" : "Qwen2ForCausalLM"],
    model_type: s.moe ? "qwen2_moe" : "qwen2",
    ...(s.moe && {
      num_experts: s.moe.experts,
      num_experts_per_tok: s.moe.topK,
      moe_intermediate_size: s.moe.expertInter,
      shared_expert_intermediate_size: s.moe.sharedInter,
      norm_topk_prob: false,
      decoder_sparse_step: 1,
      mlp_only_layers: [],
    }),
    hidden_act: "silu",
    hidden_size: s.hidden,
    intermediate_size: s.inter,
    num_hidden_layers: s.layers,
    num_attention_heads: s.heads,
    num_key_value_heads: s.kvHeads,
    vocab_size: s.vocab,
    max_position_embeddings: 32768,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000.0,
    tie_word_embeddings: !s.untied,
    torch_dtype: "bfloat16",
    use_sliding_window: false,
    bos_token_id: 151643,
    eos_token_id: 151645,
  };
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(config, null, 2));
  const specs: { name: string; shape: number[]; scale: number }[] = [
    { name: "model.embed_tokens.weight", shape: [s.vocab, s.hidden], scale: 0.02 },
  ];
  for (let l = 0; l < s.layers; l++) {
    const p = `model.layers.${l}`;
    specs.push(
      { name: `${p}.input_layernorm.weight`, shape: [s.hidden], scale: 0 },
      { name: `${p}.self_attn.q_proj.weight`, shape: [s.heads * head, s.hidden], scale: 0.02 },
      { name: `${p}.self_attn.q_proj.bias`, shape: [s.heads * head], scale: 0.02 },
      { name: `${p}.self_attn.k_proj.weight`, shape: [s.kvHeads * head, s.hidden], scale: 0.02 },
      { name: `${p}.self_attn.k_proj.bias`, shape: [s.kvHeads * head], scale: 0.02 },
      { name: `${p}.self_attn.v_proj.weight`, shape: [s.kvHeads * head, s.hidden], scale: 0.02 },
      { name: `${p}.self_attn.v_proj.bias`, shape: [s.kvHeads * head], scale: 0.02 },
      { name: `${p}.self_attn.o_proj.weight`, shape: [s.hidden, s.heads * head], scale: 0.02 },
      { name: `${p}.post_attention_layernorm.weight`, shape: [s.hidden], scale: 0 },
    );
    const mlp = (prefix: string, inter: number) =>
      specs.push(
        { name: `${prefix}.gate_proj.weight`, shape: [inter, s.hidden], scale: 0.02 },
        { name: `${prefix}.up_proj.weight`, shape: [inter, s.hidden], scale: 0.02 },
        { name: `${prefix}.down_proj.weight`, shape: [s.hidden, inter], scale: 0.02 },
      );
    if (!s.moe) mlp(`${p}.mlp`, s.inter);
    else {
      specs.push({ name: `${p}.mlp.gate.weight`, shape: [s.moe.experts, s.hidden], scale: 0.02 });
      for (let e = 0; e < s.moe.experts; e++) mlp(`${p}.mlp.experts.${e}`, s.moe.expertInter);
      mlp(`${p}.mlp.shared_expert`, s.moe.sharedInter);
      specs.push({ name: `${p}.mlp.shared_expert_gate.weight`, shape: [1, s.hidden], scale: 0.02 });
    }
  }
  specs.push({ name: "model.norm.weight", shape: [s.hidden], scale: 0 });
  if (s.untied) specs.push({ name: "lm_head.weight", shape: [s.vocab, s.hidden], scale: 0.02 });
  const writer = new SafetensorsWriter(
    path.join(dir, "model.safetensors"),
    specs.map((t) => ({ name: t.name, dtype: "BF16" as const, shape: t.shape })),
  );
  let state = seed >>> 0;
  for (const t of specs) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    const values = new Float32Array(n);
    if (t.scale === 0)
      values.fill(1); // norm weights
    else {
      for (let i = 0; i < n; i++) {
        state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
        values[i] = (state / 2 ** 32 - 0.5) * 2 * t.scale * 1.7;
      }
    }
    writer.write(t.name, encodeFromFloat32(values, "BF16"));
  }
  writer.close();
}
