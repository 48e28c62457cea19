// What each rank file of a unified checkpoint holds for a Mapping, as TensorRT-LLM splits it: qkv split per
// head (q, k and v of the rank concatenated; KV heads repeated when tp exceeds them), fc and gate split by
// rows, dense and proj by columns, lm_head padded to a multiple of tp and split by rows, embedding on the
// first pipeline stage, ln_f and lm_head on the last, layers renumbered within their stage.
// A plan of row and column ranges of HF tensors, so that convert reads only what each rank needs.

import type { Mapping } from "../mapping.js";
import { isMoeLayer, moeOf } from "../models/moe.js";
import type { PretrainedConfig } from "./pretrained-config.js";

/** Rows [rows[0], rows[1]) of an HF tensor, optionally only columns [cols[0], cols[1]); or zero rows (padding). */
export type Part = { source: string; rows: [number, number]; cols?: [number, number] } | { zeroRows: number };

export interface RankTensor {
  name: string;
  shape: number[];
  /** Laid end to end as rows of the last dimension (a 3-D MoE tensor: its experts one after another). */
  parts: Part[];
  /** Stored in this dtype whatever the checkpoint's (TensorRT-LLM keeps MoE routers in float32). */
  dtype?: "F32";
}

const rows = (source: string, a: number, b: number): Part => ({ source, rows: [a, b] });

/** The tensors of file rank `fileRank` (= tp_rank + pp_rank × tp_size), in a fixed order. */
export function rankTensors(
  cfg: PretrainedConfig,
  m: Mapping,
  fileRank: number,
  hasTensor: (n: string) => boolean,
): RankTensor[] {
  const tp = m.tpSize;
  const t = fileRank % tp;
  const pp = Math.floor(fileRank / tp);
  const H = cfg.hidden_size;
  const D = cfg.head_size;
  const I = cfg.intermediate_size;
  const nq = cfg.num_attention_heads / tp;
  const nkvTotal = cfg.num_key_value_heads;
  // KV heads of this rank: a contiguous share, or (tp > KV heads) the one head this rank repeats.
  const [kv0, nkv] = nkvTotal >= tp ? [t * (nkvTotal / tp), nkvTotal / tp] : [Math.floor(t / (tp / nkvTotal)), 1];
  const out: RankTensor[] = [];
  const full = (name: string, source: string, shape: number[]) =>
    out.push({ name, shape, parts: [rows(source, 0, shape[0])] });

  if (pp === 0) full("transformer.vocab_embedding.weight", "model.embed_tokens.weight", [cfg.vocab_size, H]);
  m.ppLayers(cfg.num_hidden_layers, pp).forEach((g, i) => {
    const hf = `model.layers.${g}`;
    const trt = `transformer.layers.${i}`;
    const attn = `${hf}.self_attn`;
    full(`${trt}.input_layernorm.weight`, `${hf}.input_layernorm.weight`, [H]);
    const qkvRows = (suffix: string) => [
      rows(`${attn}.q_proj.${suffix}`, t * nq * D, (t + 1) * nq * D),
      rows(`${attn}.k_proj.${suffix}`, kv0 * D, (kv0 + nkv) * D),
      rows(`${attn}.v_proj.${suffix}`, kv0 * D, (kv0 + nkv) * D),
    ];
    const qkvOut = (nq + 2 * nkv) * D;
    out.push({ name: `${trt}.attention.qkv.weight`, shape: [qkvOut, H], parts: qkvRows("weight") });
    if (cfg.attn_bias) out.push({ name: `${trt}.attention.qkv.bias`, shape: [qkvOut], parts: qkvRows("bias") });
    const dense = `${attn}.o_proj`;
    out.push({
      name: `${trt}.attention.dense.weight`,
      shape: [H, nq * D],
      parts: [{ source: `${dense}.weight`, rows: [0, H], cols: [t * nq * D, (t + 1) * nq * D] }],
    });
    if (hasTensor(`${dense}.bias`)) full(`${trt}.attention.dense.bias`, `${dense}.bias`, [H]);
    full(`${trt}.post_layernorm.weight`, `${hf}.post_attention_layernorm.weight`, [H]);
    if (isMoeLayer(cfg, g)) {
      out.push(...moeTensors(cfg, m, t, hf, trt));
      return;
    }
    const it = I / tp;
    for (const [name, src] of [
      ["fc", "gate_proj"],
      ["gate", "up_proj"],
    ] as const) {
      out.push({
        name: `${trt}.mlp.${name}.weight`,
        shape: [it, H],
        parts: [rows(`${hf}.mlp.${src}.weight`, t * it, (t + 1) * it)],
      });
      if (cfg.mlp_bias)
        out.push({
          name: `${trt}.mlp.${name}.bias`,
          shape: [it],
          parts: [rows(`${hf}.mlp.${src}.bias`, t * it, (t + 1) * it)],
        });
    }
    out.push({
      name: `${trt}.mlp.proj.weight`,
      shape: [H, it],
      parts: [{ source: `${hf}.mlp.down_proj.weight`, rows: [0, H], cols: [t * it, (t + 1) * it] }],
    });
    if (cfg.mlp_bias) full(`${trt}.mlp.proj.bias`, `${hf}.mlp.down_proj.bias`, [H]);
  });
  if (pp === m.ppSize - 1) {
    full("transformer.ln_f.weight", "model.norm.weight", [H]);
    const V = cfg.vocab_size;
    const padded = Math.ceil(V / tp) * tp;
    const per = padded / tp;
    const a = t * per;
    const b = Math.min(V, a + per);
    const source = cfg.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    const parts: Part[] = b > a ? [rows(source, a, b)] : [];
    if (a + per > Math.max(a, b)) parts.push({ zeroRows: a + per - Math.max(a, b) });
    out.push({ name: "lm_head.weight", shape: [per, H], parts });
  }
  return out;
}

