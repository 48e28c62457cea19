// Opening a cuda engine: the kernels (the cubin built for this GPU, or the PTX for a newer one), every weight
// section copied once to device memory, and the backend over them.

import type { EngineConfig } from "../../builder/build-engine.js";
import { EngineFile } from "../../builder/engine-file.js";
import { dtypeFromName } from "../../checkpoint/dtype.js";
import { EngineError } from "../../errors.js";
import { type DecoderDims, decoderDims } from "../../models/decoder.js";
import { ropeSpec } from "../../models/rope.js";
import { companionName, scaleName } from "../../quantization/mode.js";
import { CudaBackend, type CudaDtype, type CudaQuant, type CudaTensor } from "./cuda-backend.js";
import { CudaDevice } from "./driver.js";
import { decodeDescriptor, descriptorName, type QuantDescriptor } from "./weight-layout.js";

/** Sections that transform a quantized layer's input (see quantOf), shared between layers when equal. */
const INPUT_TRANSFORMS = [".prequant_scaling_factor", ".smoother"];

/** Which rank file a backend is opened for, and on which GPU. */
export interface CudaRankPlace {
  /** The rank's share of the decoder (its layers, heads, vocabulary rows). */
  dims: DecoderDims;
  /** Width of the logits rows the rank returns: every tp rank's vocabulary rows side by side. */
  logitsWidth: number;
  /** The GPU's ordinal. */
  gpu: number;
  /** Ranks of this host on that GPU, which share its free memory for their KV caches. */
  ranksOnGpu: number;
}

