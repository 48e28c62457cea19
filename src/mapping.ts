// Mapping: how ranks map onto tensor-, pipeline- and context-parallel coordinates, with TensorRT-LLM's
// numbering (tp fastest, then cp, then pp) and its MoE split of the tp group into moe_tp × moe_ep.
// A value object: sizes in, every coordinate and group derived, validated at construction, no I/O.

import type { MappingConfig } from "./checkpoint/pretrained-config.js";
import { ConfigError } from "./errors.js";

export class MappingError extends ConfigError {
  override name = "MappingError";
}

export interface MappingSizes {
  tpSize?: number;
  ppSize?: number;
  cpSize?: number;
  /** Unset: tp / moeEpSize (or tp when both are unset). */
  moeTpSize?: number;
  /** Unset: tp / moeTpSize (or 1 when both are unset). */
  moeEpSize?: number;
  gpusPerNode?: number;
}

export interface RankCoords {
  tpRank: number;
  cpRank: number;
  ppRank: number;
}

function positive(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 1) throw new MappingError(`--${name} must be a positive integer, got ${v}`);
  return v;
}

export class Mapping {
  readonly tpSize: number;
  readonly ppSize: number;
  readonly cpSize: number;
  readonly moeTpSize: number;
  readonly moeEpSize: number;
  readonly gpusPerNode: number;

  constructor(sizes: MappingSizes = {}) {
    this.tpSize = positive("tp_size", sizes.tpSize ?? 1);
    this.ppSize = positive("pp_size", sizes.ppSize ?? 1);
    this.cpSize = positive("cp_size", sizes.cpSize ?? 1);
    this.gpusPerNode = positive("gpus_per_node", sizes.gpusPerNode ?? 8);
    const tp = this.tpSize;
    // One MoE size given: the other fills the tp group.
    const complement = (given: number, flag: string) => {
      positive(flag, given);
      if (tp % given !== 0) throw new MappingError(`--${flag} ${given} does not divide --tp_size ${tp}`);
      return tp / given;
    };
    if (sizes.moeTpSize === undefined && sizes.moeEpSize === undefined) {
      this.moeTpSize = tp;
      this.moeEpSize = 1;
    } else if (sizes.moeEpSize === undefined) {
      this.moeTpSize = sizes.moeTpSize!;
      this.moeEpSize = complement(this.moeTpSize, "moe_tp_size");
    } else if (sizes.moeTpSize === undefined) {
      this.moeEpSize = sizes.moeEpSize;
      this.moeTpSize = complement(this.moeEpSize, "moe_ep_size");
    } else {
      this.moeTpSize = positive("moe_tp_size", sizes.moeTpSize);
      this.moeEpSize = positive("moe_ep_size", sizes.moeEpSize);
    }
    if (this.moeTpSize * this.moeEpSize !== tp) {
      throw new MappingError(
        `--moe_tp_size ${this.moeTpSize} × --moe_ep_size ${this.moeEpSize} must equal --tp_size ${tp}`,
      );
    }
    if (this.moeEpSize > 1 && this.cpSize > 1) {
      throw new MappingError(
        `--moe_ep_size ${this.moeEpSize} with --cp_size ${this.cpSize}: expert parallelism with context parallelism is not supported`,
      );
    }
  }

  static fromConfig(c: MappingConfig, where: string): Mapping {
    const m = new Mapping({
      tpSize: c.tp_size,
      ppSize: c.pp_size,
      cpSize: c.cp_size,
      moeTpSize: c.moe_tp_size,
      moeEpSize: c.moe_ep_size,
      gpusPerNode: c.gpus_per_node,
    });
    if (c.world_size !== m.worldSize) {
      throw new MappingError(
        `${where}: mapping.world_size ${c.world_size} ≠ tp_size × pp_size × cp_size = ${m.worldSize}`,
      );
    }
    return m;
  }

  /** TensorRT-LLM's `mapping` object (without `rank`), as checkpoint and engine configs hold it. */
  toConfig(): MappingConfig {
    return {
      world_size: this.worldSize,
      gpus_per_node: this.gpusPerNode,
      cp_size: this.cpSize,
      tp_size: this.tpSize,
      pp_size: this.ppSize,
      moe_tp_size: this.moeTpSize,
      moe_cluster_size: 1,
      moe_ep_size: this.moeEpSize,
      attn_tp_size: this.tpSize * this.cpSize,
      attn_cp_size: 1,
      auto_parallel: false,
    };
  }

  get worldSize(): number {
    return this.tpSize * this.ppSize * this.cpSize;
  }

