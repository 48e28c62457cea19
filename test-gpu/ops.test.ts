// Op parity in the spirit of ggml's test-backend-ops: every cuda op, in float32, float16 and bfloat16,
// against the cpu backend (the reference) on the same inputs, rounded to the dtype first. GPU machine only.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { StepInput } from "../src/backends/backend.js";
import { CpuBackend, type CpuTensor, cpuTensor } from "../src/backends/cpu/cpu-backend.js";
import { CudaBackend, type CudaDtype, type CudaQuant, type CudaTensor } from "../src/backends/cuda/cuda-backend.js";
import { CudaDevice } from "../src/backends/cuda/driver.js";
import { kernelSource } from "../src/backends/cuda/engine-kernels.js";
import { padDecodeStep } from "../src/backends/cuda/executor.js";
import { compileKernels } from "../src/backends/cuda/nvrtc.js";
import { cudaWeightOnlyLayout } from "../src/backends/cuda/weight-layout.js";
import { decodeToFloat32, encodeFromFloat32 } from "../src/checkpoint/dtype.js";
import { decodeE2M1 } from "../src/quantization/fp4.js";
import { decodeE4M3, encodeE4M3 } from "../src/quantization/fp8.js";
import { packGptq, quantizeGroupsRtn } from "../src/quantization/gptq.js";
import { quantizeWeightOnly } from "../src/quantization/weight-only.js";

const device = CudaDevice.open();
const DTYPES: [CudaDtype, number, number][] = [
  ["F32", 0, 1e-4],
  ["F16", 1, 1e-2],
  ["BF16", 2, 3e-2],
];

/** A quantized layer with no scales, zeros or block scales and its input used as it is; cases fill in the rest. */
const WEIGHT_ONLY: CudaQuant = {
  kind: "int8",
  scales: 0,
  zeros: 0,
  groups: 0,
  blocks: 0,
  weightScale: 1,
  alpha: 1,
  input: null,
};

let seed = 12345;
function rand(n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    out[i] = ((seed / 2 ** 31) * 2 - 1) * scale;
  }
  return out;
}

