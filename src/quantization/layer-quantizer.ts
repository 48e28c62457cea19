// How convert writes a linear layer's weight when it quantizes: the tensors TensorRT-LLM's layout holds for
// each algorithm (names, dtypes, shapes) and their bytes, from the rank's float32 slice of the weight.

import type { EncodableDtype } from "../checkpoint/dtype.js";
import { dtypeByteSize, encodeFromFloat32 } from "../checkpoint/dtype.js";
import type { RankTensor } from "../checkpoint/rank-split.js";
import type { TensorSpec } from "../checkpoint/safetensors.js";
import { UsageError } from "../errors.js";
import { concatBytes } from "../util/bytes.js";
import type { LinearInputs } from "./calibration.js";
import { gptq, packGptq } from "./gptq.js";
import { companionName, type QuantAlgo, scaleName } from "./mode.js";
import { quantizeWeightOnly } from "./weight-only.js";

export interface LayerQuantizer {
  /** The quant_algo the checkpoint's config names. */
  algo: QuantAlgo;
  specs(t: RankTensor, target: EncodableDtype): TensorSpec[];
  /** The tensors' bytes, in specs order. `globalName` is the weight's name in a single-rank checkpoint. */
  tensors(t: RankTensor, values: Float32Array, target: EncodableDtype, globalName: string): Uint8Array[];
}

const encode = (v: Float32Array, target: EncodableDtype) =>
  target === "F32" ? new Uint8Array(v.buffer, v.byteOffset, v.byteLength) : encodeFromFloat32(v, target);

/** W8A16 / W4A16: per-output-channel scales; `<lin>.weight` int8 [in, out] (int4: [in, out/2]). */
export function weightOnlyQuantizer(bits: 4 | 8): LayerQuantizer {
  return {
    algo: bits === 8 ? "W8A16" : "W4A16",
    specs(t, target) {
      // MoE experts come stacked [experts, out, in]: each expert quantized alone, TensorRT-LLM's [E, in, out].
      const lead = t.shape.slice(0, -2);
      const [out, inDim] = t.shape.slice(-2);
      return [
        { name: t.name, dtype: "I8", shape: [...lead, inDim, bits === 8 ? out : out / 2] },
        { name: scaleName(t.name), dtype: target, shape: [...lead, out] },
      ];
    },
    tensors(t, values, target) {
      const [experts, out, inDim] = t.shape.length === 3 ? t.shape : [1, ...t.shape];
      const parts = Array.from({ length: experts }, (_, e) =>
        quantizeWeightOnly(values.subarray(e * out * inDim, (e + 1) * out * inDim), out, inDim, bits),
      );
      const q = concatBytes(
        parts.map((p) => new Uint8Array(p.qweight.buffer, p.qweight.byteOffset, p.qweight.byteLength)),
      );
      const scales = new Float32Array(experts * out);
      parts.forEach((p, e) => {
        scales.set(p.scales, e * out);
      });
      return [q, encode(scales, target)];
    },
  };
}

/**
 * W4A16_GPTQ from calibration inputs: `<lin>.weight` packed signed int4 [in, out/2] bytes carried in the model
 * dtype, `weights_scaling_factor` and `zero` [in/G, out] (see packGptq). Row-parallel slices take the
 * matching columns of the captured inputs.
 */
export function gptqQuantizer(inputs: Map<string, LinearInputs>, groupSize: number): LayerQuantizer {
  return {
    algo: "W4A16_GPTQ",
    specs(t, target) {
      const [out, inDim] = t.shape;
      const carrier = dtypeByteSize(target);
      if (inDim % groupSize !== 0) {
        throw new UsageError(`--group_size ${groupSize} does not divide in_features ${inDim} of ${t.name}`);
      }
      if ((out / 2) % carrier !== 0) {
        throw new UsageError(
          `${t.name}: ${out} output channels do not pack into ${target} words (int4 pairs, ${carrier} bytes a word)`,
        );
      }
      return [
        { name: t.name, dtype: target, shape: [inDim, out / 2 / carrier] },
        { name: companionName(t.name, "weights_scaling_factor"), dtype: target, shape: [inDim / groupSize, out] },
        { name: companionName(t.name, "zero"), dtype: target, shape: [inDim / groupSize, out] },
      ];
    },
    tensors(t, values, target, globalName) {
      const [out, inDim] = t.shape;
      const captured = inputs.get(globalName);
      if (!captured) throw new Error(`no calibration inputs recorded for ${globalName}`);
      const part = t.parts[0];
      const cols = "cols" in part && part.cols ? part.cols : null;
      const full = captured.x.length / captured.rows;
      let x = captured.x;
      if (cols) {
        x = new Float32Array(captured.rows * inDim);
        for (let r = 0; r < captured.rows; r++)
          x.set(captured.x.subarray(r * full + cols[0], r * full + cols[1]), r * inDim);
      }
      const packed = packGptq(gptq(values, out, inDim, x, captured.rows, 4, groupSize), out, inDim);
      return [packed.packed, encode(packed.scales, target), encode(packed.zero, target)];
    },
  };
}
