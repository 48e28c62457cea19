// The tensors a SmoothQuant checkpoint holds in place of each layer's norms and linear weights (TensorRT-LLM's
// W8A8_SQ_*_PLUGIN layout), from a single-rank float32 checkpoint and its calibration ranges.

import type { EncodableDtype } from "../checkpoint/dtype.js";
import { encodeFromFloat32 } from "../checkpoint/dtype.js";
import type { PretrainedConfig } from "../checkpoint/pretrained-config.js";
import type { RankTensor } from "../checkpoint/rank-split.js";
import type { SafetensorsFile, TensorSpec } from "../checkpoint/safetensors.js";
import type { Activations } from "./calibration.js";
import { quantizeSq, type SqCompanionRole, type SqVariant, smoothingFactors, sqCompanions } from "./smoothquant.js";

export interface SqTensor extends TensorSpec {
  bytes: Uint8Array;
}

const f32 = (name: string, values: number[] | Float32Array, shape: number[]): SqTensor => ({
  name,
  dtype: "F32",
  shape,
  bytes: new Uint8Array(Float32Array.from(values).buffer),
});

/**
 * Per global tensor name (a norm's or a linear layer's weight), the tensors that replace it: the folded norm
 * with its scale_to_int; the int8 weight with per_channel_scale, act_scale (static), smoother and
 * quantization_scaling_factor (dense, proj).
 */
export function smoothQuantTensors(
  ckpt: SafetensorsFile,
  cfg: PretrainedConfig,
  acts: Activations,
  /** null: no smoothing (factors of 1), plain W8A8 in the same formats. */
  alpha: number | null,
  v: SqVariant,
  target: EncodableDtype,
): Map<string, SqTensor[]> {
  const out = new Map<string, SqTensor[]>();
  const D = cfg.head_size;
  const range = (name: string) => {
    const x = acts.linearInputAmax.get(name);
    const y = acts.linearOutputAmax.get(name);
    if (!x || y === undefined) throw new Error(`no calibration ranges recorded for ${name}`);
    return { x, y };
  };
  /** Smooths and quantizes the linears sharing one input; returns s and the smoothed input's amax. */
  const linears = (names: string[], blocks: (outDim: number) => number[]) => {
    const ws = names.map((n) => ckpt.readFloat32(n));
    const inDim = ckpt.info(names[0]).shape[1];
    const xAmax = range(names[0]).x;
    const s = alpha === null ? new Float32Array(inDim).fill(1) : smoothingFactors(xAmax, ws, inDim, alpha);
    let ax = 0;
    for (let j = 0; j < inDim; j++) ax = Math.max(ax, xAmax[j] / s[j]);
    names.forEach((n, k) => {
      const w = ws[k];
      const outDim = w.length / inDim;
      for (let i = 0; i < w.length; i++) w[i] *= s[i % inDim];
      const { q, wScale } = quantizeSq(w, outDim, inDim, v.perChannel, blocks(outDim));
      const ay = range(n).y;
      const stored = wScale.map((sw) => (v.perToken ? 1 / sw : 127 / ay / ((127 / ax) * sw)));
      const scaleToInt = v.perToken ? 1 : 127 / ax;
      const values: Record<SqCompanionRole, ArrayLike<number>> = {
        per_channel_scale: stored,
        act_scale: [ay / 127],
        smoother: s,
        quantization_scaling_factor: [scaleToInt],
      };
      const companions = sqCompanions(n.replace(/\.weight$/, ""), v, outDim, inDim).map((c) =>
        f32(
          c.name,
          Array.from(values[c.role]).slice(
            0,
            c.shape.reduce((a, b) => a * b, 1),
          ),
          c.shape,
        ),
      );
      out.set(n, [{ name: n, dtype: "I8", shape: [outDim, inDim], bytes: new Uint8Array(q.buffer) }, ...companions]);
    });
    return { s, scaleToInt: v.perToken ? 1 : 127 / ax };
  };
  const foldNorm = (name: string, s: Float32Array, scaleToInt: number) => {
    const g = ckpt.readFloat32(name).map((x, j) => x / s[j]);
    const bytes = target === "F32" ? new Uint8Array(g.buffer) : encodeFromFloat32(g, target);
    out.set(name, [
      { name, dtype: target, shape: [g.length], bytes },
      f32(name.replace(/\.weight$/, ".scale_to_int"), [scaleToInt], [1]),
    ]);
  };
  const perTensor = (o: number) => [o];
  const qkvBlocks = () => [cfg.num_attention_heads * D, cfg.num_key_value_heads * D, cfg.num_key_value_heads * D];
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const t = `transformer.layers.${l}`;
    const qkv = linears([`${t}.attention.qkv.weight`], qkvBlocks);
    foldNorm(`${t}.input_layernorm.weight`, qkv.s, qkv.scaleToInt);
    const mlp = linears([`${t}.mlp.fc.weight`, `${t}.mlp.gate.weight`], perTensor);
    foldNorm(`${t}.post_layernorm.weight`, mlp.s, mlp.scaleToInt);
    for (const lin of ["attention.dense", "mlp.proj"]) linears([`${t}.${lin}.weight`], perTensor);
  }
  return out;
}

/**
 * One rank's slice of a linear layer's SmoothQuant tensors, as TensorRT-LLM splits them: the full int8 matrix
 * chunked along out (qkv per head, its Q, K and V parts at their offsets in the fused matrix; fc, gate) or
 * along in (dense, proj, with their smoother); per-output-channel scales follow the rows; the rest is whole.
 */
export function sliceSqForRank(tensors: SqTensor[], t: RankTensor, cfg: PretrainedConfig): SqTensor[] {
  if (!/\.weight$/.test(t.name) || /layernorm\.weight$/.test(t.name)) return tensors;
  const D = cfg.head_size;
  const offsets = [0, cfg.num_attention_heads * D, (cfg.num_attention_heads + cfg.num_key_value_heads) * D];
  const rows: number[] = [];
  let cols: [number, number] | null = null;
  t.parts.forEach((p, k) => {
    if (!("source" in p)) throw new Error(`${t.name}: SmoothQuant has no padded rows to split`);
    if (p.cols) cols = p.cols;
    else for (let r = p.rows[0]; r < p.rows[1]; r++) rows.push(offsets[k] + r);
  });
  return tensors.map((x) => {
    if (cols && (x.dtype === "I8" || x.name.endsWith(".smoother"))) {
      const [c0, c1] = cols;
      const [n, inDim] = x.shape;
      const width = x.dtype === "I8" ? 1 : 4;
      const out = new Uint8Array(n * (c1 - c0) * width);
      for (let r = 0; r < n; r++)
        out.set(x.bytes.subarray((r * inDim + c0) * width, (r * inDim + c1) * width), r * (c1 - c0) * width);
      return { ...x, shape: [n, c1 - c0], bytes: out };
    }
    if (!cols && (x.dtype === "I8" || (x.name.endsWith(".per_channel_scale") && x.shape[1] > 1))) {
      const rowLen = x.dtype === "I8" ? x.shape[1] : 4;
      const out = new Uint8Array(rows.length * rowLen);
      for (const [i, g] of rows.entries()) out.set(x.bytes.subarray(g * rowLen, (g + 1) * rowLen), i * rowLen);
      return { ...x, shape: x.dtype === "I8" ? [rows.length, x.shape[1]] : [1, rows.length], bytes: out };
    }
    return x;
  });
}
