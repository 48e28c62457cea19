// GPTQ (Frantar et al., 2022) for one linear layer: quantize the weight column by column (input channel by
// input channel), pushing each column's rounding error onto the columns not yet quantized, weighted by the
// inverse Hessian H⁻¹ of the layer's calibration inputs (H = XᵀX). Asymmetric int4 (or int8) with a scale
// and zero point per group of `groupSize` input channels for every output channel, as W4A16_GPTQ stores them.
// convert uses it for --weight_only_precision int4_gptq (with inputs from quantization/calibration.ts).

export interface GroupQuantized {
  /** q[o, i] in [0, 2^bits − 1], row-major [out, in]. */
  q: Uint8Array;
  /** scales[g, o] and zeros[g, o] (integer zero points), g = i / groupSize: w ≈ (q − zero) · scale. */
  scales: Float32Array;
  zeros: Float32Array;
  bits: 4 | 8;
  groupSize: number;
}

/** Asymmetric min/max parameters for one output channel's group of weights. */
function groupParams(values: ArrayLike<number>, maxq: number): { scale: number; zero: number } {
  let lo = 0;
  let hi = 0; // the range always holds 0, as GPTQ's quantizer does
  for (let i = 0; i < values.length; i++) {
    lo = Math.min(lo, values[i]);
    hi = Math.max(hi, values[i]);
  }
  if (lo === hi) return { scale: 1, zero: 0 };
  const scale = (hi - lo) / maxq;
  return { scale, zero: Math.round(-lo / scale) || 0 }; // || 0: no −0 zero points
}

const quantizeValue = (w: number, scale: number, zero: number, maxq: number) =>
  Math.min(maxq, Math.max(0, Math.round(w / scale) + zero));

/** Round-to-nearest with the same groups: the baseline GPTQ improves on. */
export function quantizeGroupsRtn(
  w: Float64Array | Float32Array,
  out: number,
  inDim: number,
  bits: 4 | 8,
  groupSize: number,
): GroupQuantized {
  return gptqCore(Float64Array.from(w), out, inDim, bits, groupSize, null);
}

/**
 * GPTQ with calibration inputs x [rows, in]. `damp` is added to H's diagonal as a fraction of its mean, as
 * the reference implementation does; channels no input ever used are zeroed.
 */
export function gptq(
  w: Float64Array | Float32Array,
  out: number,
  inDim: number,
  x: Float32Array,
  rows: number,
  bits: 4 | 8,
  groupSize: number,
  damp = 0.01,
): GroupQuantized {
  const H = new Float64Array(inDim * inDim);
  for (let r = 0; r < rows; r++) {
    const xr = x.subarray(r * inDim, (r + 1) * inDim);
    for (let i = 0; i < inDim; i++) {
      const xi = xr[i];
      if (xi === 0) continue;
      for (let j = 0; j < inDim; j++) H[i * inDim + j] += xi * xr[j];
    }
  }
  const W = Float64Array.from(w);
  let mean = 0;
  for (let i = 0; i < inDim; i++) mean += H[i * inDim + i];
  mean /= inDim;
  for (let i = 0; i < inDim; i++) {
    if (H[i * inDim + i] === 0) {
      H[i * inDim + i] = 1;
      for (let o = 0; o < out; o++) W[o * inDim + i] = 0;
    }
    H[i * inDim + i] += damp * mean;
  }
  return gptqCore(W, out, inDim, bits, groupSize, upperCholeskyOfInverse(H, inDim));
}

/** U with UᵀU = H⁻¹, upper triangular: H⁻¹ from the Cholesky factor of H, then its Cholesky factor. */
function upperCholeskyOfInverse(H: Float64Array, n: number): Float64Array {
  const L = cholesky(H, n);
  // H⁻¹ = L⁻ᵀ L⁻¹: invert the lower-triangular L by forward substitution.
  const Linv = new Float64Array(n * n);
  for (let c = 0; c < n; c++) {
    for (let r = c; r < n; r++) {
      let s = r === c ? 1 : 0;
      for (let k = c; k < r; k++) s -= L[r * n + k] * Linv[k * n + c];
      Linv[r * n + c] = s / L[r * n + r];
    }
  }
  const Hinv = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = 0;
      for (let k = i; k < n; k++) s += Linv[k * n + i] * Linv[k * n + j];
      Hinv[i * n + j] = s;
      Hinv[j * n + i] = s;
    }
  }
  const Lh = cholesky(Hinv, n);
  const U = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) U[j * n + i] = Lh[i * n + j];
  return U;
}

