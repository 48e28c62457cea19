// A cpu engine file's sections as the cpu backend's tensors: float32 weights as they are, and each quantized
// linear layer in the form the cpu kernels run: weight-only int8/int4 and GPTQ dequantized in the kernel,
// SmoothQuant's integer GEMM, and the ModelOpt formats (FP8, int8_sq, AWQ, NVFP4) dequantized once, exactly,
// with the rounding their formats apply to the layer's input kept for run time.

import type { EngineFile } from "../../builder/engine-file.js";
import type { PretrainedConfig } from "../../checkpoint/pretrained-config.js";
import { EngineError } from "../../errors.js";
import type { DecoderDims } from "../../models/decoder.js";
import { layerQuant, moduleOfWeight } from "../../quantization/layer-plan.js";
import { companionName, scaleName } from "../../quantization/mode.js";
import { dequantizeModelOpt, isModelOptAlgo, type StoredTensor } from "../../quantization/modelopt-formats.js";
import { type SqVariant, sqScaleToIntName, sqVariantOf } from "../../quantization/smoothquant.js";
import { dequantizeWeightOnly } from "../../quantization/weight-only.js";
import { type CpuTensor, cpuTensor } from "./cpu-backend.js";
import type { KvCacheQuant } from "./kv-store.js";

export interface CpuWeights {
  weights: Map<string, CpuTensor>;
  kvCache: KvCacheQuant | null;
}

/** A rank's local tensor name with its layer renumbered to the model's (quant_cfg.json names global layers). */
function globalName(name: string, dims: DecoderDims): string {
  return name.replace(/^transformer\.layers\.(\d+)\./, (_, i) => `transformer.layers.${dims.layers[Number(i)]}.`);
}

export function readCpuWeights(file: EngineFile, cfg: PretrainedConfig, dims: DecoderDims): CpuWeights {
  const raw = new Map<string, StoredTensor>();
  for (const s of file.header.sections) raw.set(s.name, { dtype: s.dtype, shape: s.shape, bytes: file.read(s.name) });
  const weights = new Map<string, CpuTensor>();
  for (const [name, t] of raw) {
    if (t.dtype !== "F32") continue;
    const data = new Float32Array(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength / 4);
    const [rows, cols] =
      t.shape.length === 1 ? [1, t.shape[0]] : [t.shape[0], t.shape.slice(1).reduce((a, b) => a * b, 1)];
    weights.set(name, cpuTensor(rows, cols, data));
  }
  const q = cfg.quantization;
  const sq = sqVariantOf(q.quant_algo);
  for (const [name, t] of raw) {
    const module = moduleOfWeight(name);
    if (t.dtype === "F32" || !module) continue;
    const algo = layerQuant(q, globalName(module, dims))?.quant_algo;
    const bytes = t.bytes;
    const int8 = new Int8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (sq) weights.set(name, smoothQuantWeight(weights, name, int8, t.shape, sq, file.path));
    else if (algo && isModelOptAlgo(algo)) {
      const d = dequantizeModelOpt(algo, name, (suffix) => raw.get(companionName(name, suffix)) ?? null);
      weights.set(name, {
        data: d.weight,
        rows: d.out,
        cols: d.inDim,
        inputQuant: { prequant: d.prequant, quantizeInput: d.quantizeInput, alpha: d.alpha },
      });
    } else if (algo === "W4A16_GPTQ") {
      const scales = weights.get(companionName(name, "weights_scaling_factor"));
      const zeros = weights.get(companionName(name, "zero"));
      if (!scales || !zeros) throw new EngineError(`${file.path}: GPTQ "${name}" lacks its scales or zeros`);
      weights.set(name, {
        data: new Float32Array(0),
        rows: scales.cols,
        cols: t.shape[0],
        groupQuant: { q: int8, scales: scales.data, zeros: zeros.data, groupSize: q.group_size },
      });
    } else if ((algo === "W8A16" || algo === "W4A16") && t.shape.length === 3) {
      weights.set(
        name,
        expertsDequantized(t.shape, int8, weights.get(scaleName(name))?.data, algo === "W8A16" ? 8 : 4, name),
      );
    } else if (algo === "W8A16" || algo === "W4A16") {
      // [in, out] int8 (or [in, out/2] int4 pairs) with per-output-channel scales.
      const scales = weights.get(scaleName(name));
      if (!scales) throw new EngineError(`${file.path}: quantized "${name}" has no "${scaleName(name)}"`);
      weights.set(name, {
        data: new Float32Array(0),
        rows: scales.cols,
        cols: t.shape[0],
        quant: { bits: algo === "W8A16" ? 8 : 4, q: int8, scales: scales.data },
      });
    } else {
      throw new EngineError(
        `${file.path}: section "${name}" is ${t.dtype}, but ${q.quant_algo ?? "no quantization"} covers it`,
      );
    }
  }
  return { weights, kvCache: kvCacheQuant(weights, cfg, dims, file.path) };
}