export function loadCudaBackend(
  enginePath: string,
  config: EngineConfig,
  place: CudaRankPlace = {
    dims: decoderDims(config.pretrained_config),
    logitsWidth: decoderDims(config.pretrained_config).vocabRows,
    gpu: 0,
    ranksOnGpu: 1,
  },
): CudaBackend {
  const device = CudaDevice.open(place.gpu);
  const file = EngineFile.open(enginePath, { backend: "cuda", target: null });
  try {
    const built = file.header.target;
    const [major, minor] = /^sm_(\d)(\d+)a?$/.exec(built)?.slice(1).map(Number) ?? [0, 0];
    const [dMajor, dMinor] = device.computeCapability;
    let image: Uint8Array;
    if (built === device.target) image = file.read("kernels.cubin");
    else if (dMajor * 10 + dMinor > major * 10 + minor) {
      const ptx = file.read("kernels.ptx");
      image = new Uint8Array(ptx.byteLength + 1); // the driver reads PTX as a NUL-terminated string
      image.set(ptx);
    } else {
      throw new EngineError(
        `${enginePath}: engine was built for ${built}; this GPU (${device.name}) is ${device.target}: rebuild it here`,
      );
    }
    const module = device.loadModule(image);
    const b = config.build_config;
    const m = config.pretrained_config;
    const weights = new Map<string, CudaTensor>();
    const dtype = dtypeFromName(m.dtype);
    const descriptors = new Map<string, QuantDescriptor>();
    const sectionDtype = new Map(file.header.sections.map((s) => [s.name, s.dtype]));
    const codeSections = new Set<string>();
    const sharedInputs = new Map<string, number>();
    for (const s of file.header.sections) {
      if (s.name.startsWith("kernels.")) continue;
      const bytes = file.read(s.name);
      if (s.name.endsWith(".quant")) {
        descriptors.set(s.name, decodeDescriptor(new Float32Array(bytes.slice().buffer)));
        continue;
      }
      const codes = s.dtype === "I8" || s.dtype === "U8" || s.dtype === "F8_E4M3";
      if (s.dtype !== "F32" && s.dtype !== "F16" && s.dtype !== "BF16" && !codes) {
        throw new EngineError(
          `${enginePath}: section "${s.name}" is ${s.dtype}; cuda engines hold F32, F16, BF16 and quantized codes (I8, U8, F8_E4M3)`,
        );
      }
      // A layer pair's input transforms are often one vector stored twice (AWQ's pre-quant scale of fc and
      // gate, which share an input): one buffer, so that the fused MLP sees one input and rounds it once.
      const key = INPUT_TRANSFORMS.some((t) => s.name.endsWith(t))
        ? `${s.dtype}:${Buffer.from(bytes).toString("base64")}`
        : null;
      let p = key ? sharedInputs.get(key) : undefined;
      if (p === undefined) {
        p = device.alloc(bytes.byteLength);
        device.upload(p, bytes);
        if (key) sharedInputs.set(key, p);
      }
      const [rows, cols] =
        s.shape.length === 1 ? [1, s.shape[0]] : [s.shape[0], s.shape.slice(1).reduce((x, y) => x * y, 1)];
      weights.set(s.name, { ptr: p, rows, cols, dtype: codes ? dtype : (s.dtype as CudaDtype) });
      if (codes) codeSections.add(s.name);
    }
    for (const [name, t] of weights) {
      if (!codeSections.has(name) || !name.endsWith(".weight")) continue;
      // Engines built before descriptors hold weight-only int8 (I8) or int4 (U8) codes.
      const legacy: QuantDescriptor = {
        kind: sectionDtype.get(name) === "I8" ? "int8" : "int4",
        rounding: null,
        inputScale: 1,
        weightScale: 1,
        alpha: 1,
      };
      const d = descriptors.get(descriptorName(name)) ?? legacy;
      t.quant = quantOf(name, d, weights, enginePath);
      if (d.kind === "int4" || d.kind === "fp4") t.cols *= 2; // two codes a byte
    }
    const kvAlgo = m.quantization.kv_cache_quant_algo;
    const kvQuant = !kvAlgo
      ? null
      : {
          kind: kvAlgo === "INT8" ? ("int8" as const) : ("fp8" as const),
          scales: Float32Array.from({ length: place.dims.layers.length }, (_, l) => {
            const name = `transformer.layers.${l}.attention.kv_cache_scaling_factor`;
            const v =
              sectionDtype.get(name) === "F32" ? new Float32Array(file.read(name).slice().buffer)[0] : Number.NaN;
            if (!(v > 0)) throw new EngineError(`${enginePath}: ${kvAlgo} KV cache needs a positive float32 "${name}"`);
            return v;
          }),
        };
    const maxSeqs = b.max_batch_size * b.max_beam_width;
    const qkv = (m.num_attention_heads + 2 * m.num_key_value_heads) * m.head_size;
    const backend = new CudaBackend(
      device,
      module,
      weights,
      dtype,
      {
        maxRows: Math.max(b.max_num_tokens, maxSeqs),
        maxSeqs,
        maxBlocksPerSeq: Math.ceil(b.max_seq_len / b.tokens_per_block),
        hidden: m.hidden_size,
        widestRow: Math.max(qkv, 2 * m.intermediate_size),
        // Float32 logits columns the last layer's arena holds at once: lm_head's rows, and for a split engine
        // also the whole rows ranks exchange (tp's gathered shares and their side-by-side copy; what a stage
        // without lm_head receives).
        vocab:
          (weights.get("lm_head.weight")?.rows ?? 0) +
          (place.logitsWidth > place.dims.vocabRows || !place.dims.lastStage ? 2 * place.logitsWidth : 0),
        logitRows: b.gather_context_logits ? Math.max(b.max_num_tokens, maxSeqs) : maxSeqs,
        maxSeqLen: b.max_seq_len,
        numHeads: m.num_attention_heads,
        headSize: m.head_size,
      },
      ropeSpec(m).invFreq,
      kvQuant,
    );
    backend.ranksOnGpu = place.ranksOnGpu;
    return backend;
  } finally {
    file.close();
  }
}

/** A quantized layer's scales and input handling, from its companion sections (weight-layout.ts). */
function quantOf(name: string, d: QuantDescriptor, weights: Map<string, CudaTensor>, where: string): CudaQuant {
  const ptrOf = (suffix: string) => weights.get(companionName(name, suffix))?.ptr ?? 0;
  const groupScales = weights.get(companionName(name, "weights_scaling_factor"));
  const grouped = d.kind === "int4" && groupScales !== undefined;
  const scales = grouped ? groupScales.ptr : (weights.get(scaleName(name))?.ptr ?? 0);
  const blocks = ptrOf("weights_block_scaling_factor");
  if ((d.kind === "int8" || (d.kind === "int4" && !grouped)) && d.rounding === null && scales === 0) {
    throw new EngineError(`${where}: weight-only "${name}" has no "${scaleName(name)}"`);
  }
  if (d.kind === "fp4" && blocks === 0) {
    throw new EngineError(`${where}: NVFP4 "${name}" has no "${companionName(name, "weights_block_scaling_factor")}"`);
  }
  const prequant = ptrOf("prequant_scaling_factor");
  return {
    kind: d.kind,
    scales,
    zeros: ptrOf("zero"),
    groups: grouped ? groupScales.cols : 0,
    blocks,
    weightScale: d.weightScale,
    alpha: d.alpha,
    input:
      d.rounding === null ? null : { rounding: d.rounding, prequant, smoother: ptrOf("smoother"), scale: d.inputScale },
  };
}
