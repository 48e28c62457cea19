// The llama/qwen2 decoder as backend ops: embedding → N × (attention + gated MLP, pre-norm, residual) →
// final norm → lm_head. Written once; every backend runs it.

import type { AttentionShape, Backend, RopeSpec, StepInput } from "../backends/backend.js";
import type { PretrainedConfig } from "../checkpoint/pretrained-config.js";
import { ropeSpec } from "./rope.js";

/** Every tensor a rank-0, unquantized decoder checkpoint holds, with its [rows, cols] shape. */
export function decoderTensorShapes(cfg: PretrainedConfig): Map<string, number[]> {
  const H = cfg.hidden_size;
  const D = cfg.head_size;
  const qkvOut = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * D;
  const I = cfg.intermediate_size;
  const m = new Map<string, number[]>();
  m.set("transformer.vocab_embedding.weight", [cfg.vocab_size, H]);
  for (let i = 0; i < cfg.num_hidden_layers; i++) {
    const t = `transformer.layers.${i}`;
    m.set(`${t}.input_layernorm.weight`, [H]);
    m.set(`${t}.attention.qkv.weight`, [qkvOut, H]);
    if (cfg.attn_bias) m.set(`${t}.attention.qkv.bias`, [qkvOut]);
    m.set(`${t}.attention.dense.weight`, [H, cfg.num_attention_heads * D]);
    if (cfg.dense_bias === true) m.set(`${t}.attention.dense.bias`, [H]);
    m.set(`${t}.post_layernorm.weight`, [H]);
    if (cfg.quantization.kv_cache_quant_algo === "INT8") m.set(`${t}.attention.kv_cache_scaling_factor`, [1]);
    m.set(`${t}.mlp.fc.weight`, [I, H]);
    m.set(`${t}.mlp.gate.weight`, [I, H]);
    m.set(`${t}.mlp.proj.weight`, [H, I]);
    if (cfg.mlp_bias)
      for (const [n, o] of [
        ["fc", I],
        ["gate", I],
        ["proj", H],
      ] as const)
        m.set(`${t}.mlp.${n}.bias`, [o]);
  }
  m.set("transformer.ln_f.weight", [H]);
  m.set("lm_head.weight", [cfg.vocab_size, H]);
  return m;
}

export class DecoderModel<T> {
  private readonly rope: RopeSpec;
  private readonly shape: AttentionShape;

  constructor(
    readonly cfg: PretrainedConfig,
    private readonly be: Backend<T>,
  ) {
    this.rope = ropeSpec(cfg);
    this.shape = { numHeads: cfg.num_attention_heads, numKvHeads: cfg.num_key_value_heads, headSize: cfg.head_size };
  }

  get attentionShape(): AttentionShape {
    return this.shape;
  }

  private w(name: string): T {
    return this.be.weight(name);
  }

  private bias(name: string): T | null {
    return this.be.hasWeight(name) ? this.be.weight(name) : null;
  }

  /** Runs one packed step; returns logits [step.logitRows.length, vocab] (the lm_head's rows). */
  forward(step: StepInput): T {
    const be = this.be;
    const eps = this.cfg.norm_epsilon;
    be.beginStep(step);
    const residual = be.embed(this.w("transformer.vocab_embedding.weight"), step);
    let x = be.rmsNorm(residual, this.w("transformer.layers.0.input_layernorm.weight"), eps);
    const L = this.cfg.num_hidden_layers;
    for (let l = 0; l < L; l++) {
      be.beginLayer(l);
      const t = `transformer.layers.${l}`;
      const qkv = be.linear(x, this.w(`${t}.attention.qkv.weight`), null);
      be.ropeAndCacheKv(l, qkv, step, this.rope, this.shape, this.bias(`${t}.attention.qkv.bias`));
      const attn = be.attention(l, qkv, step, this.shape);
      const dense = be.linear(attn, this.w(`${t}.attention.dense.weight`), this.bias(`${t}.attention.dense.bias`));
      x = be.addRmsNorm(residual, dense, this.w(`${t}.post_layernorm.weight`), eps);
      const mlp = be.linear(this.gatedMlp(t, x), this.w(`${t}.mlp.proj.weight`), this.bias(`${t}.mlp.proj.bias`));
      if (l + 1 < L) {
        x = be.addRmsNorm(residual, mlp, this.w(`transformer.layers.${l + 1}.input_layernorm.weight`), eps);
      } else {
        be.addInPlace(residual, mlp);
      }
    }
    be.beginLayer(L);
    // Only the rows whose logits are wanted go through the final norm and the (large) lm_head.
    const last = be.rmsNorm(be.gatherRows(residual, step), this.w("transformer.ln_f.weight"), eps);
    return be.linear(last, this.w("lm_head.weight"), null, true);
  }

  /** silu(fc(x)) · gate(x); one GEMM when the engine holds fc and gate fused (`mlp.fc_gate`). */
  private gatedMlp(t: string, x: T): T {
    const be = this.be;
    if (be.hasWeight(`${t}.mlp.fc_gate.weight`)) {
      return be.siluMulHalves(be.linear(x, this.w(`${t}.mlp.fc_gate.weight`), this.bias(`${t}.mlp.fc_gate.bias`)));
    }
    const fc = be.linear(x, this.w(`${t}.mlp.fc.weight`), this.bias(`${t}.mlp.fc.bias`));
    const gate = be.linear(x, this.w(`${t}.mlp.gate.weight`), this.bias(`${t}.mlp.gate.bias`));
    return be.siluMul(fc, gate);
  }
}