  /** Rank files in a checkpoint: context-parallel ranks share their (tp, pp) position's file. */
  get numFileRanks(): number {
    return this.tpSize * this.ppSize;
  }

  equals(o: Mapping): boolean {
    return JSON.stringify(this.toConfig()) === JSON.stringify(o.toConfig());
  }

  private checkRank(rank: number): void {
    if (!Number.isInteger(rank) || rank < 0 || rank >= this.worldSize) {
      throw new MappingError(`rank ${rank} is outside [0, ${this.worldSize})`);
    }
  }

  coords(rank: number): RankCoords {
    this.checkRank(rank);
    const tc = this.tpSize * this.cpSize;
    return { tpRank: rank % this.tpSize, cpRank: Math.floor((rank % tc) / this.tpSize), ppRank: Math.floor(rank / tc) };
  }

  rankOf(c: RankCoords): number {
    return c.tpRank + this.tpSize * (c.cpRank + this.cpSize * c.ppRank);
  }

  moeEpRank(rank: number): number {
    return this.coords(rank).tpRank % this.moeEpSize;
  }

  moeTpRank(rank: number): number {
    return Math.floor(this.coords(rank).tpRank / this.moeEpSize);
  }

  /** The ranks that split one layer's tensors with `rank` (same pp and cp position). */
  tpGroup(rank: number): number[] {
    const { cpRank, ppRank } = this.coords(rank);
    return Array.from({ length: this.tpSize }, (_, t) => this.rankOf({ tpRank: t, cpRank, ppRank }));
  }

  /** The ranks that hold the pipeline stages of `rank`'s (tp, cp) position, first stage first. */
  ppGroup(rank: number): number[] {
    const { tpRank, cpRank } = this.coords(rank);
    return Array.from({ length: this.ppSize }, (_, p) => this.rankOf({ tpRank, cpRank, ppRank: p }));
  }

  cpGroup(rank: number): number[] {
    const { tpRank, ppRank } = this.coords(rank);
    return Array.from({ length: this.cpSize }, (_, c) => this.rankOf({ tpRank, cpRank: c, ppRank }));
  }

  /** The checkpoint file a rank reads: `rank{fileRank}.safetensors`. */
  fileRank(rank: number): number {
    const { tpRank, ppRank } = this.coords(rank);
    return tpRank + ppRank * this.tpSize;
  }

  isFirstPpRank(rank: number): boolean {
    return this.coords(rank).ppRank === 0;
  }

  isLastPpRank(rank: number): boolean {
    return this.coords(rank).ppRank === this.ppSize - 1;
  }

  /**
   * The global layer indices of pipeline stage `ppRank`: contiguous, the first `numLayers % pp` stages
   * taking one extra (torch.tensor_split, as TensorRT-LLM splits them).
   */
  ppLayers(numLayers: number, ppRank: number): number[] {
    if (this.ppSize > numLayers)
      throw new MappingError(`--pp_size ${this.ppSize} exceeds the model's ${numLayers} layers`);
    const base = Math.floor(numLayers / this.ppSize);
    const extra = numLayers % this.ppSize;
    const start = ppRank * base + Math.min(ppRank, extra);
    const count = base + (ppRank < extra ? 1 : 0);
    return Array.from({ length: count }, (_, i) => start + i);
  }

  /** The contiguous experts expert-parallel rank `moeEpRank` holds. */
  epExperts(numExperts: number, moeEpRank: number): number[] {
    if (numExperts % this.moeEpSize !== 0) {
      throw new MappingError(`--moe_ep_size ${this.moeEpSize} does not divide the model's ${numExperts} experts`);
    }
    const per = numExperts / this.moeEpSize;
    return Array.from({ length: per }, (_, i) => moeEpRank * per + i);
  }

  /** Checks the split fits the model's heads and layers; errors name the numbers. */
  validateFor(model: { num_attention_heads: number; num_key_value_heads: number; num_hidden_layers: number }): void {
    const tp = this.tpSize;
    const heads = model.num_attention_heads;
    const kv = model.num_key_value_heads;
    if (heads % tp !== 0) throw new MappingError(`--tp_size ${tp} does not divide num_attention_heads ${heads}`);
    if (kv >= tp ? kv % tp !== 0 : tp % kv !== 0) {
      throw new MappingError(
        `--tp_size ${tp} and num_key_value_heads ${kv}: one must divide the other (KV heads are replicated when tp_size > num_key_value_heads)`,
      );
    }
    if (this.ppSize > model.num_hidden_layers) {
      throw new MappingError(`--pp_size ${this.ppSize} exceeds num_hidden_layers ${model.num_hidden_layers}`);
    }
  }
}
