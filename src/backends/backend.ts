// The narrow interface every backend implements. Models are written once against it; backends never
// know model names. `T` is the backend's tensor handle (weights and activations alike, 2-D row-major).

import type { BackendName } from "../builder/build-config.js";

/** One sequence's share of a step: its rows in the packed batch and where its keys and values live. */
export interface SeqSlice {
  /** First row of this sequence's new tokens in the packed batch. */
  rowStart: number;
  /** Tokens this step computes for it. */
  numNew: number;
  /** Tokens already in its KV cache before this step (the new tokens' first position). */
  numCached: number;
  /** KV cache blocks holding positions [0, numCached + numNew), tokensPerBlock each. */
  blockTable: Int32Array;
}

/** Everything a forward step needs about the batch; built by the runtime's model runner. */
export interface StepInput {
  tokenIds: Int32Array;
  positions: Int32Array;
  /** Cache slot (block × tokensPerBlock + offset) each new token's key and value go to. */
  slotMapping: Int32Array;
  seqs: SeqSlice[];
  /** Packed rows whose logits are wanted, in output order. */
  logitRows: Int32Array;
  /** Per logits row, when the backend samples: the parameters of that row's draw. */
  rowSampling?: RowSampling;
}

/** Sampling parameters per logits row, for backends that sample on the device. */
export interface RowSampling {
  temperature: Float32Array;
  /** 0: off. */
  topK: Int32Array;
  /** 1: off. */
  topP: Float32Array;
  /** 0: off. */
  minP: Float32Array;
  /** The request's seed (low 32 bits) and the draw's index within its sequence: together they fix the draw. */
  seed: Int32Array;
  counter: Int32Array;
}

export interface AttentionShape {
  numHeads: number;
  numKvHeads: number;
  headSize: number;
}

export interface RopeSpec {
  /** Inverse frequencies for the first rotaryDim/2 dims (gpt-neox layout: dim i pairs with i + rotaryDim/2). */
  invFreq: Float32Array;
  rotaryDim: number;
}

/** An RMSNorm's weight and epsilon. */
/** A gated MLP's first linear layers: one fused [fc | gate] weight (gate null), or the two apart. */
export interface GatedMlp<T> {
  fc: T;
  fcBias: T | null;
  gate: T | null;
  gateBias: T | null;
}

export interface NormSpec<T> {
  weight: T;
  eps: number;
}

export interface KvCacheSpec extends AttentionShape {
  numLayers: number;
  numBlocks: number;
  tokensPerBlock: number;
}

/** A MoE layer's weights on one rank, in TensorRT-LLM's layout (see models/decoder.ts decoderTensorShapes). */
export interface MoeWeights<T> {
  router: T;
  fc: T;
  proj: T;
  shared: { fc: T; proj: T; gate: T } | null;
}

/** How a MoE layer routes, and which experts and slices one rank holds. */
export interface MoeSpec {
  numExperts: number;
  topK: number;
  renormalize: boolean;
  firstExpert: number;
  expertsLocal: number;
  expertInter: number;
  sharedInter: number;
}

/**
 * Collectives on a backend's own tensors, for backends whose ranks exchange without the host (NCCL on GPUs).
 * Like Communicator's calls, each is collective: every member of `group` (world ranks) makes the same call in
 * the same order. Shapes are given where the host-staged implementation needs them.
 */
export interface TensorCollectives<T> {
  /** Whether the calls may be recorded into a CUDA graph (they enqueue on the backend's stream). */
  readonly capturable: boolean;
  /** The elementwise sum over the group of [rows, cols] activations, float32 or in the model's dtype (the sum likewise). */
  allReduce(x: T, group: readonly number[], cols: number, float32: boolean): T;
  /** Float32 [rows, cols] shares (logits) laid side by side in group order: [rows, group.length × cols]. */
  allGatherColumns(x: T, group: readonly number[], rows: number, cols: number): T;
  send(x: T, to: number, group: readonly number[]): void;
  /** What `from` sent: [rows, cols] in the model's dtype, or float32 (logits). */
  recv(from: number, group: readonly number[], rows: number, cols: number, float32: boolean): T;
  dispose(): void;
}

