// Opening a cuda engine: the kernels (the cubin built for this GPU, or the PTX for a newer one), every weight
// section copied once to device memory, and the backend over them.

import type { EngineConfig } from "../../builder/build-engine.js";
import { EngineFile } from "../../builder/engine-file.js";
import { dtypeFromName } from "../../checkpoint/dtype.js";
import { EngineError } from "../../errors.js";
import { ropeSpec } from "../../models/rope.js";
import { companionName, scaleName } from "../../quantization/mode.js";
import { CudaBackend, type CudaDtype, type CudaTensor } from "./cuda-backend.js";
import { CudaDevice } from "./driver.js";

export function loadCudaBackend(enginePath: string, config: EngineConfig): CudaBackend {
  const device = CudaDevice.open();
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
    for (const s of file.header.sections) {
      if (s.name.startsWith("kernels.")) continue;
      const weightOnly = s.dtype === "I8" || s.dtype === "U8";
      if (s.dtype !== "F32" && s.dtype !== "F16" && s.dtype !== "BF16" && !weightOnly) {
        throw new EngineError(
          `${enginePath}: section "${s.name}" is ${s.dtype}; cuda engines hold F32, F16, BF16 (and I8/U8 weight-only weights)`,
        );
      }
      const bytes = file.read(s.name);
      const p = device.alloc(bytes.byteLength);
      device.upload(p, bytes);
      const [rows, cols] =
        s.shape.length === 1 ? [1, s.shape[0]] : [s.shape[0], s.shape.slice(1).reduce((x, y) => x * y, 1)];
      if (weightOnly) {
        // [out, in] int8, or [out, in/2] int4 pairs (backends/cuda/weight-layout.ts); scales attached below.
        const bits: 4 | 8 = s.dtype === "I8" ? 8 : 4;
        const wo = { bits, scales: 0, zeros: 0, groups: 0 };
        weights.set(s.name, { ptr: p, rows, cols: bits === 8 ? cols : 2 * cols, dtype, wo });
      } else weights.set(s.name, { ptr: p, rows, cols, dtype: s.dtype as CudaDtype });
    }
    for (const [name, t] of weights) {
      if (!t.wo) continue;
      // Group-wise (GPTQ): scales and zeros [out, groups]; else per-channel scales [out].
      const groupScales = weights.get(companionName(name, "weights_scaling_factor"));
      const zeros = weights.get(companionName(name, "zero"));
      if (groupScales && zeros) {
        Object.assign(t.wo, { scales: groupScales.ptr, zeros: zeros.ptr, groups: groupScales.cols });
        continue;
      }
      const scales = weights.get(scaleName(name));
      if (!scales) throw new EngineError(`${enginePath}: weight-only "${name}" has no "${scaleName(name)}"`);
      t.wo.scales = scales.ptr;
    }
    const maxSeqs = b.max_batch_size * b.max_beam_width;
    const qkv = (m.num_attention_heads + 2 * m.num_key_value_heads) * m.head_size;
    return new CudaBackend(
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
        vocab: weights.get("lm_head.weight")?.rows ?? m.vocab_size,
        logitRows: b.gather_context_logits ? Math.max(b.max_num_tokens, maxSeqs) : maxSeqs,
        maxSeqLen: b.max_seq_len,
        numHeads: m.num_attention_heads,
        headSize: m.head_size,
      },
      ropeSpec(m).invFreq,
    );
  } finally {
    file.close();
  }
}
