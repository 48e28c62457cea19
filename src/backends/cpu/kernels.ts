// Reference kernels on Float32Array, row-major. Accumulation happens in JS numbers (float64), so these are
// at least as exact as float32 framework math; they are the yardstick other backends are measured against.

/**
 * out[r, n] = Σ_k x[r, k] · w[n, k] + bias[n]. The weight row stays hot in L1 across the rows of x, and four
 * rows share each weight load (batched steps are bound by these multiply-adds).
 */
export function matmulTransposed(
  x: Float32Array,
  rows: number,
  inDim: number,
  w: Float32Array,
  outDim: number,
  bias: Float32Array | null,
  out: Float32Array,
): void {
  const rows4 = rows - (rows % 4);
  for (let n = 0; n < outDim; n++) {
    const wo = n * inDim;
    const b = bias ? bias[n] : 0;
    let r = 0;
    for (; r < rows4; r += 4) {
      const x0 = r * inDim;
      const x1 = x0 + inDim;
      const x2 = x1 + inDim;
      const x3 = x2 + inDim;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      for (let k = 0; k < inDim; k++) {
        const wk = w[wo + k];
        s0 += x[x0 + k] * wk;
        s1 += x[x1 + k] * wk;
        s2 += x[x2 + k] * wk;
        s3 += x[x3 + k] * wk;
      }
      out[r * outDim + n] = s0 + b;
      out[(r + 1) * outDim + n] = s1 + b;
      out[(r + 2) * outDim + n] = s2 + b;
      out[(r + 3) * outDim + n] = s3 + b;
    }
    for (; r < rows; r++) {
      const xo = r * inDim;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      const k4 = inDim - (inDim % 4);
      let k = 0;
      for (; k < k4; k += 4) {
        s0 += x[xo + k] * w[wo + k];
        s1 += x[xo + k + 1] * w[wo + k + 1];
        s2 += x[xo + k + 2] * w[wo + k + 2];
        s3 += x[xo + k + 3] * w[wo + k + 3];
      }
      for (; k < inDim; k++) s0 += x[xo + k] * w[wo + k];
      out[r * outDim + n] = s0 + s1 + s2 + s3 + b;
    }
  }
}

/**
 * out[r, o] = scale[o] · Σ_i x[r, i] · q[i, o] + bias[o]: a weight-only quantized linear, dequantized on the
 * fly. q is [in, out] int8, or [in, out/2] bytes of int4 pairs (even output in the low nibble).
 */
export function matmulWeightOnly(
  x: Float32Array,
  rows: number,
  inDim: number,
  w: { bits: 4 | 8; q: Int8Array; scales: Float32Array },
  outDim: number,
  bias: Float32Array | null,
  out: Float32Array,
): void {
  const acc = new Float64Array(outDim);
  const q = w.q;
  for (let r = 0; r < rows; r++) {
    acc.fill(0);
    for (let i = 0; i < inDim; i++) {
      const xv = x[r * inDim + i];
      if (xv === 0) continue;
      if (w.bits === 8) {
        const row = i * outDim;
        for (let o = 0; o < outDim; o++) acc[o] += xv * q[row + o];
      } else {
        const row = (i * outDim) >> 1;
        for (let o = 0; o < outDim; o += 2) {
          const byte = q[row + (o >> 1)];
          const lo = ((byte & 0xf) ^ 8) - 8; // sign-extend the nibble
          const hi = (((byte >> 4) & 0xf) ^ 8) - 8;
          acc[o] += xv * lo;
          acc[o + 1] += xv * hi;
        }
      }
    }
    for (let o = 0; o < outDim; o++) out[r * outDim + o] = acc[o] * w.scales[o] + (bias ? bias[o] : 0);
  }
}

/**
 * A group-quantized linear (GPTQ), dequantized on the fly: w[o, i] = q[i, o] · scale[g, o] + zero[g, o] with
 * g = i / groupSize and q signed int4 packed in pairs along o. Per group: Σ x·q scaled once, plus zero · Σ x.
 */
export function matmulGroupwise(
  x: Float32Array,
  rows: number,
  inDim: number,
  w: { q: Int8Array; scales: Float32Array; zeros: Float32Array; groupSize: number },
  outDim: number,
  bias: Float32Array | null,
  out: Float32Array,
): void {
  const acc = new Float64Array(outDim);
  const part = new Float64Array(outDim);
  for (let r = 0; r < rows; r++) {
    acc.fill(0);
    for (let g0 = 0; g0 < inDim; g0 += w.groupSize) {
      part.fill(0);
      let xsum = 0;
      for (let i = g0; i < g0 + w.groupSize; i++) {
        const xv = x[r * inDim + i];
        xsum += xv;
        if (xv === 0) continue;
        const row = (i * outDim) >> 1;
        for (let o = 0; o < outDim; o += 2) {
          const byte = w.q[row + (o >> 1)];
          part[o] += xv * (((byte & 0xf) ^ 8) - 8);
          part[o + 1] += xv * ((((byte >> 4) & 0xf) ^ 8) - 8);
        }
      }
      const g = (g0 / w.groupSize) * outDim;
      for (let o = 0; o < outDim; o++) acc[o] += part[o] * w.scales[g + o] + xsum * w.zeros[g + o];
    }
    for (let o = 0; o < outDim; o++) out[r * outDim + o] = acc[o] + (bias ? bias[o] : 0);
  }
}

export function rmsNormRows(
  x: Float32Array,
  rows: number,
  dim: number,
  w: Float32Array,
  eps: number,
  out: Float32Array,
): void {
  for (let r = 0; r < rows; r++) {
    const o = r * dim;
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[o + i] * x[o + i];
    // transformers rounds the variance and the normalised value to float32 before the weight multiply.
    const inv = Math.fround(1 / Math.sqrt(Math.fround(ss / dim) + eps));
    for (let i = 0; i < dim; i++) out[o + i] = w[i] * Math.fround(x[o + i] * inv);
  }
}

/** gpt-neox rotation of one head vector at `off`: dim i pairs with i + rotaryDim/2. */
export function rotateHalf(v: Float32Array, off: number, cos: Float32Array, sin: Float32Array, half: number): void {
  for (let i = 0; i < half; i++) {
    const a = v[off + i];
    const b = v[off + i + half];
    v[off + i] = a * cos[i] - b * sin[i];
    v[off + i + half] = b * cos[i] + a * sin[i];
  }
}

export function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

/** In place: scores[0..n) ← softmax(scores[0..n)). */
export function softmaxInPlace(scores: Float64Array, n: number): void {
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < n; i++) if (scores[i] > max) max = scores[i];
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.exp(scores[i] - max);
    scores[i] = e;
    sum += e;
  }
  for (let i = 0; i < n; i++) scores[i] /= sum;
}