export interface Backend<T> {
  readonly name: BackendName;
  /** Device-side collectives, when this backend's ranks have them; else the model stages through the host. */
  readonly collectives?: TensorCollectives<T> | null;
  /** Frees everything the backend holds (weights, KV cache, workspaces); it is unusable afterwards. */
  dispose(): void;
  /**
   * A linear layer's float32 sums (linear(…, float32Out)) as the layer's output: in the model dtype, rounded
   * as a linear rounds its sums, plus its bias. What tp ranks apply to their summed partial products.
   */
  finishLinear(sums: T, bias: T | null): T;
  weight(name: string): T;
  hasWeight(name: string): boolean;
  allocateKvCache(spec: KvCacheSpec): void;
  /** Bytes one cached key or value element takes. */
  readonly kvBytesPerValue: number;
  /** Memory the KV cache may take when the caller names no size. */
  kvBudgetBytes(): number;
  /** Copies whole KV blocks (every layer, keys and values), for copy-on-write of shared blocks. */
  copyKvBlocks(copies: readonly { src: number; dst: number }[]): void;
  /** Makes the step's metadata (tokens, positions, slots, block tables) available to the ops that follow. */
  beginStep(step: StepInput): void;
  /**
   * Within a step, makes another step's metadata the one the ops that follow read, keeping the step's
   * tensors (context parallelism embeds a rank's own chunk of the step). For backends whose ops read
   * metadata beginStep stored rather than the step they are given.
   */
  useStep?(step: StepInput): void;
  /**
   * Layer `layer` starts (num_layers: the final norm and lm_head). What a layer computes is dead two layers
   * on, so a backend may recycle activation memory by layer parity.
   */
  beginLayer(layer: number): void;
  /** Rows of `table` picked by the step's token ids. */
  embed(table: T, step: StepInput): T;
  rmsNorm(x: T, weight: T, eps: number): T;
  /** `residual += x` in place, then returns rmsNorm(residual). */
  addRmsNorm(residual: T, x: T, weight: T, eps: number): T;
  addInPlace(x: T, y: T): void;
  /** x · weightᵀ (+ bias): x [rows, in], weight [out, in]; float32 output when asked (logits). */
  linear(x: T, weight: T, bias: T | null, float32Out?: boolean): T;
  /**
   * Adds the qkv bias (when given), rotates q and k of the fused qkv rows in place, and writes k and v into
   * the layer's cache slots.
   */
  ropeAndCacheKv(layer: number, qkv: T, step: StepInput, rope: RopeSpec, shape: AttentionShape, bias: T | null): void;
  /**
   * Causal attention of each new token over its sequence's cached keys and values. dense: the layer that
   * reads the result, for which the backend may write it already rounded as that layer's format says.
   */
  attention(layer: number, qkv: T, step: StepInput, shape: AttentionShape, dense?: T): T;
  /** silu(a) * b, elementwise. */
  siluMul(a: T, b: T): T;
  /** silu of the first half of each row times its second half: a fused [fc | gate] output. */
  siluMulHalves(fg: T): T;
  /**
   * This rank's share of a mixture-of-experts layer: its experts' outputs weighted by the routing over every
   * expert, plus its share of the gated shared expert (the tp group's shares sum to the output). Backends
   * that run MoE models.
   */
  moe?(x: T, weights: MoeWeights<T>, spec: MoeSpec): T;
  // Optional fusions, for backends whose small steps are bound by launches rather than bytes. Each opens a
  // pre-norm block: adds `delta` (when given) to the residual, normalizes it, and applies the block's first
  // linear. The updated residual comes back as a tensor that replaces `residual` (which must not be used
  // again). null: not fused for this step (the caller runs the plain ops).
  /** Opens an attention block: …then projects q, k and v, adds the qkv bias, rotates q and k and writes k and v to the layer's cache. */
  normQkvRope?(
    residual: T,
    delta: T | null,
    norm: NormSpec<T>,
    qkv: T,
    bias: T | null,
    layer: number,
    step: StepInput,
    rope: RopeSpec,
    shape: AttentionShape,
  ): { residual: T; qkv: T } | null;
  /**
   * Opens a gated MLP: …then applies fc and gate and returns silu(fc) · gate. proj: the layer that reads it
   * (the down projection), for which the backend may write it already rounded as that layer's format says.
   */
  normGatedMlp?(residual: T, delta: T, norm: NormSpec<T>, mlp: GatedMlp<T>, proj?: T): { residual: T; act: T } | null;
  /** The rows of x whose logits the step wants (step.logitRows). */
  gatherRows(x: T, step: StepInput): T;
  toHost(x: T): Float32Array;
  /**
   * A float32 host array as a tensor: how ranks' exchanged activations (in the model's dtype) and logits
   * (`float32`, as linear's float32Out) come back, for backends that run ranks.
   */
  fromHost?(data: Float32Array, rows: number, cols: number, float32?: boolean): T;
  /** Per row of float32 logits: the first index of the maximum over [0, vocab) and its log-softmax. */
  greedy(logits: T, vocab: number): { tokens: Int32Array; logProbs: Float32Array };
}