/** Lower-triangular L with LLᵀ = A (A symmetric positive definite). */
function cholesky(A: Float64Array, n: number): Float64Array {
  const L = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = A[i * n + j];
      for (let k = 0; k < j; k++) s -= L[i * n + k] * L[j * n + k];
      if (i === j) {
        if (!(s > 0)) throw new Error("GPTQ: the calibration Hessian is not positive definite (raise damp)");
        L[i * n + i] = Math.sqrt(s);
      } else {
        L[i * n + j] = s / L[j * n + j];
      }
    }
  }
  return L;
}

/** Column-by-column quantization; with U null, no error is propagated (round-to-nearest). */
function gptqCore(
  W: Float64Array,
  out: number,
  inDim: number,
  bits: 4 | 8,
  groupSize: number,
  U: Float64Array | null,
): GroupQuantized {
  if (inDim % groupSize !== 0) throw new Error(`group size ${groupSize} does not divide in_features ${inDim}`);
  const maxq = 2 ** bits - 1;
  const groups = inDim / groupSize;
  const q = new Uint8Array(out * inDim);
  const scales = new Float32Array(groups * out);
  const zeros = new Float32Array(groups * out);
  const column = new Float64Array(groupSize);
  for (let i = 0; i < inDim; i++) {
    const g = Math.floor(i / groupSize);
    if (i % groupSize === 0) {
      // A group's parameters come from its weights as they are when the group starts (errors already pushed in).
      for (let o = 0; o < out; o++) {
        for (let k = 0; k < groupSize; k++) column[k] = W[o * inDim + i + k];
        const { scale, zero } = groupParams(column, maxq);
        scales[g * out + o] = scale;
        zeros[g * out + o] = zero;
      }
    }
    const d = U ? U[i * inDim + i] : 1;
    for (let o = 0; o < out; o++) {
      const scale = scales[g * out + o];
      const zero = zeros[g * out + o];
      const wv = W[o * inDim + i];
      const qv = quantizeValue(wv, scale, zero, maxq);
      q[o * inDim + i] = qv;
      if (!U) continue;
      const err = (wv - (qv - zero) * scale) / d;
      for (let j = i + 1; j < inDim; j++) W[o * inDim + j] -= err * U[i * inDim + j];
    }
  }
  return { q, scales, zeros, bits, groupSize };
}

/** w[o, i] = (q[o, i] − zero[g, o]) · scale[g, o], row-major [out, in]. */
export function dequantizeGroups(t: GroupQuantized, out: number, inDim: number): Float32Array {
  const w = new Float32Array(out * inDim);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inDim; i++) {
      const g = Math.floor(i / t.groupSize);
      w[o * inDim + i] = (t.q[o * inDim + i] - t.zeros[g * out + o]) * t.scales[g * out + o];
    }
  }
  return w;
}

/**
 * TensorRT-LLM's W4A16_GPTQ tensors from a GroupQuantized [out, in] layer: the weight as signed int4 (q − 8)
 * packed two to a byte along out (even column in the low nibble), [in, out/2] bytes; the group scales
 * [in/G, out]; and `zero` = (8 − zero point) · scale, [in/G, out], so that w = q_signed · scale + zero.
 */
export function packGptq(
  t: GroupQuantized,
  out: number,
  inDim: number,
): { packed: Uint8Array; scales: Float32Array; zero: Float32Array } {
  if (t.bits !== 4 || out % 2 !== 0)
    throw new Error(`W4A16_GPTQ packs int4 in pairs of output channels (got ${out} outputs)`);
  const packed = new Uint8Array((inDim * out) / 2);
  for (let i = 0; i < inDim; i++) {
    for (let o = 0; o < out; o += 2) {
      const lo = (t.q[o * inDim + i] - 8) & 0xf;
      const hi = (t.q[(o + 1) * inDim + i] - 8) & 0xf;
      packed[(i * out + o) / 2] = lo | (hi << 4);
    }
  }
  const zero = new Float32Array(t.scales.length);
  for (let k = 0; k < zero.length; k++) zero[k] = (8 - t.zeros[k]) * t.scales[k];
  return { packed, scales: t.scales, zero };
}