function kvCacheQuant(weights: Map<string, CpuTensor>, cfg: PretrainedConfig, dims: DecoderDims, where: string) {
  const algo = cfg.quantization.kv_cache_quant_algo;
  if (algo !== "INT8" && algo !== "FP8") return null;
  const scales = Float32Array.from(dims.layers, (_, l) => {
    const name = `transformer.layers.${l}.attention.kv_cache_scaling_factor`;
    const s = weights.get(name);
    if (!s || !(s.data[0] > 0)) throw new EngineError(`${where}: ${algo} KV cache needs a positive "${name}"`);
    return s.data[0];
  });
  return { kind: algo === "INT8" ? ("int8" as const) : ("fp8" as const), scales };
}

/** A SmoothQuant linear from its engine sections: where its activation scale lives depends on the layer. */
function smoothQuantWeight(
  weights: Map<string, CpuTensor>,
  name: string,
  q: Int8Array,
  shape: number[],
  v: SqVariant,
  where: string,
): CpuTensor {
  const lin = name.replace(/\.weight$/, "");
  const get = (n: string) => {
    const t = weights.get(n);
    if (!t) throw new EngineError(`${where}: SmoothQuant "${name}" has no "${n}"`);
    return t.data;
  };
  const [layer, kind] = /^(transformer\.layers\.\d+)\.(.+)$/.exec(lin)!.slice(1);
  const row = kind === "attention.dense" || kind === "mlp.proj";
  const scaleToInt = sqScaleToIntName(layer, kind);
  if (!scaleToInt) throw new EngineError(`${where}: "${name}" is not a layer SmoothQuant covers`);
  return {
    data: new Float32Array(0),
    rows: shape[0],
    cols: shape[1],
    smoothQuant: {
      q,
      perChannelScale: get(`${lin}.per_channel_scale`),
      staticScales: v.perToken ? null : { scaleToInt: get(scaleToInt)[0], actScale: get(`${lin}.act_scale`)[0] },
      smoother: row ? get(`${lin}.smoother`) : null,
    },
  };
}

/** Weight-only MoE experts [E, in, out] with scales [E, out], dequantized once to float32 [E, out, in]. */
function expertsDequantized(
  shape: number[],
  q: Int8Array,
  scales: Float32Array | undefined,
  bits: 4 | 8,
  name: string,
): CpuTensor {
  if (!scales) throw new EngineError(`quantized experts "${name}" have no "${scaleName(name)}"`);
  const [experts, inDim] = shape;
  const out = scales.length / experts;
  const per = (inDim * out * bits) / 8;
  const data = new Float32Array(experts * out * inDim);
  for (let e = 0; e < experts; e++) {
    const w = dequantizeWeightOnly(
      { qweight: q.subarray(e * per, (e + 1) * per), scales: scales.subarray(e * out, (e + 1) * out), bits },
      out,
      inDim,
    );
    data.set(w, e * out * inDim);
  }
  return cpuTensor(experts, out * inDim, data);
}
