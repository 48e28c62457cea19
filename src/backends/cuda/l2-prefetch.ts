// Which weights each layer's decode attention asks the L2 for (decoder.cu's l2_prefetch). A batch-1 step
// reads every weight once, in kernels too short to keep the memory system busy, and its attention waits
// on latency while DRAM idles: so attention asks for the rest of its layer's weights (dense, the MLP) and
// the next layer's norm and qkv before it waits on the kernel before it, and the GEMVs after it find them
// in the L2. A budget under the L2's size keeps the prefetched weights from evicting each other.

import type { CudaDevice } from "./driver.js";

/** A weight section in device memory. */
export interface DeviceSection {
  name: string;
  ptr: number;
  bytes: number;
}

/** The most ranges one layer's attention prefetches (a quantized layer's codes, scales and input transforms). */
export const MAX_PREFETCH_RANGES = 32;

/** Share of the L2 a layer's prefetch may take: KILN_CUDA_L2_PREFETCH (0 turns it off), default 0.6. */
export function prefetchShare(): number {
  const v = Number(process.env.KILN_CUDA_L2_PREFETCH ?? 0.6);
  return Number.isFinite(v) && v > 0 ? Math.min(v, 1) : 0;
}

/**
 * Where in a layer's order a section of `transformer.layers.N.` is read: after attention (`after`: dense,
 * the post-attention norm, the MLP, its proj last), or before it (`before`: the input norm and qkv), or
 * neither (the KV cache's scale, which attention reads itself).
 */
function stageOf(module: string): { when: "after" | "before"; order: number } | null {
  if (module.startsWith("attention.dense")) return { when: "after", order: 0 };
  if (module.startsWith("post_layernorm")) return { when: "after", order: 1 };
  if (module.startsWith("mlp.proj")) return { when: "after", order: 3 };
  if (module.startsWith("mlp.") || module.startsWith("shared_expert")) return { when: "after", order: 2 };
  if (module.startsWith("input_layernorm")) return { when: "before", order: 4 };
  if (module.startsWith("attention.qkv")) return { when: "before", order: 5 };
  return null;
}

/**
 * For each layer 0..numLayers−1, the sections to prefetch during its attention, in the order they are read:
 * the layer's sections read after attention, then the next layer's read before it (after the last layer,
 * the final norm). Sections are taken in that order while they fit `budget` bytes (one that does not is
 * left out, as a MoE layer's experts are), at most MAX_PREFETCH_RANGES of them; each is cut to a multiple of
 * 16 bytes (the bulk prefetch's unit), those under 16 left out.
 */
export function prefetchPlan(sections: DeviceSection[], numLayers: number, budget: number): DeviceSection[][] {
  const byLayer = Array.from({ length: numLayers + 1 }, () => ({
    after: [] as { s: DeviceSection; order: number }[],
    before: [] as { s: DeviceSection; order: number }[],
  }));
  for (const s of sections) {
    if (s.name.startsWith("transformer.ln_f.")) {
      byLayer[numLayers].before.push({ s, order: 4 });
      continue;
    }
    const m = /^transformer\.layers\.(\d+)\.(.+)$/.exec(s.name);
    const layer = m ? Number(m[1]) : -1;
    if (!m || layer >= numLayers) continue;
    const stage = stageOf(m[2]);
    if (stage) byLayer[layer][stage.when].push({ s, order: stage.order });
  }
  const ordered = (xs: { s: DeviceSection; order: number }[]) =>
    xs.sort((a, b) => a.order - b.order || a.s.name.localeCompare(b.s.name)).map((x) => x.s);
  return Array.from({ length: numLayers }, (_, l) => {
    const out: DeviceSection[] = [];
    let left = budget;
    for (const s of [...ordered(byLayer[l].after), ...ordered(byLayer[l + 1].before)]) {
      const bytes = s.bytes - (s.bytes % 16);
      if (bytes === 0 || bytes > left || out.length === MAX_PREFETCH_RANGES) continue;
      out.push({ ...s, bytes });
      left -= bytes;
    }
    return out;
  });
}

/** The plan in device memory: per layer MAX_PREFETCH_RANGES (address, bytes) pairs of 64-bit words. */
export class PrefetchTable {
  private readonly table: number;
  private readonly counts: number[];

  constructor(
    private readonly device: CudaDevice,
    plan: DeviceSection[][],
  ) {
    const words = new BigUint64Array(Math.max(1, plan.length) * MAX_PREFETCH_RANGES * 2);
    plan.forEach((ranges, l) =>
      ranges.forEach((r, i) => {
        words[(l * MAX_PREFETCH_RANGES + i) * 2] = BigInt(r.ptr);
        words[(l * MAX_PREFETCH_RANGES + i) * 2 + 1] = BigInt(r.bytes);
      }),
    );
    this.table = device.alloc(words.byteLength);
    device.upload(this.table, new Uint8Array(words.buffer));
    this.counts = plan.map((r) => r.length);
  }

  /** The device address of layer's ranges and their count (0 and 0 past the plan). */
  of(layer: number): { ptr: number; count: number } {
    const count = this.counts[layer] ?? 0;
    return count === 0 ? { ptr: 0, count } : { ptr: this.table + layer * MAX_PREFETCH_RANGES * 16, count };
  }

  dispose(): void {
    this.device.free(this.table);
  }
}
