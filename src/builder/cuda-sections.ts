// What goes into a rank's engine file for the cuda backend: weights in the model dtype, each layer's mlp.fc
// and mlp.gate fused into one [2·inter, hidden] mlp.fc_gate where both are stored alike, and every quantized
// linear layer in the one layout kiln's GEMV reads (backends/cuda/weight-layout.ts): codes [out, ·], float32
// scales, and a descriptor of how to decode them and round the layer's input.

import {
  cudaWeightOnlyLayout,
  descriptorName,
  encodeDescriptor,
  groupsByRow,
  type QuantDescriptor,
} from "../backends/cuda/weight-layout.js";
import { dtypeFromName } from "../checkpoint/dtype.js";
import type { PretrainedConfig } from "../checkpoint/pretrained-config.js";
import type { SafetensorsFile } from "../checkpoint/safetensors.js";
import { CheckpointError, ConfigError } from "../errors.js";
import { type DecoderDims, decoderDims, decoderTensorShapes } from "../models/decoder.js";
import { layerQuant, moduleOfWeight } from "../quantization/layer-plan.js";
import { companionName, scaleName } from "../quantization/mode.js";
import { isModelOptAlgo, type ModelOptAlgo } from "../quantization/modelopt-formats.js";
import { type SqVariant, sqScaleToIntName, sqVariantOf } from "../quantization/smoothquant.js";
import { concatBytes } from "../util/bytes.js";
import { checkedSource, type PlannedSection, tensorSection } from "./section-plan.js";

/** The algorithms whose layers the cuda backend runs. */
export const CUDA_QUANT_ALGOS = [
  "W8A16",
  "W4A16",
  "W4A16_GPTQ",
  "FP8",
  "W8A8_SQ_PER_CHANNEL",
  "W4A16_AWQ",
  "W4A8_AWQ",
  "NVFP4",
  "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN",
  "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN",
  "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN",
  "W8A8_SQ_PER_TENSOR_PLUGIN",
] as const;
const WEIGHT_ONLY = new Set<string | null>(["W8A16", "W4A16", "W4A16_GPTQ"]);

/** One rank's sections (`dims`: its stage's layers, numbered from 0 in its file, and its tp share of each). */
export function cudaWeightSections(
  cfg: PretrainedConfig,
  file: SafetensorsFile,
  dims: DecoderDims = decoderDims(cfg),
): PlannedSection[] {
  const dtype = dtypeFromName(cfg.dtype);
  const shapes = decoderTensorShapes(cfg, dims);
  const algoOf = (weight: string) => {
    // MIXED_PRECISION names layers by their global index; a later pipeline stage's file numbers them from 0.
    const module = moduleOfWeight(weight)?.replace(
      /^transformer\.layers\.(\d+)\./,
      (_, i) => `transformer.layers.${dims.layers[Number(i)]}.`,
    );
    return module ? (layerQuant(cfg.quantization, module)?.quant_algo ?? null) : null;
  };
  const out: PlannedSection[] = [];
  for (const [name, shape] of shapes) {
    const m = /^(transformer\.layers\.\d+\.mlp)\.(fc|gate)\.(weight|bias)$/.exec(name);
    // One GEMM for fc and gate where they are stored alike: unquantized, or weight-only of one algorithm (a
    // format that rounds its input keeps each layer's own input scales, so those stay two GEMMs).
    const [fcAlgo, gateAlgo] = m ? [algoOf(`${m[1]}.fc.weight`), algoOf(`${m[1]}.gate.weight`)] : [null, null];
    const fuse =
      m !== null &&
      shapes.has(`${m[1]}.gate.weight`) && // a MoE layer's mlp.fc holds its experts, with no gate beside it
      fcAlgo === gateAlgo &&
      (fcAlgo === null || WEIGHT_ONLY.has(fcAlgo));
    if (fuse && m[2] === "gate") continue;
    const names = fuse ? [name, `${m[1]}.gate.${m[3]}`] : [name];
    const target = fuse ? `${m[1]}.fc_gate.${m[3]}` : name;
    const algo = name.endsWith(".weight") ? algoOf(name) : null;
    if (algo !== null && shape.length === 3) {
      throw new ConfigError(`${name}: quantized experts do not run on the cuda backend yet; build with --backend cpu`);
    }
    if (algo === "W8A16" || algo === "W4A16" || algo === "W4A16_GPTQ") {
      out.push(...weightOnlySections(file, names, target, shapes, algo === "W8A16" ? 8 : 4, algo === "W4A16_GPTQ"));
    } else if (isModelOptAlgo(algo)) {
      out.push(...modelOptSections(algo, name, shape, file));
    } else if (sqVariantOf(algo)) {
      out.push(...smoothQuantSections(sqVariantOf(algo)!, name, shape, file));
    } else if (algo !== null) {
      throw new ConfigError(
        `${name}: quant_algo ${algo} does not run on the cuda backend yet (it runs ${CUDA_QUANT_ALGOS.join(", ")}); build with --backend cpu`,
      );
    } else {
      const sources = names.map((n) => checkedSource(n, shapes.get(n)!, file));
      const rows = names.reduce((r, n) => r + shapes.get(n)![0], 0);
      // A KV cache's scales are read on the host, in float32 as the checkpoint holds them.
      // The router stays float32, as TensorRT-LLM keeps it.
      const as = name.endsWith("kv_cache_scaling_factor") || name.endsWith("mlp.router.weight") ? "F32" : dtype;
      out.push(tensorSection(target, [rows, ...shape.slice(1)], as, sources, file));
    }
  }
  return out;
}