/** HF names of a MoE layer's router, expert projections and shared expert, per family. */
function moeSources(cfg: PretrainedConfig, hf: string) {
  if (cfg.architecture === "MixtralForCausalLM") {
    const b = `${hf}.block_sparse_moe`;
    return {
      router: `${b}.gate.weight`,
      expert: (e: number, p: "gate" | "up" | "down") =>
        `${b}.experts.${e}.${{ gate: "w1", up: "w3", down: "w2" }[p]}.weight`,
      shared: null,
    };
  }
  const b = `${hf}.mlp`;
  return {
    router: `${b}.gate.weight`,
    expert: (e: number, p: "gate" | "up" | "down") => `${b}.experts.${e}.${p}_proj.weight`,
    shared: {
      proj: (p: "gate" | "up" | "down") => `${b}.shared_expert.${p}_proj.weight`,
      gate: `${b}.shared_expert_gate.weight`,
    },
  };
}

/**
 * A MoE layer's tensors on tp rank `t`: the router whole (float32); the rank's experts (moe_ep) stacked, each
 * with its moe_tp share of [up ; gate] rows (fc, TensorRT-LLM's order: the activated half second) and of
 * down's columns (proj); the shared expert split by plain tp, its gate whole.
 */
function moeTensors(cfg: PretrainedConfig, m: Mapping, t: number, hf: string, trt: string): RankTensor[] {
  const moe = moeOf(cfg)!;
  const H = cfg.hidden_size;
  const src = moeSources(cfg, hf);
  const epRank = t % m.moeEpSize;
  const moeTpRank = Math.floor(t / m.moeEpSize);
  const experts = m.epExperts(moe.num_experts, epRank);
  const ie = moe.expertInter / m.moeTpSize;
  const [a, b] = [moeTpRank * ie, (moeTpRank + 1) * ie];
  const out: RankTensor[] = [
    {
      name: `${trt}.mlp.router.weight`,
      shape: [moe.num_experts, H],
      parts: [rows(src.router, 0, moe.num_experts)],
      dtype: "F32",
    },
    {
      name: `${trt}.mlp.fc.weight`,
      shape: [experts.length, 2 * ie, H],
      parts: experts.flatMap((e) => [rows(src.expert(e, "up"), a, b), rows(src.expert(e, "gate"), a, b)]),
    },
    {
      name: `${trt}.mlp.proj.weight`,
      shape: [experts.length, H, ie],
      parts: experts.map((e) => ({
        source: src.expert(e, "down"),
        rows: [0, H] as [number, number],
        cols: [a, b] as [number, number],
      })),
    },
  ];
  if (src.shared && moe.sharedInter > 0) {
    const is = moe.sharedInter / m.tpSize;
    const [c, d] = [t * is, (t + 1) * is];
    out.push(
      {
        name: `${trt}.shared_expert.fc.weight`,
        shape: [2 * is, H],
        parts: [rows(src.shared.proj("up"), c, d), rows(src.shared.proj("gate"), c, d)],
      },
      {
        name: `${trt}.shared_expert.proj.weight`,
        shape: [H, is],
        parts: [{ source: src.shared.proj("down"), rows: [0, H], cols: [c, d] }],
      },
      { name: `${trt}.shared_expert_gate.weight`, shape: [1, H], parts: [rows(src.shared.gate, 0, 1)] },
    );
  }
  return out;
}
