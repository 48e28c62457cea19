// The llama/qwen2 decoder as backend ops: embedding → N × (attention + gated MLP, pre-norm, residual) →
// final norm → lm_head. Written once; every backend runs it.

import type {
  AttentionShape,
  Backend,
  GatedMlp,
  MoeSpec,
  RopeSpec,
  StepInput,
  TensorCollectives,
} from "../backends/backend.js";
import type { PretrainedConfig } from "../checkpoint/pretrained-config.js";
import { type Communicator, SOLO } from "../comm/communicator.js";
import { EngineError } from "../errors.js";
import { Mapping } from "../mapping.js";
import { type ContextSplit, splitContext } from "./context-split.js";
import { HostStagedCollectives } from "./host-collectives.js";
import { isMoeLayer, MOE_NORMALIZATION, moeOf } from "./moe.js";
import { ropeSpec } from "./rope.js";

/** What one rank holds of the decoder: its pipeline stage's layers and its tensor-parallel share of each. */
export interface DecoderDims {
  /** The stage's layers, as global indices (its engine numbers them from 0). */
  layers: number[];
  numHeads: number;
  /** A contiguous share of the KV heads, or the one head this rank repeats when tp exceeds them. */
  numKvHeads: number;
  headSize: number;
  intermediate: number;
  /** lm_head rows: the vocabulary padded to a multiple of tp_size, split tp ways. */
  vocabRows: number;
  firstStage: boolean;
  lastStage: boolean;
  /** A MoE model's share on this rank: its experts (moe_ep) and their intermediate slices (moe_tp). */
  moe: MoeDims | null;
}

/** A MoE model's routing and this rank's experts and slices (Backend.moe's spec), and which layers route. */
export interface MoeDims extends MoeSpec {
  /** Per local layer: whether it routes through experts. */
  layers: boolean[];
}

export function decoderDims(cfg: PretrainedConfig, mapping: Mapping = new Mapping(), rank = 0): DecoderDims {
  const tp = mapping.tpSize;
  const { ppRank } = mapping.coords(rank);
  const kv = cfg.num_key_value_heads;
  const layers = mapping.ppLayers(cfg.num_hidden_layers, ppRank);
  const moe = moeOf(cfg);
  const { tpRank } = mapping.coords(rank);
  return {
    layers,
    numHeads: cfg.num_attention_heads / tp,
    numKvHeads: kv >= tp ? kv / tp : 1,
    headSize: cfg.head_size,
    intermediate: cfg.intermediate_size / tp,
    vocabRows: Math.ceil(cfg.vocab_size / tp),
    firstStage: ppRank === 0,
    lastStage: ppRank === mapping.ppSize - 1,
    moe: moe && {
      numExperts: moe.num_experts,
      topK: moe.top_k,
      renormalize: moe.normalization_mode === MOE_NORMALIZATION.RENORMALIZE,
      firstExpert: (tpRank % mapping.moeEpSize) * (moe.num_experts / mapping.moeEpSize),
      expertsLocal: moe.num_experts / mapping.moeEpSize,
      expertInter: moe.expertInter / mapping.moeTpSize,
      sharedInter: moe.sharedInter / tp,
      layers: layers.map((l) => isMoeLayer(cfg, l)),
    },
  };
}