function descriptorSection(weightName: string, d: QuantDescriptor): PlannedSection {
  return { spec: { name: descriptorName(weightName), dtype: "F32", shape: [5] }, make: () => encodeDescriptor(d) };
}

/** Weight-only layers (fc and gate fused) with float32 per-channel scales, or GPTQ's group scales and zeros. */
function weightOnlySections(
  file: SafetensorsFile,
  names: string[],
  target: string,
  shapes: Map<string, number[]>,
  bits: 4 | 8,
  /** W4A16_GPTQ: [in/G, out] scales and zeros, transposed to [out, in/G]. */
  grouped: boolean,
): PlannedSection[] {
  const [, inDim] = shapes.get(names[0])!;
  const outs = names.map((n) => shapes.get(n)![0]);
  const total = outs.reduce((a, b) => a + b, 0);
  for (const n of names) {
    // GPTQ carries its int4 bytes in the model dtype; the byte count is what must match.
    const bytes = (inDim * shapes.get(n)![0] * bits) / 8;
    if (!file.has(n) || file.info(n).byteLength !== bytes) {
      throw new CheckpointError(`${file.path}: weight-only "${n}" should hold ${bytes} bytes of int${bits} values`);
    }
  }
  const weight: PlannedSection = {
    spec: { name: target, dtype: bits === 8 ? "I8" : "U8", shape: [total, (inDim * bits) / 8] },
    make: () =>
      concatBytes(
        names.map((n, k) => {
          const b = file.readBytes(n);
          return cudaWeightOnlyLayout(new Int8Array(b.buffer, b.byteOffset, b.byteLength), outs[k], inDim, bits);
        }),
      ),
  };
  const descriptor = descriptorSection(target, {
    kind: bits === 8 ? "int8" : "int4",
    rounding: null,
    inputScale: 1,
    weightScale: 1,
    alpha: 1,
  });
  if (grouped) {
    const groups = file.info(companionName(names[0], "weights_scaling_factor")).shape[0];
    const transposed = (suffix: string): PlannedSection => ({
      spec: { name: companionName(target, suffix), dtype: "F32", shape: [total, groups] },
      make: () =>
        concatBytes(
          names.map((n, k) => {
            const src = file.readFloat32(checkedSource(companionName(n, suffix), [groups, outs[k]], file));
            return new Uint8Array(groupsByRow(src, groups, outs[k]).buffer);
          }),
        ),
    });
    return [weight, transposed("weights_scaling_factor"), transposed("zero"), descriptor];
  }
  const scales = names.map((n, k) => checkedSource(scaleName(n), [outs[k]], file));
  return [weight, tensorSection(scaleName(target), [total], "F32", scales, file), descriptor];
}

/**
 * A ModelOpt-format layer ([out, in] as the float weight): FP8 and int8 codes as stored, AWQ's int4 transposed
 * to [out, in/2] with its group scales [out, groups], NVFP4's E2M1 pairs and E4M3 block scales as stored; the
 * per-tensor scales and alpha go into the descriptor.
 */
