// Each op of a batch-1 bf16 decode step of Qwen2.5-0.5B's shape, timed alone on the GPU: the op over eight
// layers' worth of random weights (more than the L2 holds, as in a real step) captured into a CUDA graph,
// replayed, timed with events. Beside each: the bytes it must read and the time that takes at the copy
// bandwidth measured in the same run. Says where a decode step's time goes (kiln bench gives the whole step).
//
// node dist/bench/decode-ops.js [--context 128] [--rows 1] [--max_seq_len 2304] [--define KILN_GEMV_LOADS_AFTER_WAIT=1] [--out FILE.json]
// (--max_seq_len: the engine's, which sizes a captured step's attention grid as in kiln bench's engine; every op
// is captured as a decode step is, and "layer" times the five fused ops of a layer in their order.)
// (--rows R: a wide step of R sequences, each at the context given, as the nano-vllm workload's: past
// GEMV_MAX_ROWS rows the step takes cuBLAS and the unfused ops, which are then what is timed.)
// (KILN_GEMV_KSPLIT=1 … in the environment forces every GEMV's split; KILN_CUDA_PDL=0 launches without PDL.)

import fs from "node:fs";
import { parseArgs } from "node:util";
import type { AttentionShape, StepInput } from "../src/backends/backend.js";
import { CudaBackend, type CudaTensor } from "../src/backends/cuda/cuda-backend.js";
import { CudaDevice } from "../src/backends/cuda/driver.js";
import { engineDefines, kernelSource, parseDefines } from "../src/backends/cuda/engine-kernels.js";
import { compileKernels } from "../src/backends/cuda/nvrtc.js";
import { QWEN25_05B } from "./random-model.js";

const { values: args } = parseArgs({
  options: {
    context: { type: "string" },
    max_seq_len: { type: "string" },
    rows: { type: "string" },
    replays: { type: "string" },
    out: { type: "string" },
    define: { type: "string", multiple: true },
  },
});
const context = Number(args.context ?? 128);
const R = Number(args.rows ?? 1);
const s = QWEN25_05B;
const [H, I, V, D, heads, kvHeads] = [s.hidden, s.inter, s.vocab, s.hidden / s.heads, s.heads, s.kvHeads];
const QKV = (heads + 2 * kvHeads) * D;
const LAYERS = 8;
const REPLAYS = Number(args.replays ?? 50);

const device = CudaDevice.open();
// --define NAME=VALUE (repeatable) compiles the kernels with more macros, for A/B runs of kernel variants.
const extra = parseDefines(args.define ?? [], "--define");
const { cubin } = compileKernels(kernelSource(), "decoder.cu", device.target, {
  ...engineDefines("bfloat16", null, D),
  ...extra,
});
const module = device.loadModule(cubin);

/** Random bf16 values in [-0.05, 0.05) (the bit patterns of small floats), uploaded. */
function randomBf16(rows: number, cols: number): CudaTensor {
  const n = rows * cols;
  const bits = new Uint16Array(n);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  let seed = rows * 7919 + cols;
  for (let i = 0; i < n; i++) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    f[0] = (seed / 2 ** 32 - 0.5) * 0.1;
    bits[i] = u[0] >>> 16;
  }
  const p = device.alloc(n * 2);
  device.upload(p, bits);
  return { ptr: p, rows, cols, dtype: "BF16" };
}