/** Every tensor an unquantized rank file of the decoder holds, with its [rows, cols] shape. */
export function decoderTensorShapes(cfg: PretrainedConfig, dims = decoderDims(cfg)): Map<string, number[]> {
  const H = cfg.hidden_size;
  const D = dims.headSize;
  const qkvOut = (dims.numHeads + 2 * dims.numKvHeads) * D;
  const I = dims.intermediate;
  const m = new Map<string, number[]>();
  if (dims.firstStage) m.set("transformer.vocab_embedding.weight", [cfg.vocab_size, H]);
  for (let i = 0; i < dims.layers.length; i++) {
    const t = `transformer.layers.${i}`;
    m.set(`${t}.input_layernorm.weight`, [H]);
    m.set(`${t}.attention.qkv.weight`, [qkvOut, H]);
    if (cfg.attn_bias) m.set(`${t}.attention.qkv.bias`, [qkvOut]);
    m.set(`${t}.attention.dense.weight`, [H, dims.numHeads * D]);
    if (cfg.dense_bias === true) m.set(`${t}.attention.dense.bias`, [H]);
    m.set(`${t}.post_layernorm.weight`, [H]);
    if (cfg.quantization.kv_cache_quant_algo !== null) m.set(`${t}.attention.kv_cache_scaling_factor`, [1]);
    const moe = dims.moe;
    if (moe?.layers[i]) {
      const ie = moe.expertInter;
      m.set(`${t}.mlp.router.weight`, [moe.numExperts, H]);
      m.set(`${t}.mlp.fc.weight`, [moe.expertsLocal, 2 * ie, H]);
      m.set(`${t}.mlp.proj.weight`, [moe.expertsLocal, H, ie]);
      if (moe.sharedInter > 0) {
        m.set(`${t}.shared_expert.fc.weight`, [2 * moe.sharedInter, H]);
        m.set(`${t}.shared_expert.proj.weight`, [H, moe.sharedInter]);
        m.set(`${t}.shared_expert_gate.weight`, [1, H]);
      }
      continue;
    }
    m.set(`${t}.mlp.fc.weight`, [I, H]);
    m.set(`${t}.mlp.gate.weight`, [I, H]);
    m.set(`${t}.mlp.proj.weight`, [H, I]);
    if (cfg.mlp_bias)
      for (const [n, o] of [
        ["fc", I],
        ["gate", I],
        ["proj", H],
      ] as const)
        m.set(`${t}.mlp.${n}.bias`, [o]);
  }
  if (dims.lastStage) {
    m.set("transformer.ln_f.weight", [H]);
    m.set("lm_head.weight", [dims.vocabRows, H]);
  }
  return m;
}

/** The rank a model runs as, and how it reaches the others. */
export interface ParallelContext {
  mapping: Mapping;
  rank: number;
  comm: Communicator;
}

export class DecoderModel<T> {
  private readonly rope: RopeSpec;
  private readonly shape: AttentionShape;
  readonly dims: DecoderDims;
  private readonly par: ParallelContext;
  private readonly tpGroup: number[];
  private readonly ppGroup: number[];
  private readonly cpGroup: number[];
  /** How tp and pp ranks exchange tensors: the backend's own collectives where it has them, else the host. */
  private readonly collectives: TensorCollectives<T>;
  private readonly hostStaged: HostStagedCollectives<T>;

  constructor(
    readonly cfg: PretrainedConfig,
    private readonly be: Backend<T>,
    parallel: ParallelContext = { mapping: new Mapping(), rank: 0, comm: SOLO },
  ) {
    this.par = parallel;
    this.dims = decoderDims(cfg, parallel.mapping, parallel.rank);
    this.rope = ropeSpec(cfg);
    this.shape = { numHeads: this.dims.numHeads, numKvHeads: this.dims.numKvHeads, headSize: cfg.head_size };
    const { mapping, rank } = parallel;
    this.tpGroup = mapping.tpGroup(rank);
    this.ppGroup = mapping.ppGroup(rank);
    this.cpGroup = mapping.cpGroup(rank);
    this.hostStaged = new HostStagedCollectives(be, parallel.comm);
    this.collectives = be.collectives ?? this.hostStaged;
  }

  /** This rank's attention heads. */
  get attentionShape(): AttentionShape {
    return this.shape;
  }

  /** Layers whose keys and values this rank caches: its pipeline stage's. */
  get numLayers(): number {
    return this.dims.layers.length;
  }