function modelOptSections(algo: ModelOptAlgo, name: string, shape: number[], file: SafetensorsFile): PlannedSection[] {
  const [out, inDim] = shape;
  const c = (suffix: string) => companionName(name, suffix);
  const need = (n: string, bytes: number) => {
    if (!file.has(n) || file.info(n).byteLength !== bytes) {
      throw new CheckpointError(`${file.path}: ${algo} expects "${n}" to hold ${bytes} bytes`);
    }
    return n;
  };
  const raw = (n: string, dtype: "I8" | "U8" | "F8_E4M3", rows: number, cols: number): PlannedSection => ({
    spec: { name: n, dtype, shape: [rows, cols] },
    make: () => file.readBytes(need(n, rows * cols)),
  });
  const scalar = (suffix: string) => file.readFloat32(need(c(suffix), 4))[0];
  const floats = (suffix: string, target: string, n: number) => {
    if (!file.has(c(suffix)) || file.info(c(suffix)).shape.reduce((a, b) => a * b, 1) !== n) {
      throw new CheckpointError(`${file.path}: ${algo} expects "${c(suffix)}" with ${n} values`);
    }
    return tensorSection(target, [n], "F32", [c(suffix)], file);
  };
  const prequant = () => floats("prequant_scaling_factor", c("prequant_scaling_factor"), inDim);
  const describe = (d: Omit<QuantDescriptor, "alpha"> & { alpha?: number }) =>
    descriptorSection(name, { alpha: 1, ...d });
  switch (algo) {
    case "FP8":
      need(name, out * inDim);
      return [
        raw(name, "F8_E4M3", out, inDim),
        describe({
          kind: "fp8",
          rounding: "fp8",
          inputScale: scalar("activation_scaling_factor"),
          weightScale: scalar("weights_scaling_factor"),
        }),
      ];
    case "W8A8_SQ_PER_CHANNEL":
      need(name, out * inDim);
      return [
        raw(name, "I8", out, inDim),
        floats("weights_scaling_factor", scaleName(name), out),
        prequant(),
        describe({ kind: "int8", rounding: "int8", inputScale: scalar("activation_scaling_factor"), weightScale: 1 }),
      ];
    case "NVFP4":
      need(name, (out * inDim) / 2);
      return [
        raw(name, "U8", out, inDim / 2),
        raw(c("weights_block_scaling_factor"), "U8", out, inDim / 16),
        describe({
          kind: "fp4",
          rounding: "fp4",
          inputScale: scalar("activation_global_scaling_factor"),
          weightScale: scalar("weights_global_scaling_factor"),
        }),
      ];
    default: {
      // W4A16_AWQ, W4A8_AWQ: int4 pairs [in, out/2] in a model-dtype carrier, group scales [in/G, out].
      need(name, (out * inDim) / 2);
      const groups = file.info(c("weights_scaling_factor")).shape[0];
      const weight: PlannedSection = {
        spec: { name, dtype: "U8", shape: [out, inDim / 2] },
        make: () => {
          const b = file.readBytes(name);
          return cudaWeightOnlyLayout(new Int8Array(b.buffer, b.byteOffset, b.byteLength), out, inDim, 4);
        },
      };
      const scales: PlannedSection = {
        spec: { name: c("weights_scaling_factor"), dtype: "F32", shape: [out, groups] },
        make: () => {
          const src = file.readFloat32(checkedSource(c("weights_scaling_factor"), [groups, out], file));
          return new Uint8Array(groupsByRow(src, groups, out).buffer);
        },
      };
      const w4a8 = algo === "W4A8_AWQ";
      return [
        weight,
        scales,
        prequant(),
        describe({
          kind: "int4",
          rounding: w4a8 ? "fp8" : "none",
          inputScale: 1,
          weightScale: 1,
          alpha: w4a8 ? scalar("alpha") : 1,
        }),
      ];
    }
  }
}

/**
 * A SmoothQuant plugin layer (convert --smoothquant): int8 [out, in] as stored, its per-channel scale (broadcast
 * to [out] where one scale serves the tensor), the smoother dense and proj divide their input by, and the
 * activation rounding: per token, or static with the layer's scale_to_int (a multiplier) and act_scale folded
 * into the weight scale (what one unit is worth is 1 / scale_to_int; the output wants act_scale).
 */
function smoothQuantSections(v: SqVariant, name: string, shape: number[], file: SafetensorsFile): PlannedSection[] {
  const [out, inDim] = shape;
  const lin = name.replace(/\.weight$/, "");
  const [, layer, kind] = /^(transformer\.layers\.\d+)\.(.+)$/.exec(lin) ?? [];
  const read = (n: string) => {
    if (!file.has(n)) throw new CheckpointError(`${file.path}: SmoothQuant "${name}" has no "${n}"`);
    return file.readFloat32(n);
  };
  if (!file.has(name) || file.info(name).byteLength !== out * inDim) {
    throw new CheckpointError(`${file.path}: SmoothQuant expects "${name}" as I8 [${out}, ${inDim}]`);
  }
  const sections: PlannedSection[] = [
    { spec: { name, dtype: "I8", shape: [out, inDim] }, make: () => file.readBytes(name) },
    {
      spec: { name: scaleName(name), dtype: "F32", shape: [out] },
      make: () => {
        const pcs = read(`${lin}.per_channel_scale`);
        return new Uint8Array((pcs.length === 1 ? new Float32Array(out).fill(pcs[0]) : pcs).buffer);
      },
    },
  ];
  if (kind === "attention.dense" || kind === "mlp.proj") {
    sections.push({
      spec: { name: `${lin}.smoother`, dtype: "F32", shape: [inDim] },
      make: () => new Uint8Array(read(`${lin}.smoother`).buffer),
    });
  }
  let d: QuantDescriptor = { kind: "int8", rounding: "int8_token", inputScale: 1, weightScale: 1, alpha: 1 };
  if (!v.perToken) {
    const owner = sqScaleToIntName(layer, kind);
    if (!owner) throw new CheckpointError(`${file.path}: "${name}" is not a layer SmoothQuant covers`);
    const scaleToInt = read(owner)[0];
    const actScale = read(`${lin}.act_scale`)[0];
    d = { ...d, rounding: "int8_times", inputScale: scaleToInt, weightScale: actScale * scaleToInt };
  }
  return [...sections, descriptorSection(name, d)];
}