const weights = new Map<string, CudaTensor>();
for (let l = 0; l < LAYERS; l++) {
  weights.set(`qkv${l}`, randomBf16(QKV, H));
  weights.set(`qkv_bias${l}`, randomBf16(1, QKV));
  weights.set(`dense${l}`, randomBf16(H, H));
  weights.set(`fc_gate${l}`, randomBf16(2 * I, H));
  weights.set(`proj${l}`, randomBf16(H, I));
  weights.set(`norm${l}`, randomBf16(1, H));
}
weights.set("lm_head", randomBf16(V, H));
const invFreq = new Float32Array(D / 2).map((_, i) => 1 / 1e6 ** ((2 * i) / D));
const tokensPerBlock = 64;
const blocksPerSeq = Math.ceil((context + 1) / tokensPerBlock);
const maxSeqLen = Math.max(Number(args.max_seq_len ?? 2304), blocksPerSeq * tokensPerBlock);
const be = new CudaBackend(
  device,
  module,
  weights,
  "BF16",
  {
    maxRows: Math.max(8, R),
    maxSeqs: Math.max(8, R),
    maxBlocksPerSeq: Math.ceil(maxSeqLen / tokensPerBlock),
    hidden: H,
    widestRow: 2 * I,
    vocab: V,
    logitRows: Math.max(8, R),
    maxSeqLen,
    numHeads: heads,
    headSize: D,
  },
  invFreq,
);
const shape: AttentionShape = { numHeads: heads, numKvHeads: kvHeads, headSize: D };
be.allocateKvCache({ ...shape, numLayers: LAYERS, numBlocks: R * blocksPerSeq, tokensPerBlock });
// Row i is sequence i, at position `context`, in blocks of its own.
const step: StepInput = {
  tokenIds: new Int32Array(R).fill(1),
  positions: new Int32Array(R).fill(context),
  slotMapping: Int32Array.from({ length: R }, (_, i) => i * blocksPerSeq * tokensPerBlock + context),
  seqs: Array.from({ length: R }, (_, r) => ({
    rowStart: r,
    numNew: 1,
    numCached: context,
    blockTable: Int32Array.from({ length: blocksPerSeq }, (_, i) => r * blocksPerSeq + i),
  })),
  logitRows: Int32Array.from({ length: R }, (_, i) => i),
};
be.beginStep(step);
const x = randomBf16(R, H);
const delta = randomBf16(R, H);
const act = randomBf16(R, I);
const qkvOut = randomBf16(R, QKV);
const fcGateOut = randomBf16(R, 2 * I);
const rope = { invFreq, rotaryDim: D };
const w = (name: string, l: number) => weights.get(`${name}${l}`)!;

/** µs per call of `op` (one call per layer copy, LAYERS copies in one graph, replayed). */
function time(op: (l: number) => void): number {
  // As the executor captures a decode step: launch shapes for every step the graph could replay.
  be.graphMode = true;
  const graph = device.capture(() => {
    for (let l = 0; l < LAYERS; l++) {
      be.packStep(step);
      be.beginLayer(l);
      op(l);
    }
  });
  be.graphMode = false;
  device.replay(graph);
  device.synchronize();
  const [a, b] = [device.createEvent(), device.createEvent()];
  device.record(a);
  for (let i = 0; i < REPLAYS; i++) device.replay(graph);
  device.record(b);
  const ms = device.elapsed(a, b);
  device.destroyGraph(graph);
  return (ms * 1000) / (REPLAYS * LAYERS);
}

// The copy bandwidth, read + write, over 1 GiB: the ceiling every op below is measured against.
const copyBytes = 1 << 30;
const [src, dst] = [device.alloc(copyBytes / 2), device.alloc(copyBytes / 2)];
device.copyAsync(dst, src, copyBytes / 2);
const c0 = device.createEvent();
const c1 = device.createEvent();
device.record(c0);
for (let i = 0; i < 10; i++) device.copyAsync(dst, src, copyBytes / 2);
device.record(c1);
const copyTBs = (10 * copyBytes) / (device.elapsed(c0, c1) / 1000) / 1e12;
device.free(src);
device.free(dst);

