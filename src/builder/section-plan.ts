// What goes into a rank's engine file for the cpu backend: the checkpoint's tensors in the layout its kernels
// read (float32; quantized layers as their checkpoint bytes beside float32 scales); cuda-sections.ts has the
// cuda backend's. Each section is produced on demand, one at a time, while the file is written.

import { type Dtype, dtypeByteSize, encodeFromFloat32 } from "../checkpoint/dtype.js";
import type { PretrainedConfig } from "../checkpoint/pretrained-config.js";
import type { SafetensorsFile } from "../checkpoint/safetensors.js";
import { CheckpointError } from "../errors.js";
import { type DecoderDims, decoderDims, decoderTensorShapes } from "../models/decoder.js";
import { layerQuant, moduleOfWeight } from "../quantization/layer-plan.js";
import { companionName, isWeightOnlyLayer, scaleName } from "../quantization/mode.js";
import { isModelOptAlgo, MODELOPT_COMPANIONS, type ModelOptAlgo } from "../quantization/modelopt-formats.js";
import { type SqVariant, sqCompanions, sqVariantOf } from "../quantization/smoothquant.js";
import type { SectionSpec } from "./engine-file.js";

export interface PlannedSection {
  spec: SectionSpec;
  make(): Uint8Array;
}

/** The checkpoint tensor that stands for `name`: a shared embedding may stand in for lm_head. */
export function checkedSource(name: string, shape: number[], file: SafetensorsFile): string {
  const source = !file.has(name) && name === "lm_head.weight" ? "transformer.vocab_embedding.weight" : name;
  if (!file.has(source)) throw new CheckpointError(`${file.path}: required tensor "${name}" is missing`);
  const got = file.info(source).shape;
  if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) {
    throw new CheckpointError(`${file.path}: tensor "${source}" has shape [${got}], expected [${shape}]`);
  }
  return source;
}

function asBytes(a: Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Sections holding `sources` (concatenated along rows) in `dtype`; raw bytes when nothing changes. */
export function tensorSection(
  name: string,
  shape: number[],
  dtype: Dtype,
  sources: string[],
  file: SafetensorsFile,
): PlannedSection {
  return {
    spec: { name, dtype, shape },
    make() {
      if (sources.length === 1 && file.info(sources[0]).dtype === dtype) return file.readBytes(sources[0]);
      const parts = sources.map((s) => file.readFloat32(s));
      const all = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of parts) {
        all.set(p, at);
        at += p.length;
      }
      return dtype === "F32" ? asBytes(all) : encodeFromFloat32(all, dtype as "F16" | "BF16");
    },
  };
}

/**
 * float32 tensors for the cpu kernels; a quantized linear layer keeps its checkpoint bytes (int8, packed int4
 * or fp4, fp8) beside float32 scales, in the layout its algorithm (per layer, for MIXED_PRECISION) stores.
 */
export function cpuSections(cfg: PretrainedConfig, file: SafetensorsFile, dims = decoderDims(cfg)): PlannedSection[] {
  const sq = sqVariantOf(cfg.quantization.quant_algo);
  if (sq) return smoothQuantSections(cfg, file, sq, dims);
  return [...decoderTensorShapes(cfg, dims)].flatMap(([name, shape]) => {
    const module = moduleOfWeight(name);
    const global = module?.replace(
      /^transformer\.layers\.(\d+)\./,
      (_, i) => `transformer.layers.${dims.layers[Number(i)]}.`,
    );
    const algo = global ? layerQuant(cfg.quantization, global)?.quant_algo : undefined;
    if (!algo) return [tensorSection(name, shape, "F32", [checkedSource(name, shape, file)], file)];
    const [out, inDim] = shape.slice(-2);
    if (algo === "W4A16_GPTQ") return gptqSections(cfg, file, name, out, inDim);
    if (isModelOptAlgo(algo)) return modeloptSections(algo, name, file);
    // Weight-only: [in, out] per matrix, MoE experts stacked in front ([E, in, out]).
    const lead = shape.slice(0, -2);
    const stored = [...lead, inDim, algo === "W8A16" ? out : out / 2];
    const scale = scaleName(name);
    if (!file.has(name) || file.info(name).dtype !== "I8") {
      throw new CheckpointError(`${file.path}: ${algo} expects "${name}" as I8 [${stored}]`);
    }
    return [
      tensorSection(name, stored, "I8", [checkedSource(name, stored, file)], file),
      tensorSection(scale, [...lead, out], "F32", [checkedSource(scale, [...lead, out], file)], file),
    ];
  });
}