/** ‖a − b‖ / ‖b‖ */
function relErr(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

for (const [dtype, kilnDtype, tol] of DTYPES) {
  describe(`cuda ops vs cpu: ${dtype}`, () => {
    const { cubin } = compileKernels(kernelSource(), "decoder.cu", device.target, { KILN_DTYPE: kilnDtype });
    const module = device.loadModule(cubin);
    const round = (x: Float32Array) => (dtype === "F32" ? x : decodeToFloat32(encodeFromFloat32(x, dtype), dtype));
    const upload = (data: Float32Array, rows: number, cols: number): [CudaTensor, CpuTensor] => {
      const r = round(data);
      const bytes = dtype === "F32" ? new Uint8Array(r.buffer) : encodeFromFloat32(r, dtype);
      const p = device.alloc(bytes.byteLength);
      device.upload(p, bytes);
      return [{ ptr: p, rows, cols, dtype }, cpuTensor(rows, cols, r)];
    };
    const download = (t: CudaTensor): Float32Array => {
      device.synchronize();
      const bytes = new Uint8Array(t.rows * t.cols * (t.dtype === "F32" ? 4 : 2));
      device.download(bytes, t.ptr);
      return decodeToFloat32(bytes, t.dtype);
    };
    /**
     * A step's random qkv rows (`width` wide) uploaded, and on both backends the step begun and its keys and
     * values roped into layer 0's cache: the qkv tensors, for attention after it.
     */
    const cacheStepKeys = (
      backends: [CudaBackend, CpuBackend],
      step: StepInput,
      width: number,
      shape2: { numHeads: number; numKvHeads: number; headSize: number },
      invFreq2: Float32Array,
    ): [CudaTensor, CpuTensor] => {
      const rows = step.tokenIds.length;
      const [qc, qcpu] = upload(rand(rows * width), rows, width);
      for (const [be, q] of [
        [backends[0], qc],
        [backends[1], qcpu],
      ] as const) {
        // biome-ignore lint/suspicious/noExplicitAny: the same calls on both backends
        const b = be as any;
        b.beginStep(step);
        b.ropeAndCacheKv(0, q, step, { invFreq: invFreq2, rotaryDim: shape2.headSize }, shape2, null);
      }
      return [qc, qcpu];
    };
    /** Per-channel int8 or int4 of w [out, in], laid out for the GEMV, and the cpu backend's tensor of the same codes. */
    const uploadWeightOnly = (w: Float32Array, out: number, inDim: number, bits: 8 | 4): [CudaTensor, CpuTensor] => {
      const q = quantizeWeightOnly(w, out, inDim, bits);
      const bytes = cudaWeightOnlyLayout(q.qweight, out, inDim, bits);
      const wp = device.alloc(bytes.byteLength);
      device.upload(wp, bytes);
      const sp = device.alloc(out * 4);
      device.upload(sp, new Uint8Array(q.scales.buffer));
      const quant: CudaQuant = { ...WEIGHT_ONLY, kind: bits === 8 ? "int8" : "int4", scales: sp };
      return [
        { ptr: wp, rows: out, cols: inDim, dtype, quant },
        { data: new Float32Array(0), rows: out, cols: inDim, quant: { bits, q: q.qweight, scales: q.scales } },
      ];
    };
    const H = 96;
    const heads = 6;
    const kv = 2;
    const D = 16;
    const inter = 80;
    const V = 300;
    const weights = new Map<string, [CudaTensor, CpuTensor]>([
      ["emb", upload(rand(V * H), V, H)],
      [
        "norm",
        upload(
          rand(H, 0.5).map((x) => 1 + x),
          1,
          H,
        ),
      ],
      ["qkv", upload(rand((heads + 2 * kv) * D * H, 0.2), (heads + 2 * kv) * D, H)],
      ["qkv_bias", upload(rand((heads + 2 * kv) * D, 0.3), 1, (heads + 2 * kv) * D)],
      ["fc_gate", upload(rand(2 * inter * H, 0.2), 2 * inter, H)],
      ["fc_gate_bias", upload(rand(2 * inter, 0.3), 1, 2 * inter)],
    ]);
    const invFreq = new Float32Array(D / 2).map((_, i) => 1 / 10000 ** ((2 * i) / D));
    const cudaLimits = {
      maxRows: 64,
      maxSeqs: 8,
      maxBlocksPerSeq: 8,
      hidden: H,
      widestRow: 2 * inter,
      vocab: V,
      logitRows: 64,
      maxSeqLen: 32,
      numHeads: heads,
      headSize: D,
    };
    const cuda = new CudaBackend(
      device,
      module,
      new Map([...weights].map(([k, v]) => [k, v[0]])),
      dtype,
      cudaLimits,
      invFreq,
    );
    const cpu = new CpuBackend(new Map([...weights].map(([k, v]) => [k, v[1]])));
    const spec = { numLayers: 1, numBlocks: 16, tokensPerBlock: 4, numHeads: heads, numKvHeads: kv, headSize: D };
    cuda.allocateKvCache(spec);
    cpu.allocateKvCache(spec);
    const shape = { numHeads: heads, numKvHeads: kv, headSize: D };
    const rope = { invFreq, rotaryDim: D };

    // Two sequences: one prefilling 7 tokens, one with 5 cached tokens adding 3; blocks scattered.
    const prefill: StepInput = {
      tokenIds: Int32Array.from([3, 17, 250, 9, 9, 42, 1, 5, 6, 7, 8, 11]),
      positions: Int32Array.from([0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4]),
      slotMapping: Int32Array.from([20, 21, 22, 23, 8, 9, 10, 40, 41, 42, 43, 12]),
      seqs: [
        { rowStart: 0, numNew: 7, numCached: 0, blockTable: Int32Array.from([5, 2]) },
        { rowStart: 7, numNew: 5, numCached: 0, blockTable: Int32Array.from([10, 3]) },
      ],
      logitRows: Int32Array.from([6, 11]),
    };
    const decode: StepInput = {
      tokenIds: Int32Array.from([77, 78, 79, 80]),
      positions: Int32Array.from([7, 5, 6, 7]),
      slotMapping: Int32Array.from([11, 13, 14, 15]),
      seqs: [
        { rowStart: 0, numNew: 1, numCached: 7, blockTable: Int32Array.from([5, 2]) },
        { rowStart: 1, numNew: 3, numCached: 5, blockTable: Int32Array.from([10, 3]) },
      ],
      logitRows: Int32Array.from([0, 3]),
    };

    test("context attention over several row and key tiles (prompt chunks beside decode rows, GQA, heads of 16, 64 and 128), then decode rows on tensor cores, equals the cpu", () => {
      // Tiles are 64 rows and 64 keys: a 130-token prompt spans three of each; a second sequence adds an
      // 80-token chunk after 70 cached ones, beside a decode row; blocks of 16 tokens, scattered.
      for (const [D2, heads2, kv2] of [
        [16, 4, 2],
        [64, 4, 2],
        [128, 2, 1],
      ]) {
        const shape2 = { numHeads: heads2, numKvHeads: kv2, headSize: D2 };
        const tpb = 16;
        const spec2 = { numLayers: 1, numBlocks: 40, tokensPerBlock: tpb, ...shape2 };
        const invFreq2 = new Float32Array(D2 / 2).map((_, i) => 1 / 10000 ** ((2 * i) / D2));
        const limits = {
          ...cudaLimits,
          maxRows: 256,
          maxBlocksPerSeq: 12,
          maxSeqLen: 192,
          numHeads: heads2,
          headSize: D2,
        };
        const cuda2 = new CudaBackend(device, module, new Map(), dtype, limits, invFreq2);
        // The decode step below takes attention_decode_tc (where it takes the head size), however few its rows.
        cuda2.decodeTensorCores = "always";
        const cpu2 = new CpuBackend(new Map());
        cuda2.allocateKvCache(spec2);
        cpu2.allocateKvCache(spec2);
        const tables = [
          Int32Array.from([31, 2, 17, 5, 8, 22, 30, 1, 9]),
          Int32Array.from([3, 11, 25, 7, 19, 0, 12, 33, 4, 14]),
          Int32Array.from([6, 27]),
        ];
        const slotOf = (table: Int32Array, p: number) => table[Math.floor(p / tpb)] * tpb + (p % tpb);
        const stepOf = (parts: [number, number, number][]): StepInput => {
          const positions: number[] = [];
          const slots: number[] = [];
          const seqs = parts.map(([seq, cached, n]) => {
            const rowStart = positions.length;
            for (let p = cached; p < cached + n; p++) {
              positions.push(p);
              slots.push(slotOf(tables[seq], p));
            }
            return { rowStart, numNew: n, numCached: cached, blockTable: tables[seq] };
          });
          return {
            tokenIds: new Int32Array(positions.length),
            positions: Int32Array.from(positions),
            slotMapping: Int32Array.from(slots),
            seqs,
            logitRows: Int32Array.from([positions.length - 1]),
          };
        };
        const steps = [
          stepOf([
            [1, 0, 70],
            [2, 0, 20],
          ]),
          stepOf([
            [0, 0, 130],
            [1, 70, 80],
            [2, 20, 1],
          ]),
          stepOf([
            [0, 130, 1],
            [1, 150, 1],
            [2, 21, 1],
          ]),
        ];
        const width = (heads2 + 2 * kv2) * D2;
        for (const [i, step] of steps.entries()) {
          const [qc, qcpu] = cacheStepKeys([cuda2, cpu2], step, width, shape2, invFreq2);
          const got = download(cuda2.attention(0, qc, step, shape2));
          const want = cpu2.attention(0, qcpu, step, shape2).data;
          const e = relErr(got, want);
          assert.ok(e < tol, `head ${D2}, step ${i}: relative error ${e.toExponential(2)} ≥ ${tol}`);
        }
        // Not disposed: that would unload the module the other tests share.
      }
    });

    test("decode attention split over the sequence (a graph's grid: chunks past every row's context), padding rows zero, equals the cpu", () => {
      // Contexts of one chunk (written by its block alone), of exactly one, of two and of three chunks of 256
      // keys, under a grid of max_seq_len's four; blocks of 16 tokens, each sequence's own; two padding rows.
      const shape2 = { numHeads: 4, numKvHeads: 2, headSize: 64 };
      const tpb = 16;
      const lengths = [100, 256, 257, 700];
      const perSeq = 48;
      const spec2 = { numLayers: 1, numBlocks: lengths.length * perSeq, tokensPerBlock: tpb, ...shape2 };
      const limits = {
        ...cudaLimits,
        maxRows: 1024,
        maxSeqs: 8,
        maxBlocksPerSeq: perSeq,
        maxSeqLen: 1024,
        numHeads: 4,
        headSize: 64,
      };
      const invFreq2 = new Float32Array(32).map((_, i) => 1 / 10000 ** ((2 * i) / 64));
      const cuda2 = new CudaBackend(device, module, new Map(), dtype, limits, invFreq2);
      cuda2.decodeTensorCores = "off";
      const cpu2 = new CpuBackend(new Map());
      cuda2.allocateKvCache(spec2);
      cpu2.allocateKvCache(spec2);
      // Sequence s owns blocks [s·perSeq, (s+1)·perSeq), in reverse order to scatter them.
      const tables = lengths.map((_, s) => Int32Array.from({ length: perSeq }, (_, i) => (s + 1) * perSeq - 1 - i));
      const slotOf = (s: number, p: number) => tables[s][Math.floor(p / tpb)] * tpb + (p % tpb);
      const width = (4 + 2 * 2) * 64;
      const cacheKeys = (step: StepInput) => cacheStepKeys([cuda2, cpu2], step, width, shape2, invFreq2);
      for (const [s, n] of lengths.entries()) {
        cacheKeys({
          tokenIds: new Int32Array(n),
          positions: Int32Array.from({ length: n }, (_, p) => p),
          slotMapping: Int32Array.from({ length: n }, (_, p) => slotOf(s, p)),
          seqs: [{ rowStart: 0, numNew: n, numCached: 0, blockTable: tables[s] }],
          logitRows: Int32Array.from([n - 1]),
        });
      }
      const decode2 = padDecodeStep(
        {
          tokenIds: new Int32Array(lengths.length),
          positions: Int32Array.from(lengths),
          slotMapping: Int32Array.from(lengths, (n, s) => slotOf(s, n)),
          seqs: lengths.map((n, s) => ({ rowStart: s, numNew: 1, numCached: n, blockTable: tables[s] })),
          logitRows: Int32Array.from(lengths, (_, s) => s),
        },
        lengths.length + 2,
      );
      const [qc, qcpu] = cacheKeys(decode2);
      cuda2.graphMode = true; // the grid a captured decode step has: chunks for max_seq_len
      let got: Float32Array;
      try {
        got = download(cuda2.attention(0, qc, decode2, shape2));
      } finally {
        cuda2.graphMode = false;
      }
      const want = cpu2.attention(0, qcpu, decode2, shape2).data;
      const cols = 4 * 64;
      for (const [s, n] of lengths.entries()) {
        const e = relErr(got.subarray(s * cols, (s + 1) * cols), want.subarray(s * cols, (s + 1) * cols));
        assert.ok(e < tol, `context ${n + 1}: relative error ${e.toExponential(2)} ≥ ${tol}`);
      }
      assert.ok(
        got.subarray(lengths.length * cols).every((x) => x === 0),
        "padding rows' attention is zero",
      );
    });

    test("linear: 1–8 rows take the GEMV kernel, more rows cuBLAS; both equal the cpu, model-dtype and float32 out", () => {
      const [inDim, out] = [H, V];
      const [wc, wcpu] = weights.get("emb")!;
      for (const rows of [1, 2, 3, 5, 8, 9, 17]) {
        const [xc, xcpu] = upload(rand(rows * inDim), rows, inDim);
        for (const f32 of [false, true]) {
          cuda.beginStep(decode);
          const got = download(cuda.linear(xc, wc, null, f32));
          const want = cpu.linear(xcpu, wcpu, null, f32).data;
          assert.equal(got.length, rows * out);
          const e = relErr(got, want);
          assert.ok(e < tol, `${rows} rows, ${f32 ? "float32" : dtype} out: relative error ${e.toExponential(2)}`);
        }
      }
    });

    test("weight-only int8 and int4 linear: GEMV (≤ 8 rows) and dequantize + cuBLAS equal the cpu kernel", () => {
      const [inDim, out] = [H, V];
      for (const bits of [8, 4] as const) {
        const [wc, wcpu] = uploadWeightOnly(rand(out * inDim, 0.2), out, inDim, bits);
        for (const rows of [1, 3, 8, 9, 17]) {
          const [xc, xcpu] = upload(rand(rows * inDim), rows, inDim);
          for (const f32 of [false, true]) {
            cuda.beginStep(decode);
            const got = download(cuda.linear(xc, wc, null, f32));
            const want = cpu.linear(xcpu, wcpu, null, f32).data;
            const e = relErr(got, want);
            assert.ok(
              e < tol,
              `int${bits}, ${rows} rows, ${f32 ? "float32" : dtype} out: relative error ${e.toExponential(2)}`,
            );
          }
        }
      }
    });

    test("GEMV over long rows (1 and 3 rows), split across 2, 4 and 8 warps an output (plain, int8 and int4 codes), equals the cpu", () => {
      const out = 38; // the last block holds warps past the last output
      for (const [inDim, rows] of [
        [1040, 3],
        [4128, 1],
        [8224, 3],
        [8224, 1],
      ]) {
        const [xc, xcpu] = upload(rand(rows * inDim), rows, inDim);
        const [wc, wcpu] = upload(rand(out * inDim, 0.2), out, inDim);
        cuda.beginStep(decode);
        let e = relErr(download(cuda.linear(xc, wc, null, true)), cpu.linear(xcpu, wcpu, null, true).data);
        assert.ok(e < tol, `plain, in ${inDim}, ${rows} rows: relative error ${e.toExponential(2)}`);
        for (const bits of [8, 4] as const) {
          if (inDim % 32 !== 0) continue;
          const [wq, wqcpu] = uploadWeightOnly(rand(out * inDim, 0.2), out, inDim, bits);
          cuda.beginStep(decode);
          const got = download(cuda.linear(xc, wq, null, true));
          const want = cpu.linear(xcpu, wqcpu, null, true).data;
          e = relErr(got, want);
          assert.ok(e < tol, `int${bits}, in ${inDim}, ${rows} rows: relative error ${e.toExponential(2)}`);
        }
      }
    });

    test("group-wise int4 (GPTQ scales and zeros): GEMV and dequantize + cuBLAS equal the cpu kernel", () => {
      const [inDim, out, G] = [H, V, 32];
      const t = packGptq(quantizeGroupsRtn(rand(out * inDim, 0.2), out, inDim, 4, G), out, inDim);
      const groups = inDim / G;
      const transpose = (a: Float32Array) =>
        Float32Array.from({ length: out * groups }, (_, k) => a[(k % groups) * out + Math.floor(k / groups)]);
      const put = (bytes: Uint8Array) => {
        const p = device.alloc(bytes.byteLength);
        device.upload(p, bytes);
        return p;
      };
      const q = new Int8Array(t.packed.buffer);
      const wc: CudaTensor = {
        ptr: put(cudaWeightOnlyLayout(q, out, inDim, 4)),
        rows: out,
        cols: inDim,
        dtype,
        quant: {
          ...WEIGHT_ONLY,
          kind: "int4",
          scales: put(new Uint8Array(transpose(t.scales).buffer)),
          zeros: put(new Uint8Array(transpose(t.zero).buffer)),
          groups,
        },
      };
      const wcpu: CpuTensor = {
        data: new Float32Array(0),
        rows: out,
        cols: inDim,
        groupQuant: { q, scales: t.scales, zeros: t.zero, groupSize: G },
      };
      for (const rows of [1, 5, 8, 9, 17]) {
        const [xc, xcpu] = upload(rand(rows * inDim), rows, inDim);
        cuda.beginStep(decode);
        const got = download(cuda.linear(xc, wc, null, true));
        const e = relErr(got, cpu.linear(xcpu, wcpu, null, true).data);
        assert.ok(e < tol, `${rows} rows: relative error ${e.toExponential(2)}`);
      }
    });

    test("every code kind (int8, int4 by group, E4M3, E2M1 with block scales): GEMV and dequantize + cuBLAS equal the decoded matmul", () => {
      const [inDim, out, G] = [H, 40, 32];
      let s = 7;
      const next = () => {
        s = (s * 1103515245 + 12345) % 2 ** 31;
        return s;
      };
      const put = (bytes: Uint8Array) => {
        const p = device.alloc(bytes.byteLength);
        device.upload(p, bytes);
        return p;
      };
      const scales = Float32Array.from({ length: out }, () => 0.005 + (next() % 1000) / 1e5);
      const groupScales = Float32Array.from({ length: out * (inDim / G) }, () => 0.01 + (next() % 1000) / 1e5);
      // E4M3 codes away from NaN (0x7f, 0xff); block scales between 2^-3 and 2^1.
      const fp8 = Uint8Array.from({ length: out * inDim }, () => (next() % 0x7f) | (next() & 0x80));
      const blocks = Uint8Array.from({ length: (out * inDim) / 16 }, () => 0x20 + (next() % 0x20));
      const nibbles = Uint8Array.from({ length: (out * inDim) / 2 }, () => next() & 0xff);
      const int8 = Uint8Array.from({ length: out * inDim }, () => (next() % 255) - 127);
      const cases: [string, Uint8Array, Partial<CudaQuant>, (o: number, i: number) => number][] = [
        [
          "int8",
          int8,
          { kind: "int8", scales: put(new Uint8Array(scales.buffer)) },
          (o, i) => ((int8[o * inDim + i] << 24) >> 24) * scales[o],
        ],
        [
          "int4 by group",
          nibbles,
          { kind: "int4", scales: put(new Uint8Array(groupScales.buffer)), groups: inDim / G },
          (o, i) => {
            const n = (nibbles[(o * inDim + i) >> 1] >> (4 * (i & 1))) & 15;
            return (n >= 8 ? n - 16 : n) * groupScales[o * (inDim / G) + Math.floor(i / G)];
          },
        ],
        ["E4M3", fp8, { kind: "fp8", weightScale: 0.5 }, (o, i) => decodeE4M3(fp8[o * inDim + i]) * 0.5],
        [
          "E2M1",
          nibbles,
          { kind: "fp4", blocks: put(blocks), alpha: 0.25 },
          (o, i) =>
            decodeE2M1((nibbles[(o * inDim + i) >> 1] >> (4 * (i & 1))) & 15) *
            decodeE4M3(blocks[(o * inDim + i) >> 4]) *
            0.25,
        ],
      ];
      for (const [label, codes, quant, value] of cases) {
        const w: CudaTensor = {
          ptr: put(codes),
          rows: out,
          cols: inDim,
          dtype,
          quant: { ...WEIGHT_ONLY, ...quant },
        };
        const dense = Float32Array.from({ length: out * inDim }, (_, k) => value(Math.floor(k / inDim), k % inDim));
        for (const rows of [1, 3, 8, 9]) {
          const [xc, xcpu] = upload(rand(rows * inDim), rows, inDim);
          cuda.beginStep(decode);
          const got = download(cuda.linear(xc, w, null, true));
          const e = relErr(got, cpu.linear(xcpu, cpuTensor(out, inDim, dense), null, true).data);
          assert.ok(e < tol, `${label}, ${rows} rows: relative error ${e.toExponential(2)}`);
        }
      }
    });

    test("fp8 layers' wide steps through cuBLASLt's FP8 GEMM: alpha · Σ e4m3(x / s) · w, worked out here", () => {
      const [inDim, out] = [H, 48];
      let s = 11;
      const next = () => {
        s = (s * 1103515245 + 12345) % 2 ** 31;
        return s;
      };
      const codes = Uint8Array.from({ length: out * inDim }, () => (next() % 0x7f) | (next() & 0x80));
      const wp = device.alloc(codes.byteLength);
      device.upload(wp, codes);
      const [inScale, weightScale, alpha] = [0.05, 0.37, 0.75];
      const w: CudaTensor = {
        ptr: wp,
        rows: out,
        cols: inDim,
        dtype,
        quant: {
          ...WEIGHT_ONLY,
          kind: "fp8",
          weightScale,
          alpha,
          input: { rounding: "fp8", prequant: 0, smoother: 0, scale: inScale },
        },
      };
      const lt = new CudaBackend(device, module, new Map([["w", w]]), dtype, cudaLimits, invFreq);
      assert.ok(lt.takesLtGemm, "an engine with an fp8 layer gets cuBLASLt");
      for (const rows of [9, 33]) {
        const [xc, xcpu] = upload(rand(rows * inDim), rows, inDim);
        lt.beginStep(decode);
        const got = download(lt.linear(xc, w, null, true));
        // The input's E4M3 codes as the GEMV and the cpu round it (x / s to the nearest E4M3), then exact sums.
        const xq = xcpu.data.map((v) => decodeE4M3(encodeE4M3(Math.fround(v / inScale))));
        const want = new Float32Array(rows * out);
        for (let r = 0; r < rows; r++)
          for (let o = 0; o < out; o++) {
            let acc = 0;
            for (let i = 0; i < inDim; i++) acc += xq[r * inDim + i] * decodeE4M3(codes[o * inDim + i]);
            want[r * out + o] = acc * inScale * weightScale * alpha;
          }
        // Hopper's FP8 tensor cores keep fewer than float32's bits in their partial sums (an H200 gave
        // 1.8e-4 here; the emulator's stand-in sums exactly).
        const e = relErr(got, want);
        assert.ok(e < 1e-3, `${rows} rows: relative error ${e.toExponential(2)}`);
      }
    });

    test("SmoothQuant int8 layers: cuBLASLt's int8 GEMM (wide steps, by chunks of rows) and the GEMV give Σ int8(x / smoother) · w · scales, worked out here", () => {
      const [inDim, out] = [H, 48];
      let s = 29;
      const next = () => {
        s = (s * 1103515245 + 12345) % 2 ** 31;
        return s;
      };
      const put = (bytes: Uint8Array) => {
        const p = device.alloc(bytes.byteLength);
        device.upload(p, bytes);
        return p;
      };
      const codes = Int8Array.from({ length: out * inDim }, () => (next() % 255) - 127);
      const channel = Float32Array.from({ length: out }, () => 0.002 + (next() % 1000) / 1e5);
      const smoother = Float32Array.from({ length: inDim }, () => 0.5 + (next() % 1000) / 500);
      // round-half-even, as rint; int8's codes clamp to ±127.
      const rint = (v: number) => {
        const f = Math.floor(v);
        const d = v - f;
        return d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f;
      };
      const clamp = (v: number) => Math.min(127, Math.max(-127, v));
      const cases: [string, "int8" | "int8_times" | "int8_token", number, boolean, boolean][] = [
        ["static int8 with per-channel scales", "int8", 0.02, true, false],
        ["SmoothQuant's static multiplier, smoothed, per-tensor scale", "int8_times", 45, false, true],
        ["per token, smoothed, per-channel scales", "int8_token", 1, true, true],
      ];
      const limits = { ...cudaLimits, maxRows: 200 };
      for (const [label, rounding, inScale, perChannel, smoothed] of cases) {
        const [weightScale, alpha] = perChannel ? [1, 1] : [0.013, 0.5];
        const w: CudaTensor = {
          ptr: put(new Uint8Array(codes.buffer)),
          rows: out,
          cols: inDim,
          dtype,
          quant: {
            ...WEIGHT_ONLY,
            kind: "int8",
            scales: perChannel ? put(new Uint8Array(channel.buffer)) : 0,
            weightScale,
            alpha,
            input: {
              rounding,
              prequant: 0,
              smoother: smoothed ? put(new Uint8Array(smoother.buffer)) : 0,
              scale: inScale,
            },
          },
        };
        const lt = new CudaBackend(device, module, new Map([["w", w]]), dtype, limits, invFreq);
        assert.ok(lt.takesLtGemm, "an engine with a SmoothQuant int8 layer gets cuBLASLt");
        const unit = rounding === "int8_token" ? 1 : rounding === "int8_times" ? 1 / inScale : inScale;
        const outScale = Math.fround(unit * weightScale * alpha);
        // 3 rows: the GEMV; 9 and 33: one GEMM; 200: four chunks of at most 64 rows.
        for (const rows of [3, 9, 33, 200]) {
          const [xc, xcpu] = upload(rand(rows * inDim, 2), rows, inDim);
          lt.beginStep(decode);
          const got = download(lt.linear(xc, w, null, true));
          const want = new Float32Array(rows * out);
          for (let r = 0; r < rows; r++) {
            const v = Array.from({ length: inDim }, (_, i) => {
              const x = xcpu.data[r * inDim + i];
              return smoothed ? Math.fround(x / smoother[i]) : x;
            });
            const amax = Math.max(...v.map(Math.abs));
            const mul =
              rounding === "int8_token" ? (amax > 0 ? 127 / amax : 1) : rounding === "int8_times" ? inScale : 0;
            // The kernel's float32 scale in float64 (ties are common: x / 0.02 is 12.5 at x = 0.25).
            const q = v.map((x) => clamp(rint(rounding === "int8" ? x / Math.fround(inScale) : x * mul)));
            const rowScale = rounding === "int8_token" ? Math.fround(1 / mul) : 1;
            for (let o = 0; o < out; o++) {
              let acc = 0;
              for (let i = 0; i < inDim; i++) acc += q[i] * codes[o * inDim + i];
              const c = Math.fround((perChannel ? channel[o] : 1) * outScale);
              want[r * out + o] = Math.fround(Math.fround(acc * c) * rowScale);
            }
          }
          // int32 sums are exact; the GEMV's float32 sums of integers below 2^24 are too.
          const e = relErr(got, want);
          assert.ok(e < 1e-6, `${label}, ${rows} rows: relative error ${e.toExponential(2)}`);
        }
      }
      const saved = process.env.KILN_CUDA_LT_GEMM;
      process.env.KILN_CUDA_LT_GEMM = "0";
      const off = new CudaBackend(
        device,
        module,
        new Map([
          [
            "w",
            {
              ptr: put(new Uint8Array(codes.buffer)),
              rows: out,
              cols: inDim,
              dtype,
              quant: { ...WEIGHT_ONLY, input: { rounding: "int8", prequant: 0, smoother: 0, scale: 0.02 } },
            },
          ],
        ]),
        dtype,
        cudaLimits,
        invFreq,
      );
      if (saved === undefined) delete process.env.KILN_CUDA_LT_GEMM;
      else process.env.KILN_CUDA_LT_GEMM = saved;
      assert.ok(!off.takesLtGemm, "KILN_CUDA_LT_GEMM=0 keeps wide steps on the dequantizing path");
    });

    test("fused decode ops (norm + qkv + bias + RoPE + KV write; norm + fc|gate + SiLU) equal the plain ops on the cpu", () => {
      const [q, qb, fg, fgb, norm] = ["qkv", "qkv_bias", "fc_gate", "fc_gate_bias", "norm"].map((k) => weights.get(k)!);
      for (const rows of [1, 3, 8]) {
        // One decode row per sequence after a cached history of 1–6 tokens in its own two blocks; the history
        // is written by the plain ops on both backends first.
        const cachedOf = (r: number) => 1 + (r % 6);
        const slotOf = (r: number, pos: number) => (2 * r + (pos >> 2)) * 4 + (pos & 3);
        const seqs = Array.from({ length: rows }, (_, r) => ({
          rowStart: r,
          numNew: 1,
          numCached: cachedOf(r),
          blockTable: Int32Array.from([2 * r, 2 * r + 1]),
        }));
        const history = seqs.flatMap((_, r) => Array.from({ length: cachedOf(r) }, (_, pos) => [r, pos]));
        const past: StepInput = {
          tokenIds: new Int32Array(history.length),
          positions: Int32Array.from(history, ([, pos]) => pos),
          slotMapping: Int32Array.from(history, ([r, pos]) => slotOf(r, pos)),
          seqs: [],
          logitRows: new Int32Array(0),
        };
        const [hc, hcpu] = upload(rand(history.length * H), history.length, H);
        cuda.beginStep(past);
        cuda.ropeAndCacheKv(0, cuda.linear(hc, q[0], null), past, rope, shape, qb[0]);
        cpu.ropeAndCacheKv(0, cpu.linear(hcpu, q[1], null), past, rope, shape, qb[1]);
        const step: StepInput = {
          tokenIds: new Int32Array(rows),
          positions: Int32Array.from(seqs, (s) => s.numCached),
          slotMapping: Int32Array.from(seqs, (s, r) => slotOf(r, s.numCached)),
          seqs,
          logitRows: Int32Array.from({ length: rows }, (_, r) => r),
        };
        for (const withDelta of [false, true]) {
          const [rc, rcpu] = upload(rand(rows * H), rows, H);
          const [dc, dcpu] = upload(rand(rows * H), rows, H);
          const nspec = (t: CudaTensor) => ({ weight: t, eps: 1e-6 });
          cuda.beginStep(step);
          cpu.beginStep(step);
          const fused = cuda.normQkvRope(rc, withDelta ? dc : null, nspec(norm[0]), q[0], qb[0], 0, step, rope, shape);
          assert.ok(fused, `${rows} rows fuse`);
          const x = withDelta ? cpu.addRmsNorm(rcpu, dcpu, norm[1], 1e-6) : cpu.rmsNorm(rcpu, norm[1], 1e-6);
          const qkv = cpu.linear(x, q[1], null);
          cpu.ropeAndCacheKv(0, qkv, step, rope, shape, qb[1]);
          const label = `${rows} rows${withDelta ? ", with delta" : ""}`;
          const check = (what: string, got: Float32Array, want: Float32Array) => {
            const e = relErr(got, want);
            assert.ok(e < tol, `${label}: ${what} relative error ${e.toExponential(2)}`);
          };
          check("qkv", download(fused.qkv), qkv.data);
          check("residual", download(fused.residual), rcpu.data);
          // Attention reads the keys and values the fused op wrote to the cache.
          check(
            "attention",
            download(cuda.attention(0, fused.qkv, step, shape)),
            cpu.attention(0, qkv, step, shape).data,
          );
          if (!withDelta) continue;
          const [d2c, d2cpu] = upload(rand(rows * H), rows, H);
          const mlp = cuda.normGatedMlp(fused.residual, d2c, nspec(norm[0]), {
            fc: fg[0],
            fcBias: fgb[0],
            gate: null,
            gateBias: null,
          });
          assert.ok(mlp, `${rows} rows fuse the MLP`);
          assert.notEqual(mlp.residual.ptr, fused.residual.ptr, "the updated residual goes to the other buffer");
          const act = cpu.siluMulHalves(cpu.linear(cpu.addRmsNorm(rcpu, d2cpu, norm[1], 1e-6), fg[1], fgb[1]));
          check("gated MLP", download(mlp.act), act.data);
          check("residual after the MLP", download(mlp.residual), rcpu.data);
        }
      }
      // Steps wider than the GEMV's rows take the plain ops.
      const [w9] = upload(rand(9 * H), 9, H);
      cuda.beginStep(prefill);
      assert.equal(
        cuda.normGatedMlp(
          w9,
          w9,
          { weight: norm[0], eps: 1e-6 },
          { fc: fg[0], fcBias: null, gate: null, gateBias: null },
        ),
        null,
      );
    });

    test("mixture of experts (router top-k, renormalized or not, shared expert behind its gate) equals the cpu at 1–45 rows", () => {
      const [E, I, SI] = [6, 40, 56];
      const router = rand(E * H, 0.5); // float32 on both backends, as the engine keeps it
      const rp = device.alloc(router.byteLength);
      device.upload(rp, new Uint8Array(router.buffer));
      const [fc, proj] = [upload(rand(E * 2 * I * H, 0.2), E * 2 * I, H), upload(rand(E * H * I, 0.2), E * H, I)];
      const sharedW = [
        upload(rand(2 * SI * H, 0.2), 2 * SI, H),
        upload(rand(H * SI, 0.2), H, SI),
        upload(rand(H, 0.3), 1, H),
      ];
      for (const [topK, renormalize, withShared] of [
        [2, true, false],
        [3, false, true],
      ] as const) {
        const spec = {
          numExperts: E,
          topK,
          renormalize,
          firstExpert: 0,
          expertsLocal: E,
          expertInter: I,
          sharedInter: withShared ? SI : 0,
        };
        const pick = (side: 0 | 1) => ({
          router: side === 0 ? { ptr: rp, rows: E, cols: H, dtype: "F32" as const } : cpuTensor(E, H, router),
          fc: fc[side],
          proj: proj[side],
          shared: withShared ? { fc: sharedW[0][side], proj: sharedW[1][side], gate: sharedW[2][side] } : null,
        });
        for (const rows of [1, 3, 45]) {
          const [xc, xcpu] = upload(rand(rows * H), rows, H);
          cuda.beginStep(decode);
          const got = download(cuda.moe(xc, pick(0) as never, spec));
          const want = cpu.moe(xcpu, pick(1) as never, spec).data;
          for (let r = 0; r < rows; r++) {
            const e = relErr(got.subarray(r * H, (r + 1) * H), want.subarray(r * H, (r + 1) * H));
            assert.ok(
              e < tol,
              `top ${topK}${withShared ? " + shared" : ""}, ${rows} rows: row ${r} relative error ${e.toExponential(2)}`,
            );
          }
        }
      }
    });

    for (const [label, step] of [
      ["prefill", prefill],
      ["decode after prefill", decode],
    ] as const) {
      test(`the decoder ops chained over a ${label} step match the cpu backend`, () => {
        const run = <T>(be: CpuBackend | CudaBackend, w: (n: string) => T, dl: (t: T) => Float32Array) => {
          // biome-ignore lint/suspicious/noExplicitAny: the same calls on both backends
          const b = be as any;
          b.beginStep(step);
          const x = b.embed(w("emb"), step);
          const n = b.rmsNorm(x, w("norm"), 1e-6);
          const qkv = b.linear(n, w("qkv"), null);
          b.ropeAndCacheKv(0, qkv, step, rope, shape, w("qkv_bias"));
          const att = b.attention(0, qkv, step, shape);
          const fg = b.linear(n, w("fc_gate"), w("fc_gate_bias"));
          const act = b.siluMulHalves(fg);
          const normed = b.addRmsNorm(x, x, w("norm"), 1e-6);
          const rows = b.gatherRows(normed, step);
          const logits = b.linear(rows, w("emb"), null, true);
          const greedy = b.greedy(logits, V);
          return {
            qkv: dl(qkv),
            att: dl(att),
            act: dl(act),
            normed: dl(normed),
            residual: dl(x),
            logits: dl(logits),
            greedy,
          };
        };
        const got = run(cuda, (k) => weights.get(k)![0], download);
        const want = run(
          cpu,
          (k) => weights.get(k)![1],
          (t: CpuTensor) => t.data.slice(),
        );
        for (const k of ["qkv", "att", "act", "normed", "residual", "logits"] as const) {
          const e = relErr(got[k], want[k]);
          assert.ok(e < tol, `${k}: relative error ${e.toExponential(2)} ≥ ${tol}`);
        }
        assert.deepEqual(Array.from(got.greedy.tokens), Array.from(want.greedy.tokens));
        const a = got.greedy.logProbs as Float32Array;
        const b = want.greedy.logProbs as Float32Array;
        const lp = Math.max(...Array.from(a, (x, i) => Math.abs(x - b[i])));
        assert.ok(lp < 10 * tol, `greedy log probs differ by ${lp}`);
      });
    }
  });
}
