// A mixture-of-experts layer on the cpu: each row's router softmax over every expert (float64), its top k
// (renormalized when the model says so), the experts this rank holds applied and weighted, and the shared
// expert behind its sigmoid gate. Experts use TensorRT-LLM's fc layout, [up ; gate] per expert, so the
// activated half is the second.

import type { MoeSpec } from "../backend.js";
import { silu } from "./kernels.js";

export interface MoeArrays {
  /** [numExperts, hidden] */
  router: Float32Array;
  /** [expertsLocal, 2 · expertInter, hidden] */
  fc: Float32Array;
  /** [expertsLocal, hidden, expertInter] */
  proj: Float32Array;
  /** [2 · sharedInter, hidden], [hidden, sharedInter], [1, hidden]; null without a shared expert. */
  shared: { fc: Float32Array; proj: Float32Array; gate: Float32Array } | null;
}

function dot(a: Float32Array, aAt: number, b: Float32Array, bAt: number, n: number): number {
  let s = 0;
  for (let i = 0; i < n; i++) s += a[aAt + i] * b[bAt + i];
  return s;
}

/** y = down · (silu(gate · x) ⊙ (up · x)) for one row, fc = [up ; gate] of width `inter`, added into out·w. */
function gatedExpert(
  x: Float32Array,
  xAt: number,
  hidden: number,
  fc: Float32Array,
  fcAt: number,
  proj: Float32Array,
  projAt: number,
  inter: number,
  weight: number,
  out: Float32Array,
  outAt: number,
  act: Float64Array,
): void {
  for (let i = 0; i < inter; i++) {
    const up = dot(x, xAt, fc, fcAt + i * hidden, hidden);
    const gate = dot(x, xAt, fc, fcAt + (inter + i) * hidden, hidden);
    act[i] = silu(gate) * up;
  }
  for (let h = 0; h < hidden; h++) {
    let s = 0;
    const at = projAt + h * inter;
    for (let i = 0; i < inter; i++) s += proj[at + i] * act[i];
    out[outAt + h] += weight * s;
  }
}

/**
 * Set by tests: called after each MoE layer with every row's routing margin, the probability of its k-th
 * choice minus that of the first expert left out (how near the row is to routing another way).
 */
export const moeRoutingProbe: { margins?: (margins: Float64Array) => void } = {};

/** This rank's share of the layer's output for `rows` rows of x [rows, hidden], written to out (zeroed first). */
export function moeForward(
  x: Float32Array,
  rows: number,
  hidden: number,
  w: MoeArrays,
  spec: MoeSpec,
  out: Float32Array,
): void {
  out.fill(0);
  const E = spec.numExperts;
  const probs = new Float64Array(E);
  const act = new Float64Array(Math.max(spec.expertInter, spec.sharedInter));
  const order = Array.from({ length: E }, (_, e) => e);
  const margins = moeRoutingProbe.margins && new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const xAt = r * hidden;
    let max = Number.NEGATIVE_INFINITY;
    for (let e = 0; e < E; e++) {
      probs[e] = dot(x, xAt, w.router, e * hidden, hidden);
      max = Math.max(max, probs[e]);
    }
    let sum = 0;
    for (let e = 0; e < E; e++) {
      probs[e] = Math.exp(probs[e] - max);
      sum += probs[e];
    }
    for (let e = 0; e < E; e++) probs[e] /= sum;
    // Highest probability first; equal ones by lower index, as torch.topk orders a stable tie.
    order.sort((a, b) => probs[b] - probs[a] || a - b);
    const chosen = order.slice(0, spec.topK);
    if (margins) margins[r] = spec.topK < E ? probs[order[spec.topK - 1]] - probs[order[spec.topK]] : 1;
    const norm = spec.renormalize ? chosen.reduce((s, e) => s + probs[e], 0) : 1;
    for (const e of chosen) {
      const local = e - spec.firstExpert;
      if (local < 0 || local >= spec.expertsLocal) continue; // another rank's expert
      const I = spec.expertInter;
      gatedExpert(
        x,
        xAt,
        hidden,
        w.fc,
        local * 2 * I * hidden,
        w.proj,
        local * hidden * I,
        I,
        probs[e] / norm,
        out,
        xAt,
        act,
      );
    }
    if (w.shared && spec.sharedInter > 0) {
      const g = 1 / (1 + Math.exp(-dot(x, xAt, w.shared.gate, 0, hidden)));
      gatedExpert(x, xAt, hidden, w.shared.fc, 0, w.shared.proj, 0, spec.sharedInter, g, out, xAt, act);
    }
  }
  if (margins) moeRoutingProbe.margins!(margins);
}