const norm = (l: number) => ({ weight: w("norm", l), eps: 1e-6 });
// Bytes each op must move: weights, plus the activations where a wide step makes them count.
const act2 = (cols: number) => (R > 1 ? R * cols * 2 : 0);
const kvBytes = R * 2 * context * kvHeads * D * 2;
const ops: [string, number, (l: number) => void][] =
  R <= 8
    ? [
        [
          "norm_qkv_rope (fused)",
          QKV * H * 2,
          (l) => be.normQkvRope(x, delta, norm(l), w("qkv", l), w("qkv_bias", l), l, step, rope, shape),
        ],
        ["qkv gemv (plain)", QKV * H * 2, (l) => be.linear(x, w("qkv", l), null)],
        [`attention (context ${context})`, kvBytes, (l) => be.attention(l, qkvOut, step, shape)],
        ["dense gemv", H * H * 2, (l) => be.linear(x, w("dense", l), null)],
        [
          "norm_gated_mlp (fused)",
          2 * I * H * 2,
          (l) => be.normGatedMlp(x, delta, norm(l), { fc: w("fc_gate", l), fcBias: null, gate: null, gateBias: null }),
        ],
        ["fc|gate gemv (plain)", 2 * I * H * 2, (l) => be.linear(x, w("fc_gate", l), null)],
        ["proj gemv", H * I * 2, (l) => be.linear(act, w("proj", l), null)],
        ["lm_head gemv (float32 logits)", V * H * 2, () => be.linear(x, weights.get("lm_head")!, null, true)],
        [
          "layer (the five fused ops)",
          (QKV * H + H * H + 3 * I * H) * 2 + kvBytes,
          (l) => {
            be.normQkvRope(x, delta, norm(l), w("qkv", l), w("qkv_bias", l), l, step, rope, shape);
            be.attention(l, qkvOut, step, shape);
            be.linear(x, w("dense", l), null);
            be.normGatedMlp(x, delta, norm(l), { fc: w("fc_gate", l), fcBias: null, gate: null, gateBias: null });
            be.linear(act, w("proj", l), null);
          },
        ],
      ]
    : [
        ["add_rmsnorm", act2(4 * H), (l) => be.addRmsNorm(x, delta, w("norm", l), 1e-6)],
        ["qkv gemm", QKV * H * 2 + act2(H + QKV), (l) => be.linear(x, w("qkv", l), null)],
        [
          "rope + bias + KV write",
          act2(2 * QKV),
          (l) => be.ropeAndCacheKv(l, qkvOut, step, rope, shape, w("qkv_bias", l)),
        ],
        [`attention (${R} rows, context ${context})`, kvBytes, (l) => be.attention(l, qkvOut, step, shape)],
        ["dense gemm", H * H * 2 + act2(2 * H), (l) => be.linear(x, w("dense", l), null)],
        ["fc|gate gemm", 2 * I * H * 2 + act2(H + 2 * I), (l) => be.linear(x, w("fc_gate", l), null)],
        ["silu_mul", act2(3 * I), () => be.siluMulHalves(fcGateOut)],
        ["proj gemm", H * I * 2 + act2(H + I), (l) => be.linear(act, w("proj", l), null)],
        [
          "lm_head gemm (float32 logits)",
          V * H * 2 + R * V * 4,
          () => be.linear(x, weights.get("lm_head")!, null, true),
        ],
      ];
const results: Record<string, unknown>[] = [];
for (const [name, bytes, op] of ops) {
  const us = time(op);
  const rooflineUs = (bytes / (copyTBs * 1e12)) * 1e6;
  results.push({ op: name, us, bytes, roofline_us: rooflineUs, of_roofline: rooflineUs / us });
  console.log(
    `${name.padEnd(32)} ${us.toFixed(2).padStart(8)} µs  roofline ${rooflineUs.toFixed(2).padStart(7)} µs  (${((100 * rooflineUs) / us).toFixed(0)}%)`,
  );
}
const report = {
  device: device.name,
  ...(process.env.KILN_COMMIT && { kiln_commit: process.env.KILN_COMMIT }),
  copy_tb_per_s: copyTBs,
  context,
  max_seq_len: maxSeqLen,
  rows: R,
  defines: extra,
  ops: results,
};
console.log(`copy bandwidth ${copyTBs.toFixed(2)} TB/s`);
if (args.out) fs.writeFileSync(args.out, `${JSON.stringify(report, null, 2)}\n`);
be.dispose();