  /**
   * Whether a forward pass may be recorded into a CUDA graph: only when it makes no host-staged collectives,
   * whose copies to the host and blocking pipe I/O a capture can neither hold nor wait for.
   */
  get graphCapturable(): boolean {
    // Context parallelism gathers its chunks through the host in every layer.
    return this.par.mapping.worldSize === 1 || (this.collectives.capturable && this.par.mapping.cpSize === 1);
  }

  /** Width of a logits row: the vocabulary, padded to a multiple of tp_size. */
  get logitsWidth(): number {
    return this.dims.vocabRows * this.par.mapping.tpSize;
  }

  private w(name: string): T {
    return this.be.weight(name);
  }

  private bias(name: string): T | null {
    return this.be.hasWeight(name) ? this.be.weight(name) : null;
  }

  /**
   * Runs one packed step; returns logits [step.logitRows.length, logitsWidth]. Every rank returns the same
   * logits: the last pipeline stage computes them, and its tensor-parallel shares are gathered and sent on.
   */
  forward(step: StepInput): T {
    const be = this.be;
    const eps = this.cfg.norm_epsilon;
    const { mapping } = this.par;
    const coll = this.collectives;
    const { ppRank, cpRank } = mapping.coords(this.par.rank);
    be.beginStep(step);
    const cp = mapping.cpSize > 1 ? splitContext(step, cpRank, mapping.cpSize) : null;
    const own = cp?.local ?? step;
    const H = this.cfg.hidden_size;
    let residual = this.dims.firstStage
      ? this.embed(own, step)
      : coll.recv(this.ppGroup[ppRank - 1], this.ppGroup, own.tokenIds.length, H, false);
    const L = this.dims.layers.length;
    // The residual stream, and the last block's output not yet added to it (each block's norm adds it first).
    let stream = { residual, pending: null as T | null };
    for (let l = 0; l < L; l++) {
      be.beginLayer(l);
      const t = `transformer.layers.${l}`;
      const opened = this.openAttention(l, stream, step, cp);
      const attn = this.attention(l, opened.qkv, step, cp, opened.cached);
      const dense = this.rowParallel(attn, `${t}.attention.dense`);
      stream = this.dims.moe?.layers[l]
        ? this.moeBlock(t, opened.residual, dense)
        : this.mlpBlock(t, opened.residual, dense);
    }
    residual = stream.residual;
    // Where every row of the step wants its logits (decode steps), no rows are gathered and the last block's
    // output is added to the residual by the final norm itself: two launches fewer a step.
    const everyRow = !cp && this.dims.lastStage && isEveryRow(step.logitRows, step.tokenIds.length);
    const pending = stream.pending;
    if (pending && !everyRow) be.addInPlace(residual, pending);
    be.beginLayer(L);
    const rows = step.logitRows.length;
    if (!this.dims.lastStage) {
      coll.send(residual, this.ppGroup[ppRank + 1], this.ppGroup);
      return coll.recv(this.ppGroup[mapping.ppSize - 1], this.ppGroup, rows, this.logitsWidth, true);
    }
    const lnf = this.w("transformer.ln_f.weight");
    const all = cp ? this.gatherContext(residual, H, step, cp) : residual;
    // Only the rows whose logits are wanted go through the final norm and the (large) lm_head.
    const last = !everyRow
      ? be.rmsNorm(be.gatherRows(all, step), lnf, eps)
      : pending
        ? be.addRmsNorm(residual, pending, lnf, eps)
        : be.rmsNorm(residual, lnf, eps);
    let logits = be.linear(last, this.w("lm_head.weight"), null, true);
    if (mapping.tpSize > 1) logits = coll.allGatherColumns(logits, this.tpGroup, rows, this.dims.vocabRows);
    for (const earlier of this.ppGroup.slice(0, -1)) coll.send(logits, earlier, this.ppGroup);
    return logits;
  }

  /**
   * The embeddings of `own`'s tokens: the step's, or under cp this rank's chunk of it (the only op that reads
   * the chunk's metadata; every later one takes the full step's or none).
   */
  private embed(own: StepInput, step: StepInput): T {
    const table = this.w("transformer.vocab_embedding.weight");
    if (own === step || !this.be.useStep) return this.be.embed(table, own);
    this.be.useStep(own);
    const rows = this.be.embed(table, own);
    this.be.useStep(step);
    return rows;
  }