/**
 * A ModelOpt-format layer: the weight's bytes as stored (fp8, int8, packed fp4, or packed int4 carried in the
 * model dtype, kept as U8), fp8 block scales as stored, every float companion as float32.
 */
function modeloptSections(algo: ModelOptAlgo, name: string, file: SafetensorsFile): PlannedSection[] {
  const present = (n: string) => {
    if (!file.has(n)) throw new CheckpointError(`${file.path}: ${algo} expects "${n}"`);
    return file.info(n);
  };
  const raw = (n: string, dtype: Dtype, shape: number[]): PlannedSection => ({
    spec: { name: n, dtype, shape },
    make: () => file.readBytes(n),
  });
  const w = present(name);
  const weight =
    w.dtype === "F8_E4M3" || w.dtype === "I8" || w.dtype === "U8"
      ? raw(name, w.dtype, w.shape)
      : raw(name, "U8", [w.shape[0], w.byteLength / w.shape[0]]); // int4 pairs in a model-dtype carrier
  return [
    weight,
    ...MODELOPT_COMPANIONS[algo].map((suffix) => {
      const n = companionName(name, suffix);
      const info = present(n);
      return info.dtype === "F8_E4M3" ? raw(n, info.dtype, info.shape) : tensorSection(n, info.shape, "F32", [n], file);
    }),
  ];
}

/**
 * W8A8_SQ_*_PLUGIN: [out, in] int8 weights and float32 scales as the checkpoint holds them (the norms' weights
 * come already divided by the smoothing factors, with their scale_to_int).
 */
function smoothQuantSections(
  cfg: PretrainedConfig,
  file: SafetensorsFile,
  v: SqVariant,
  dims: DecoderDims,
): PlannedSection[] {
  const f32 = (name: string, shape: number[]) =>
    tensorSection(name, shape, "F32", [checkedSource(name, shape, file)], file);
  return [...decoderTensorShapes(cfg, dims)].flatMap(([name, shape]) => {
    if (/layernorm\.weight$/.test(name) && name.startsWith("transformer.layers.")) {
      return [f32(name, shape), f32(name.replace(/\.weight$/, ".scale_to_int"), [1])];
    }
    if (!isWeightOnlyLayer(name)) return [f32(name, shape)];
    const [out, inDim] = shape;
    if (!file.has(name) || file.info(name).dtype !== "I8") {
      throw new CheckpointError(`${file.path}: ${cfg.quantization.quant_algo} expects "${name}" as I8 [${shape}]`);
    }
    const lin = name.replace(/\.weight$/, "");
    return [
      tensorSection(name, shape, "I8", [checkedSource(name, shape, file)], file),
      ...sqCompanions(lin, v, out, inDim).map((c) => f32(c.name, c.shape)),
    ];
  });
}

/** W4A16_GPTQ: the packed int4 bytes (whatever dtype carries them) and float32 group scales and zeros. */
function gptqSections(
  cfg: PretrainedConfig,
  file: SafetensorsFile,
  name: string,
  out: number,
  inDim: number,
): PlannedSection[] {
  const g = cfg.quantization.group_size;
  const groups = [inDim / g, out];
  if (!file.has(name) || file.info(name).byteLength !== (inDim * out) / 2) {
    throw new CheckpointError(
      `${file.path}: W4A16_GPTQ expects "${name}" to hold ${(inDim * out) / 2} bytes of int4 pairs`,
    );
  }
  const packed: PlannedSection = {
    spec: { name, dtype: "U8", shape: [inDim, out / 2] },
    make: () => file.readBytes(name),
  };
  return [
    packed,
    ...["weights_scaling_factor", "zero"].map((suffix) => {
      const n = companionName(name, suffix);
      return tensorSection(n, groups, "F32", [checkedSource(n, groups, file)], file);
    }),
  ];
}

export function sectionBytes(sections: readonly PlannedSection[]): number {
  return sections.reduce((n, s) => n + s.spec.shape.reduce((a, b) => a * b, 1) * dtypeByteSize(s.spec.dtype), 0);
}

export function bytesSection(name: string, data: Uint8Array): PlannedSection {
  return { spec: { name, dtype: "U8", shape: [data.byteLength] }, make: () => data };
}