  /**
   * The attention block's input: the pending output added to the residual, normalized and projected to q, k,
   * v; rotated and cached too (`cached`) where the backend fuses all of it.
   */
  private openAttention(
    l: number,
    stream: { residual: T; pending: T | null },
    step: StepInput,
    cp: ContextSplit | null,
  ): { residual: T; qkv: T; cached: boolean } {
    const be = this.be;
    const t = `transformer.layers.${l}`;
    const norm = { weight: this.w(`${t}.input_layernorm.weight`), eps: this.cfg.norm_epsilon };
    const weight = this.w(`${t}.attention.qkv.weight`);
    const { residual, pending } = stream;
    if (!cp) {
      const bias = this.bias(`${t}.attention.qkv.bias`);
      const fused = be.normQkvRope?.(residual, pending, norm, weight, bias, l, step, this.rope, this.shape);
      if (fused) return { ...fused, cached: true };
    }
    const x = pending
      ? be.addRmsNorm(residual, pending, norm.weight, norm.eps)
      : be.rmsNorm(residual, norm.weight, norm.eps);
    return { residual, qkv: be.linear(x, weight, null), cached: false };
  }

  /** The gated MLP block after attention: `dense` added to the residual, normalized, fc|gate, SiLU, proj. */
  private mlpBlock(t: string, residual: T, dense: T): { residual: T; pending: T } {
    const be = this.be;
    const norm = { weight: this.w(`${t}.post_layernorm.weight`), eps: this.cfg.norm_epsilon };
    const mlp = this.gatedMlpWeights(t);
    const fused = be.normGatedMlp?.(residual, dense, norm, mlp, this.w(`${t}.mlp.proj.weight`));
    const act = fused ? fused.act : this.gatedMlp(mlp, be.addRmsNorm(residual, dense, norm.weight, norm.eps));
    return { residual: fused ? fused.residual : residual, pending: this.rowParallel(act, `${t}.mlp.proj`) };
  }

  /** A mixture-of-experts block after attention. */
  private moeBlock(t: string, residual: T, dense: T): { residual: T; pending: T } {
    const x = this.be.addRmsNorm(residual, dense, this.w(`${t}.post_layernorm.weight`), this.cfg.norm_epsilon);
    return { residual, pending: this.moe(t, x) };
  }

  /**
   * The qkv bias, rotary embedding and KV cache write (unless `cached`: done with the projection), then
   * attention of this rank's rows (every row's K/V under cp).
   */
  private attention(l: number, qkv: T, step: StepInput, cp: ContextSplit | null, cached: boolean): T {
    const be = this.be;
    const bias = this.bias(`transformer.layers.${l}.attention.qkv.bias`);
    if (!cp) {
      if (!cached) be.ropeAndCacheKv(l, qkv, step, this.rope, this.shape, bias);
      return be.attention(l, qkv, step, this.shape, this.w(`transformer.layers.${l}.attention.dense.weight`));
    }
    const { numHeads, numKvHeads, headSize } = this.shape;
    const all = this.gatherContext(qkv, (numHeads + 2 * numKvHeads) * headSize, step, cp);
    be.ropeAndCacheKv(l, all, step, this.rope, this.shape, bias);
    const out = be.toHost(be.attention(l, all, cp.queries, this.shape));
    const cols = numHeads * headSize;
    const mine = cp.rowsOf[this.par.mapping.coords(this.par.rank).cpRank];
    const picked = new Float32Array(mine.length * cols);
    mine.forEach((r, i) => {
      picked.set(out.subarray(r * cols, (r + 1) * cols), i * cols);
    });
    return this.hostStaged.fromHost(picked, mine.length, cols, false);
  }

  /** A row-parallel linear (dense, proj): each tp rank's partial product, summed; the bias added once. */
  private rowParallel(x: T, linear: string): T {
    const be = this.be;
    const bias = this.bias(`${linear}.bias`);
    if (this.par.mapping.tpSize === 1) return be.linear(x, this.w(`${linear}.weight`), bias);
    // The ranks' partial products summed in float32 and rounded once, as one rank's linear rounds its sums:
    // rounding each partial to a 16-bit dtype first put bfloat16 tp runs 7e-2 from the single rank's logits.
    const partial = be.linear(x, this.w(`${linear}.weight`), null, true);
    return be.finishLinear(this.sumOverTp(partial, true), bias);
  }

  /** The tp group's [rows, hidden] partial outputs summed, every rank getting the same bits. */
  private sumOverTp(partial: T, float32 = false): T {
    return this.collectives.allReduce(partial, this.tpGroup, this.cfg.hidden_size, float32);
  }

  /** A mixture-of-experts layer: this rank's experts and shared-expert share, summed over the tp group. */
  private moe(t: string, x: T): T {
    const be = this.be;
    const moe = this.dims.moe!;
    if (!be.moe) throw new EngineError(`the ${be.name} backend does not run mixture-of-experts layers yet`);
    const shared =
      moe.sharedInter > 0
        ? {
            fc: this.w(`${t}.shared_expert.fc.weight`),
            proj: this.w(`${t}.shared_expert.proj.weight`),
            gate: this.w(`${t}.shared_expert_gate.weight`),
          }
        : null;
    const w = {
      router: this.w(`${t}.mlp.router.weight`),
      fc: this.w(`${t}.mlp.fc.weight`),
      proj: this.w(`${t}.mlp.proj.weight`),
      shared,
    };
    const partial = be.moe(x, w, moe);
    return this.par.mapping.tpSize === 1 ? partial : this.sumOverTp(partial);
  }

  /** The cp ranks' rows of `x` put back in the full step's order (padding rows zero). */
  private gatherContext(x: T, cols: number, step: StepInput, cp: ContextSplit): T {
    const parts = this.par.comm.allGather(this.be.toHost(x), this.cpGroup);
    const total = step.tokenIds.length;
    const out = new Float32Array(total * cols);
    parts.forEach((p, c) => {
      cp.rowsOf[c].forEach((r, i) => {
        out.set(p.subarray(i * cols, (i + 1) * cols), r * cols);
      });
    });
    return this.hostStaged.fromHost(out, total, cols, false);
  }

  /** silu(fc(x)) · gate(x); one GEMM when the engine holds fc and gate fused (`mlp.fc_gate`). */
  /** A layer's fc and gate: the fused [fc | gate] weight where the engine holds one. */
  private gatedMlpWeights(t: string): GatedMlp<T> {
    if (this.be.hasWeight(`${t}.mlp.fc_gate.weight`)) {
      return {
        fc: this.w(`${t}.mlp.fc_gate.weight`),
        fcBias: this.bias(`${t}.mlp.fc_gate.bias`),
        gate: null,
        gateBias: null,
      };
    }
    return {
      fc: this.w(`${t}.mlp.fc.weight`),
      fcBias: this.bias(`${t}.mlp.fc.bias`),
      gate: this.w(`${t}.mlp.gate.weight`),
      gateBias: this.bias(`${t}.mlp.gate.bias`),
    };
  }

  private gatedMlp(mlp: GatedMlp<T>, x: T): T {
    const be = this.be;
    if (!mlp.gate) return be.siluMulHalves(be.linear(x, mlp.fc, mlp.fcBias));
    return be.siluMul(be.linear(x, mlp.fc, mlp.fcBias), be.linear(x, mlp.gate, mlp.gateBias));
  }
}

/** Whether a step's logits rows are all of its rows, in order (0, 1, …, rows − 1). */
function isEveryRow(logitRows: Int32Array, rows: number): boolean {
  return logitRows.length === rows && logitRows.every((r, i) => r === i);
}
